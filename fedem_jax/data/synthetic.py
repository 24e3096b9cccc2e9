"""The synthetic mixture-of-linear-tasks dataset of the FedEM paper (spec section 5).

- ``M`` components ``theta_m ~ U(-1, 1)^d`` (no bias).
- Client ``t``: ``pi_t ~ Dir(alpha 1_M)``, ``n_t = min(floor(lognormal(4, 2)) + 50, 1000)``
  training samples and ``n_test`` test samples, all from its own mixture.
- Sample: ``x ~ U(-1, 1)^d``, component ``z ~ pi_t``, ``y = 1[x . theta_z + eps > 0]``,
  ``eps ~ N(0, noise^2)``.

This is the intended generator. The reference's never advances its write index, which forces
about a quarter of the labels to 0; that bug is not reproduced.
"""

from __future__ import annotations

import numpy as np

from fedem_jax.core.tasks import BINARY
from fedem_jax.data.federated import FederatedData, assemble
from fedem_jax.errors import ConfigError

MIN_SAMPLES, MAX_SAMPLES = 50, 1000


def _draw_samples(rng, n, pi, thetas, noise_std):
    x = rng.uniform(-1.0, 1.0, size=(n, thetas.shape[1])).astype(np.float32)
    component = rng.choice(len(pi), size=n, p=pi)
    eps = rng.normal(0.0, noise_std, size=n)
    margin = np.einsum("nd,nd->n", x.astype(np.float64), thetas[component]) + eps
    return x, (margin > 0).astype(np.int32), component


# Copies of the samples alive at once: the per-client arrays and their concatenation.
COPIES = 2


def _check_memory(n_samples: int, dim: int) -> None:
    """Refuse sizes whose samples cannot be held in the host's available memory, before drawing."""
    from fedem_jax.execution.memory import host_free_bytes

    needed = COPIES * n_samples * dim * np.dtype(np.float32).itemsize
    free = host_free_bytes()
    if free is not None and needed > free:
        raise ConfigError(
            f"not enough memory: the synthetic data ({n_samples:,} samples x {dim:,} features) needs "
            f"about {needed / 2**30:,.1f} GiB but the host has {free / 2**30:.1f} GiB available; "
            "lower --n_clients, --dim or --n_test_per_client"
        )


def plan_synthetic(n_clients: int, dim: int, n_components: int, alpha: float, seed: int):
    """``(rng, thetas, pis, sizes)``: the draws made before any sample (the rng then draws them)."""
    rng = np.random.default_rng(seed)
    thetas = rng.uniform(-1.0, 1.0, size=(n_components, dim))
    pis = rng.dirichlet(alpha * np.ones(n_components), size=n_clients)
    sizes = np.minimum(np.floor(rng.lognormal(4.0, 2.0, size=n_clients)) + MIN_SAMPLES, MAX_SAMPLES)
    return rng, thetas, pis, sizes.astype(np.int64)


def synthetic_clients(rng, sizes, pis, thetas, noise_std: float, n_test_per_client: int):
    """Yield each client's ``((x, y, components), (test_x, test_y))`` in order, one at a time (a
    federation larger than memory is written to disk as it is drawn: :mod:`fedem_jax.data.store`)."""
    for t in range(len(sizes)):
        train = _draw_samples(rng, int(sizes[t]), pis[t], thetas, noise_std)
        test = _draw_samples(rng, n_test_per_client, pis[t], thetas, noise_std)[:2]
        yield train, test


def generate_synthetic(
    n_clients: int = 300,
    dim: int = 150,
    n_components: int = 3,
    alpha: float = 0.4,
    noise_std: float = 0.1,
    n_test_per_client: int = 5000,
    seed: int = 12345,
    val_frac: float = 0.0,
    unseen_frac: float = 0.0,
) -> tuple[FederatedData, dict]:
    """Returns the dataset and the ground truth ``{"thetas", "pis", "train_components"}``.

    Ground truth is indexed by the generated client order, before any client is held out.
    """
    per_client = n_components + MIN_SAMPLES + n_test_per_client  # the fewest samples it can draw
    _check_memory(n_clients * per_client + n_components, dim)
    rng, thetas, pis, sizes = plan_synthetic(n_clients, dim, n_components, alpha, seed)
    _check_memory(int(sizes.sum()) + n_clients * n_test_per_client, dim)
    train_x, train_y, test_x, test_y, train_z = [], [], [], [], []
    for (x, y, z), (tx, ty) in synthetic_clients(rng, sizes, pis, thetas, noise_std, n_test_per_client):
        train_x.append(x)
        train_y.append(y)
        train_z.append(z)
        test_x.append(tx)
        test_y.append(ty)
    data = assemble(
        "synthetic",
        BINARY,
        (train_x, train_y),
        (test_x, test_y),
        val_frac=val_frac,
        unseen_frac=unseen_frac,
        rng=np.random.default_rng([seed, 1]),
        true_pi=pis,
    )
    truth = {"thetas": thetas, "pis": pis, "train_components": train_z}
    return data, truth
