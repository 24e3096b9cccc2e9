"""Server aggregation of FedEM (Marfoq et al., NeurIPS 2021, Algorithm 1, server step).

``theta_m <- sum_t p_t theta_m^t`` with ``p_t = n_t / n`` over **all** training clients; a client
that did not take part contributes the current global ``theta_m``. Equivalently
``theta <- theta + sum_{t in S} p_t (theta^t - theta)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def client_weights(train_counts: jax.Array) -> jax.Array:
    """``p_t = n_t / sum_s n_s`` over all clients (sample counts, not responsibility mass)."""
    counts = train_counts.astype(jnp.float32)
    return counts / counts.sum()


def weighted_delta_sum(global_params, client_params, weights: jax.Array):
    """``sum_t w_t (theta^t - theta)`` for stacked ``client_params`` ``[C, ...]`` and ``w: [C]``.

    Weights of clients that did not take part (or padded clients) must be 0.
    """

    def leaf(glob, local):
        delta = local - glob[None]
        return jnp.tensordot(weights.astype(delta.dtype), delta, axes=1)

    return jax.tree.map(leaf, global_params, client_params)


def apply_delta(global_params, delta_sum):
    """``theta + sum_t w_t (theta^t - theta)``."""
    return jax.tree.map(jnp.add, global_params, delta_sum)
