"""How an axis of independent work (clients or learners) is executed.

``chunk == 0`` vmaps the whole axis, ``chunk == 1`` loops sequentially (``lax.map`` without
vmap, so a ``lax.cond`` inside really skips work), and ``chunk == k`` loops over vmapped chunks
of ``k``. Results are identical up to float rounding; speed differs by backend (see README).
"""

from __future__ import annotations

import jax


def map_axis(fn, xs, chunk: int):
    """Apply ``fn`` to every slice of the leading axis of the pytree ``xs``."""
    if chunk == 0:
        return jax.vmap(fn)(xs)
    if chunk == 1:
        return jax.lax.map(fn, xs)
    return jax.lax.map(fn, xs, batch_size=chunk)
