"""How the learner and client axes run, apart from what a client computes.

A :class:`Layout` answers three questions for every method alike:

- **learners**: the M stacked components of one client are ``vmap``-ped or looped (``lax.map``);
- **clients**: all vmapped (``client_chunk=0``), one at a time (``1``) or in chunks of ``k``,
  inside a ``lax.scan`` whose carry holds the per-client state;
- **devices**: without a mesh everything runs on one device; with a mesh the client axis is
  sharded over its ``clients`` axis. A method's round is written for one *block* of clients and
  uses :meth:`client_sum` / :meth:`all_clients` for what crosses blocks; :meth:`shard` runs it
  under ``jax.shard_map``, so every method runs sharded with no code of its own.

Masked (skipped) work must leave state bit-identical: sequentially it is a ``lax.cond``, which
also skips the computation; under ``vmap`` a cond with a batched predicate would become a
``select`` broadcasting every closed-over operand (the whole dataset) over the client axis, so
there the work is computed and discarded with ``jnp.where``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

CLIENTS_AXIS = "clients"
CLIENT_SPEC = PartitionSpec(CLIENTS_AXIS)
REPLICATED = PartitionSpec()


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static execution settings, closed over by the jitted round."""

    client_chunk: int = 0  # 0: vmap all clients, 1: sequential, k: chunks of k
    learner_vmap: bool = True
    # > 0: a client's last partial batch runs as sub-batches of this size (sequential clients only)
    micro_batch: int = 0
    mesh: Mesh | None = None
    # Inside a sweep's vmap over runs (fedem_jax.training.sweep): which clients take part depends on each
    # run's seed, a batched predicate, so clients are masked with ``where`` (see masked_client).
    runs_vmapped: bool = False

    @property
    def clients_vmapped(self) -> bool:
        return self.client_chunk != 1

    @property
    def n_devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.shape[CLIENTS_AXIS]

    # ------------------------------------------------------------------------------ learners
    def map_learners(self, fn: Callable, *stacked):
        """``fn`` on each learner's slice of the ``[M, ...]`` arguments, stacked back on ``[M]``."""
        if self.learner_vmap:
            return jax.vmap(fn)(*stacked)
        return jax.lax.map(lambda args: fn(*args), stacked)

    # ------------------------------------------------------------------------------ clients
    def masked(self, active, fn: Callable, state):
        """``fn(state)`` if ``active`` else ``state``, exactly (see module docstring)."""
        if not self.clients_vmapped:
            return jax.lax.cond(active, fn, lambda st: st, state)
        new = fn(state)
        return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state)

    def masked_client(self, active, fn: Callable, state):
        """:meth:`masked` for a whole client's update, whose ``active`` (taking part) differs
        between the runs of a sweep: there it is a ``where`` (the update is computed for every
        client, as with full participation) rather than a ``cond`` turned into a ``select`` that
        would copy the whole dataset over the runs axis at every client (many times slower)."""
        if self.runs_vmapped:
            new = fn(state)
            return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state)
        return self.masked(active, fn, state)

    def scan_clients(self, one_client: Callable, inputs, states, accumulate: Callable, init_sum):
        """Run ``one_client`` over the client axis in chunks; return ``(sum, states)``.

        ``inputs`` (read only) and ``states`` (updated in place) are pytrees of ``[C, ...]``
        arrays; ``one_client(inputs_t, state_t, valid) -> (contribution, new_state_t)``.
        Contributions of a chunk (``[k, ...]``) are folded into the sum with
        ``accumulate(sum, contributions, valid[k])``, so per-client results never all exist at
        once beyond the state they update.
        """
        n_clients = jax.tree.leaves(inputs)[0].shape[0]
        chunk = n_clients if self.client_chunk == 0 else min(self.client_chunk, n_clients)
        n_chunks = math.ceil(n_clients / chunk)
        chunk_ids = jnp.arange(n_chunks * chunk, dtype=jnp.int32).reshape(n_chunks, chunk)

        def body(carry, ids):
            total, states = carry
            valid = ids < n_clients
            safe = jnp.minimum(ids, n_clients - 1)
            take = lambda tree: jax.tree.map(lambda a: a[safe], tree)  # noqa: E731
            args = (take(inputs), take(states), valid)
            if chunk == 1:
                squeezed = jax.tree.map(lambda a: a[0], args)
                contribution, new = jax.tree.map(lambda a: a[None], one_client(*squeezed))
            else:
                contribution, new = jax.vmap(one_client)(*args)
            total = accumulate(total, contribution, valid)
            write = jnp.where(valid, ids, n_clients)  # out of range -> dropped
            states = jax.tree.map(lambda a, n: a.at[write].set(n, mode="drop"), states, new)
            return (total, states), None

        (total, states), _ = jax.lax.scan(body, (init_sum, states), chunk_ids)
        return total, states

    # ------------------------------------------------------------------------------ devices
    def client_sum(self, tree):
        """Sum over the blocks of the client axis (an all-reduce on a mesh; else the identity)."""
        return tree if self.mesh is None else jax.lax.psum(tree, CLIENTS_AXIS)

    def all_clients(self, tree):
        """``[C_block, ...]`` arrays gathered into ``[C, ...]`` over every block, in block order."""
        if self.mesh is None:
            return tree
        return jax.tree.map(lambda a: jax.lax.all_gather(a, CLIENTS_AXIS, tiled=True), tree)

    def own_block(self, tree):
        """This block's rows of ``[C, ...]`` arrays laid out as :meth:`all_clients` returns them."""
        if self.mesh is None:
            return tree
        index = jax.lax.axis_index(CLIENTS_AXIS)

        def rows(a):
            size = a.shape[0] // self.n_devices
            return jax.lax.dynamic_slice_in_dim(a, index * size, size)

        return jax.tree.map(rows, tree)

    def shard(self, fn: Callable, in_specs, out_specs) -> Callable:
        """``fn`` written for one block of clients, run over the mesh (or as is without one)."""
        if self.mesh is None:
            return fn
        # Sums leaving the blocks are all-reduced explicitly (client_sum), so replication is not
        # checked by JAX.
        return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
