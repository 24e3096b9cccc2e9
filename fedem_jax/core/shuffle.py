"""A client's epoch order: its ``count`` valid slots in random order, the padding slots after.

The order is ``argsort(where(arange(n) < count, uniform(key, (n,)), 2.0))`` (a stable sort:
ties go to the lower slot), and :func:`epoch_order` returns exactly that permutation without an
argsort. XLA:CPU sorts a key with a payload (an argsort) through a generic comparator, much
slower than a sort of one ``uint32`` array; one argsort per client per epoch was 20 % of a
traced synthetic FedEM round on CPU and 51 % of a 10-run sweep's (``benchmarks/round_profile.py``
on the code before; side by side: ``benchmarks/round_speedups.py``, docs/performance.md).

How: ``uniform`` draws multiples of ``2**-23``, so a score is a 23-bit integer ``k``, and the
order is that of the integers ``(k, slot)``, too wide for one ``uint32``. Slots are cut into
blocks of 512: within a block ``k << 9 | slot % 512`` is unique, so one ``uint32`` sort orders
the block. The blocks are merged by a second sort of ``k << b | block`` (equal scores: the lower
block first): its ``j``-th entry from block ``a`` is the ``j``-th slot of block ``a``'s order.
Slots ``>= count`` keep their place. A client with at most 512 samples needs one block only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SCORE_BITS = 23  # jax.random.uniform's float32 draws: k * 2**-23, k < 2**23
SLOT_BITS = 32 - SCORE_BITS
BLOCK = 1 << SLOT_BITS
MAX_BLOCKS = 32  # the merge step holds an [n, n / 512] table; past 16,384 slots: argsort
INVALID = np.uint32(0xFFFFFFFF)  # slots >= count sort last


def epoch_order(key: jax.Array, n_slots: int, count) -> jax.Array:
    """``argsort(where(arange(n_slots) < count, uniform(key, (n_slots,)), 2.0))``, exactly.

    A client with at most 512 samples (most clients) needs only the first block: its scores and
    one sort. With threefry's partitionable bits (JAX's default) the first 512 of ``n`` draws are
    the 512 draws of the same key, so only those are drawn.
    """
    if n_slots <= BLOCK:
        return valid_first_order(_scores(key, n_slots), count)

    def first_block():
        prefix = getattr(jax.config, "jax_threefry_partitionable", False)  # unknown: draw all
        scores = _scores(key, BLOCK) if prefix else _scores(key, n_slots)[:BLOCK]
        rest = jnp.arange(BLOCK, n_slots, dtype=jnp.int32)  # padding slots stay in place
        return jnp.concatenate([valid_first_order(scores, count), rest])

    return jax.lax.cond(count <= BLOCK, first_block, lambda: valid_first_order(_scores(key, n_slots), count))


def _scores(key, n):
    """``uniform(key, (n,))`` as the 23-bit integers ``k`` of its draws ``k * 2**-23``."""
    return (jax.random.uniform(key, (n,)) * (1 << SCORE_BITS)).astype(jnp.uint32)


def valid_first_order(scores: jax.Array, count) -> jax.Array:
    """Slots ``< count`` sorted by ``(scores, slot)``, then the others in slot order.

    ``scores``: ``[n]`` ``uint32`` below ``2**23``; ``count`` may be traced.
    """
    n = scores.shape[0]
    n_blocks = -(-n // BLOCK)
    if n_blocks > MAX_BLOCKS:
        return jnp.argsort(jnp.where(jnp.arange(n) < count, scores, 1 << SCORE_BITS), stable=True)
    slots = jnp.arange(n_blocks * BLOCK, dtype=jnp.uint32)
    valid = slots < count
    scores = jnp.pad(scores, (0, n_blocks * BLOCK - n))
    by_block = _sorted_within_blocks(scores, slots, valid, n_blocks)
    sorted_slots = by_block[0] if n_blocks == 1 else _merge_blocks(scores, slots, valid, by_block)
    position = jnp.arange(n, dtype=jnp.int32)
    return jnp.where(position < count, sorted_slots[:n].astype(jnp.int32), position)


def _sorted_within_blocks(scores, slots, valid, n_blocks):
    """``[blocks, 512]``: each block's valid slots in ``(score, slot)`` order (then padding)."""
    packed = jnp.where(valid, (scores << SLOT_BITS) | (slots % BLOCK), INVALID)
    ranked = jnp.sort(packed.reshape(n_blocks, BLOCK), axis=1)
    return ranked % BLOCK + BLOCK * jnp.arange(n_blocks, dtype=jnp.uint32)[:, None]


def _merge_blocks(scores, slots, valid, by_block):
    """The blocks' sorted slots merged into one ``(score, slot)`` order.

    One sort of ``score << b | block`` gives the merged sequence of blocks (equal scores: the
    lower block, i.e. the lower slot, first); the ``j``-th entry of block ``a`` in it is the
    ``j``-th slot of ``by_block[a]``.
    """
    n_blocks = by_block.shape[0]
    tag_bits = max(1, (n_blocks - 1).bit_length())
    merged = jnp.sort(jnp.where(valid, (scores << tag_bits) | (slots >> SLOT_BITS), INVALID))
    block = (merged & ((1 << tag_bits) - 1)).astype(jnp.int32)
    is_block = (block[:, None] == jnp.arange(n_blocks)).astype(jnp.int32)  # [n, blocks]
    seen = jax.lax.associative_scan(jnp.add, is_block, axis=0)  # per block, entries up to here
    nth = jnp.sum(is_block * (seen - 1), axis=1)
    return by_block[jnp.minimum(block, n_blocks - 1), nth]
