"""Cohort rounds (``--cohort``): a round computes only the clients sampled for it.

Without it a round runs over every client and masks those not sampled; under ``vmap`` (the
GPU/TPU layout) a masked client still costs its compute. Here the round's ``K`` sampled clients
(the same draw as :func:`fedem_jax.algorithms.base.sample_participants`, from the same key) are
gathered into a ``K``-client :class:`~fedem_jax.data.federated.ClientSplit` and ``[K, ...]``
client state, the method's own round runs on them unchanged, and their new state is scattered
back. The cohort keeps the clients' global ids and the federation's ``max_count``, so shuffles,
batches and keys are those of the masked round; the server weights ``n_t / n`` use the
federation's ``n`` (``Context.n_samples``). Results equal the masked round's to float32 rounding
(summation order), bit for bit with sequential clients (``tests/test_cohort.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedem_jax.data.federated import ClientSplit


def cohort_capacity(counts, k: int) -> int:
    """The samples any ``k`` clients can hold: the sum of the ``k`` largest counts (static)."""
    return int(np.sort(np.asarray(counts))[::-1][:k].sum())


def gather_split(train: ClientSplit, idx: jax.Array, capacity: int) -> ClientSplit:
    """The clients ``idx`` (ascending) of ``train`` as a flat split of ``capacity`` samples
    (padding last, ``client_id = K`` there, as a mesh pads)."""
    k = idx.shape[0]
    counts = train.counts[idx]
    ends = jnp.cumsum(counts)
    starts = ends - counts
    position = jnp.arange(capacity, dtype=jnp.int32)
    owner = jnp.minimum(jnp.searchsorted(ends, position, side="right"), k - 1).astype(jnp.int32)
    valid = position < ends[-1]
    source = jnp.where(valid, train.offsets[idx[owner]] + position - starts[owner], 0)
    return ClientSplit(
        x=train.x[source], y=train.y[source], client_id=jnp.where(valid, owner, k),
        offsets=starts.astype(jnp.int32), counts=counts, global_ids=train.global_ids[idx],
        max_count=train.max_count,
    )  # fmt: skip


def client_fields(state, fn):
    """``state`` with ``fn`` applied to every leaf of its client fields (``CLIENT_FIELDS``)."""
    return state.replace(**{name: jax.tree.map(fn, getattr(state, name)) for name in state.CLIENT_FIELDS})


def cohort_rounds(algorithm, ctx, k: int, capacity: int):
    """``algorithm`` whose round runs on the ``k`` clients ``ctx.participants`` picks (fixed-size
    sampling: exactly ``k``)."""

    def round_fn(state, train: ClientSplit):
        chosen = ctx.participants(ctx.round_key(state.round), train)  # [C] booleans, k true
        idx = jnp.nonzero(chosen, size=k)[0]
        cohort_state = client_fields(state, lambda a: a[idx])
        new_cohort, metrics = algorithm.round(cohort_state, gather_split(train, idx, capacity))
        scattered = {
            name: jax.tree.map(
                lambda a, new: a.at[idx].set(new), getattr(state, name), getattr(new_cohort, name)
            )
            for name in state.CLIENT_FIELDS
        }
        return new_cohort.replace(**scattered), {**metrics, "participants": chosen}

    return algorithm._replace(round=round_fn)
