"""Adaptive server optimizers on the averaged client update (Reddi et al., "Adaptive Federated
Optimization", ICLR 2021, Algorithm 2), as optax-style ``(init, update)`` pairs.

With ``Delta`` the weighted average of the client updates ``theta_t - theta`` (a pseudo-gradient
pointing downhill), the server keeps ``m`` and ``v`` per parameter:

- ``m <- b1 m + (1 - b1) Delta``;
- FedAdam: ``v <- b2 v + (1 - b2) Delta^2``; FedYogi: ``v <- v - (1 - b2) Delta^2 sign(v - Delta^2)``;
- ``theta <- theta + lr m / (sqrt(v) + tau)``,

with ``m = 0`` and ``v = tau^2`` at the start and no bias correction, as in the paper.
``avg`` (plain averaging, ``theta <- theta + lr Delta``, FedAvg at ``lr = 1``) needs no state and
no transformation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

SERVER_OPTIMIZERS = ("avg", "adam", "yogi")
DEFAULT_SERVER_LR = {"avg": 1.0, "adam": 0.01, "yogi": 0.01}


def server_direction(kind: str, b1: float, b2: float, tau: float) -> optax.GradientTransformation:
    """``Delta -> m / (sqrt(v) + tau)`` for ``kind`` ``adam`` or ``yogi``."""
    if kind not in ("adam", "yogi"):
        raise ValueError(f"no adaptive server optimizer {kind!r}")

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return (zeros, jax.tree.map(lambda p: jnp.full_like(p, tau**2), params))

    def update(delta, state, params=None):
        del params
        m, v = state
        m = jax.tree.map(lambda m_, d: b1 * m_ + (1 - b1) * d, m, delta)
        if kind == "adam":
            v = jax.tree.map(lambda v_, d: b2 * v_ + (1 - b2) * d * d, v, delta)
        else:
            v = jax.tree.map(lambda v_, d: v_ - (1 - b2) * d * d * jnp.sign(v_ - d * d), v, delta)
        step = jax.tree.map(lambda m_, v_: m_ / (jnp.sqrt(v_) + tau), m, v)
        return step, (m, v)

    return optax.GradientTransformation(init, update)
