"""The EM quantities of FedEM (Marfoq et al., NeurIPS 2021, Algorithm 1 and eq. (4)-(7)).

All functions are pure and shape-polymorphic; ``M`` is the number of mixture components.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PROB_FLOOR = 1e-12  # clamp for log p: the reference can return inf NLL


def e_step(log_pi: jax.Array, losses: jax.Array) -> jax.Array:
    """Responsibilities ``q[m, i] = softmax_m(log pi_m - l_m(i))`` (paper, eq. (4)).

    Args:
      log_pi: ``[M]`` log mixture weights of one client, or ``[M, n]`` (the weights of each
        sample's own client, when samples of several clients are processed together).
      losses: ``[M, n]`` per-sample loss of every component.
    Returns:
      ``[M, n]``, each column on the simplex.
    """
    if log_pi.ndim == 1:
        log_pi = log_pi[:, None]
    return jax.nn.softmax(log_pi - losses, axis=0)


def mixture_nll_from_losses(log_pi: jax.Array, losses: jax.Array) -> jax.Array:
    """``-log sum_m pi_m exp(-l_m(i))``: the mixture's NLL, a free by-product of the E-step."""
    if log_pi.ndim == 1:
        log_pi = log_pi[:, None]
    return -jax.nn.logsumexp(log_pi - losses, axis=0)


def update_pi(responsibilities: jax.Array, sample_mask: jax.Array) -> jax.Array:
    """M-step for the mixture weights: ``pi_m = mean_i q[m, i]`` over valid samples (eq. (5)).

    Args:
      responsibilities: ``[M, n]``.
      sample_mask: ``[n]`` booleans; padded samples are excluded from the mean.
    """
    mask = sample_mask.astype(responsibilities.dtype)
    return (responsibilities * mask).sum(axis=1) / jnp.maximum(mask.sum(), 1.0)


def update_pi_all_clients(responsibilities: jax.Array, client_id: jax.Array, counts: jax.Array) -> jax.Array:
    """:func:`update_pi` for every client at once, on samples stored flat and sorted by client.

    Args:
      responsibilities: ``[M, N]`` for all ``N`` samples of all clients.
      client_id: ``[N]`` owner of each sample.
      counts: ``[C]`` samples per client.
    Returns:
      ``[C, M]``.
    """
    sums = jax.ops.segment_sum(responsibilities.T, client_id, num_segments=counts.shape[0])
    return sums / jnp.maximum(counts, 1).astype(sums.dtype)[:, None]


def weighted_batch_loss(losses: jax.Array, weights: jax.Array, sample_mask: jax.Array) -> jax.Array:
    """``sum_m (1/|B|) sum_{i in B} q[m, i] * l_m(i)`` (eq. (6), one minibatch).

    The division is by the number of valid samples ``|B|``, not by the responsibility mass.
    Because components do not share parameters, the gradient of this sum with respect to the
    stacked parameters is the per-component gradient.

    Args:
      losses: ``[M, B]`` per-sample losses.
      weights: ``[M, B]`` responsibilities ``q``.
      sample_mask: ``[B]`` valid samples.
    """
    mask = sample_mask.astype(losses.dtype)
    batch_size = jnp.maximum(mask.sum(), 1.0)
    return jnp.sum(weights * losses * mask) / batch_size


def mixture_probs(pi: jax.Array, component_probs: jax.Array) -> jax.Array:
    """Client prediction ``p(y | x) = sum_m pi_m p_theta_m(y | x)`` (eq. (2)).

    Args:
      pi: ``[M]`` mixture weights (or ``[n, M]``, one row per sample).
      component_probs: ``[M, n, K]`` class probabilities of every component.
    Returns:
      ``[n, K]``.
    """
    if pi.ndim == 1:
        return jnp.einsum("m,mn...->n...", pi, component_probs)
    return jnp.einsum("nm,mn...->n...", pi, component_probs)


def clamped_nll(probs: jax.Array, labels: jax.Array) -> jax.Array:
    """``-log p(y_i | x_i)`` with ``p`` clamped away from 0: ``[n, K], [n] -> [n]`` (also with
    extra label axes: ``[n, T, K], [n, T] -> [n, T]``)."""
    picked = jnp.take_along_axis(probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return -jnp.log(jnp.maximum(picked, PROB_FLOOR))
