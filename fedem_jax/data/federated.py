"""The on-device container of a federated dataset.

Samples of all clients are stored *flat*, sorted by client: ``x[N, ...]``, ``y[N]``, with
``offsets[C]`` and ``counts[C]`` locating each client's block. Compared with padding every client
to the largest one (``[C, n_max, ...]``), this keeps memory at ``N`` samples whatever the spread of
client sizes, and lets forward-only work (E-step, evaluation) run as large batches over all
clients at once (all clients share the global components at that point).
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax.numpy as jnp
import numpy as np

from fedem_jax.core.tasks import Task


class DataError(RuntimeError):
    """A user-facing data problem (missing files, bad shapes); printed without a traceback."""


@flax.struct.dataclass
class ClientSplit:
    """One split (train or test) of every client, flat and sorted by client."""

    x: jnp.ndarray  # [N, ...]
    y: jnp.ndarray  # [N]
    client_id: jnp.ndarray  # [N] int32
    offsets: jnp.ndarray  # [C] int32, start of each client's block
    counts: jnp.ndarray  # [C] int32
    max_count: int = flax.struct.field(pytree_node=False, default=0)

    @property
    def n_clients(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.y.shape[0])


@dataclasses.dataclass(frozen=True)
class FederatedData:
    """Train and test splits of the same clients, plus the prediction task."""

    name: str
    train: ClientSplit
    test: ClientSplit
    task: Task

    @property
    def n_clients(self) -> int:
        return self.train.n_clients

    def summary(self) -> str:
        """One line: clients, samples per client (min / median / max), classes per client."""
        counts = np.asarray(self.train.counts) + np.asarray(self.test.counts)
        y = np.asarray(self.train.y)
        ids = np.asarray(self.train.client_id)
        classes = [len(np.unique(y[ids == c])) for c in range(self.n_clients)]
        return (
            f"{self.name}: {self.n_clients} clients, "
            f"{int(counts.sum())} samples ({self.train.n_samples} train / "
            f"{self.test.n_samples} test), per client min/median/max "
            f"{int(counts.min())}/{int(np.median(counts))}/{int(counts.max())}, "
            f"train classes per client min/median/max "
            f"{min(classes)}/{int(np.median(classes))}/{max(classes)}"
        )


def build_split(xs: list[np.ndarray], ys: list[np.ndarray]) -> ClientSplit:
    """Concatenate per-client arrays into a flat :class:`ClientSplit` (numpy -> device once)."""
    if len(xs) != len(ys) or not xs:
        raise DataError(f"need one x and one y array per client, got {len(xs)} and {len(ys)}")
    counts = np.array([len(y) for y in ys], dtype=np.int32)
    for c, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if len(x) != len(y):
            raise DataError(f"client {c}: {len(x)} inputs but {len(y)} labels")
        if x.shape[1:] != xs[0].shape[1:]:
            raise DataError(f"client {c}: input shape {x.shape[1:]} differs from {xs[0].shape[1:]}")
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    client_id = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    return ClientSplit(
        x=jnp.asarray(np.concatenate(xs)),
        y=jnp.asarray(np.concatenate(ys)),
        client_id=jnp.asarray(client_id),
        offsets=jnp.asarray(offsets),
        counts=jnp.asarray(counts),
        max_count=int(counts.max()),
    )


def train_test_split(
    indices: list[np.ndarray], test_frac: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Split each client's sample indices at random into train/test.

    Clients too small to get at least one train and one test sample are dropped; the number
    dropped is returned so the caller can warn.
    """
    train, test, dropped = [], [], 0
    for idx in indices:
        n_test = int(round(test_frac * len(idx)))
        if len(idx) < 2 or n_test < 1 or n_test >= len(idx):
            dropped += 1
            continue
        shuffled = rng.permutation(idx)
        test.append(np.sort(shuffled[:n_test]))
        train.append(np.sort(shuffled[n_test:]))
    return train, test, dropped
