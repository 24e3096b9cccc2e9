"""``lax.map(f, xs, batch_size=b)`` without the copy of ``xs``.

``lax.map`` with a batch size reshapes the leading ``n - n % b`` rows of every input into
``[n // b, b, ...]``, and XLA materialises that slice: a copy of the whole train set in every
E-step (8 % of a traced synthetic FedEM round on CPU, ``benchmarks/round_profile.py``; side by
side: ``benchmarks/round_speedups.py``) and of the whole test set in every evaluation.
:func:`map_samples` reads each batch in place with a dynamic slice; the batches, the remainder
and the computation on each are those of ``lax.map``, so the results are the same.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def map_samples(fn: Callable, xs, batch_size: int):
    """``jax.lax.map(fn, xs, batch_size=batch_size)`` for a pytree of ``[n, ...]`` arrays."""
    n = jax.tree.leaves(xs)[0].shape[0]
    n_batches, remainder = divmod(n, batch_size)
    batched = jax.vmap(fn)
    parts = []
    if n_batches:

        def one_batch(_, i):
            start = i * batch_size
            return (), batched(jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, batch_size), xs))

        _, ys = jax.lax.scan(one_batch, (), jnp.arange(n_batches))
        parts.append(jax.tree.map(lambda y: y.reshape(-1, *y.shape[2:]), ys))
    if remainder:
        parts.append(batched(jax.tree.map(lambda a: a[n - remainder :], xs)))
    if len(parts) == 1:
        return parts[0]
    return jax.tree.map(lambda a, b: jax.lax.concatenate([a, b], 0), *parts)
