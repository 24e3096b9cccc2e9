"""Local training of every learner on every client, as one traced computation.

The M-step for the components of FedEM (Marfoq et al., NeurIPS 2021, Algorithm 1, lines 6-9):
each participating client starts every component from the global ``theta_m`` and runs
``local_epochs`` epochs of minibatch SGD on ``(1/|B|) sum_{i in B} q[m, i] l_m(i)``; all
components see the same shuffled batches.

Client data are stored flat (see :mod:`fedem_jax.data.federated`). Each client runs the same
static number of steps per epoch, ``ceil(max_count / batch_size)``; steps past the end of a
client's data are *masked*: they return the state untouched, bit for bit. When the client axis
runs sequentially this is a ``lax.cond``, which also skips the computation. Under ``vmap`` a cond
with a batched predicate would become a ``select`` that broadcasts every closed-over operand
(the whole dataset!) over the client axis, so there the step is computed and discarded with
``jnp.where``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedem_jax.core import aggregation, mixture
from fedem_jax.core.optim import sgd_like_step


@dataclasses.dataclass(frozen=True)
class LocalTrainer:
    """Static settings of local training; closed over by the jitted round."""

    apply_fn: Callable  # (params_of_one_learner, x[B, ...]) -> logits [B, out], for training
    forward_fn: Callable  # the same function, implemented for forward-only passes
    per_sample_loss: Callable  # (logits, labels) -> [B]
    direction: object  # optax.GradientTransformation: gradients -> update direction
    schedule: Callable  # epochs already done -> learning rate
    batch_size: int
    local_epochs: int
    drop_last: bool
    learner_vmap: bool
    client_chunk: int  # 0: vmap all clients, 1: sequential, k: chunks of k
    prox_mu: float = 0.0  # FedProx/pFedMe: adds mu * (theta - anchor) to every local gradient
    # A method's own objective on one batch, ``(params, x, y, weights[M, B], mask[B]) -> scalar``;
    # None: FedEM's weighted loss of the stacked learners (paper eq. (8)).
    batch_loss: Callable | None = None
    post_step: Callable | None = None  # params -> params after every step (e.g. a projection)
    # A method's whole step on one batch, replacing the gradient step:
    # ``(params, opt_state, x, y, weights[M, B], mask[B], lr) -> (params, opt_state)``.
    custom_step: Callable | None = None
    # Models with BatchNorm: parameters are ``{"params", "batch_stats"}``; ``apply_fn`` returns
    # ``(logits, {"batch_stats": new})`` and the new statistics replace the old after each step
    # (``direction`` must leave ``batch_stats`` alone: see ``train.make_trainer``).
    stateful: bool = False
    # > 0: a step with fewer than ``batch_size`` samples (a client's last, partial batch) runs as
    # ceil(k / micro_batch) sub-batches whose gradients are summed, instead of a padded batch.
    # Only the sequential client layout skips the unused sub-batches (see README, Performance).
    micro_batch: int = 0

    @property
    def clients_vmapped(self) -> bool:
        return self.client_chunk != 1

    def masked(self, active, fn, state):
        """``fn(state)`` if ``active`` else ``state``, exactly (see module docstring)."""
        if not self.clients_vmapped:
            return jax.lax.cond(active, fn, lambda st: st, state)
        new = fn(state)
        return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state)

    # ----------------------------------------------------------------------------- one batch
    def learner_logits(self, params, x) -> jax.Array:
        """Outputs of every learner on one batch: ``[M, B, out]``."""
        if self.learner_vmap:
            return jax.vmap(self.forward_fn, in_axes=(0, None))(params, x)
        return jax.lax.map(lambda p: self.forward_fn(p, x), params)

    def learner_losses(self, params, x, y) -> jax.Array:
        """Per-sample loss of every learner on one batch: ``[M, B]``."""
        return jax.vmap(self.per_sample_loss, in_axes=(0, None))(self.learner_logits(params, x), y)

    def batch_grads(self, params, x, y, q, mask):
        """Gradient of ``weighted_batch_loss`` with respect to the stacked ``[M, ...]`` params
        (or of the method's own ``batch_loss``). Stateful models also return the new statistics
        ``[M, ...]`` (else ``None``)."""
        if self.batch_loss is not None:
            return jax.grad(self.batch_loss)(params, x, y, q, mask), None

        def one_learner_loss(p, q_m):
            out = self.apply_fn(p, x)
            logits, new_state = out if self.stateful else (out, None)
            loss = mixture.weighted_batch_loss(self.per_sample_loss(logits, y)[None], q_m[None], mask)
            return loss, (new_state["batch_stats"] if self.stateful else None)

        grad_one = jax.grad(one_learner_loss, has_aux=True)
        if self.learner_vmap:
            return jax.vmap(grad_one)(params, q)
        return jax.lax.map(lambda args: grad_one(*args), (params, q))

    @property
    def uses_micro_batches(self) -> bool:
        return (
            0 < self.micro_batch < self.batch_size
            and not self.clients_vmapped
            and not self.stateful
            and self.batch_loss is None
        )

    def partial_batch_grads(self, params, idx, mask, weights, data):
        """``batch_grads`` of a partial batch (valid samples first), computed over only
        ``ceil(k / micro_batch)`` sub-batches: sum_j (k_j / k) * grad(sub-batch j)."""
        micro = self.micro_batch
        n_valid = mask.sum()
        n_sub = (n_valid + micro - 1) // micro
        padded = -(-self.batch_size // micro) * micro
        idx = jnp.pad(idx, (0, padded - self.batch_size), mode="edge")
        mask = jnp.pad(mask, (0, padded - self.batch_size))

        def add_sub_batch(j, total):
            sub_idx = jax.lax.dynamic_slice(idx, (j * micro,), (micro,))
            sub_mask = jax.lax.dynamic_slice(mask, (j * micro,), (micro,))
            grads, _ = self.batch_grads(
                params, data.x[sub_idx], data.y[sub_idx], weights[:, sub_idx], sub_mask
            )
            share = sub_mask.sum() / n_valid
            return jax.tree.map(lambda t, g: t + share.astype(g.dtype) * g, total, grads)

        zeros = jax.tree.map(jnp.zeros_like, params)
        return jax.lax.fori_loop(0, n_sub, add_sub_batch, zeros), None

    # ----------------------------------------------------------------------------- one client
    def client_update(
        self, start_params, opt_state, epochs_done, weights, offset, count, key, data, anchor=None
    ):
        """``local_epochs`` epochs on one client from ``start_params``.

        Returns ``(params, opt_state, epochs_done)``.

        Args:
          weights: ``[M, N]`` per-sample weights of all samples (FedEM: responsibilities ``q``);
            this client's columns are ``offset .. offset + count``.
          data: the flat train :class:`ClientSplit`.
          anchor: the point of the proximal term (default: ``start_params``).
        """
        anchor = start_params if anchor is None else anchor
        batch = self.batch_size
        n_steps = max(1, math.ceil(data.max_count / batch))
        n_slots = n_steps * batch

        def epoch(carry, e):
            params, opt, t = carry
            # Valid positions first, in random order; padded positions last.
            scores = jax.random.uniform(jax.random.fold_in(key, e), (n_slots,))
            order = jnp.argsort(jnp.where(jnp.arange(n_slots) < count, scores, 2.0))
            lr = self.schedule(t)

            def step(state, s):
                slots = s * batch + jnp.arange(batch)
                mask = slots < count
                active = (s + 1) * batch <= count if self.drop_last else s * batch < count

                def do_step(state):
                    params, opt = state
                    idx = offset + jnp.minimum(order[slots], count - 1)
                    x, y, q = data.x[idx], data.y[idx], weights[:, idx]
                    if self.custom_step is not None:
                        return self.custom_step(params, opt, x, y, q, mask, lr)
                    if self.uses_micro_batches:
                        grads, new_stats = jax.lax.cond(
                            mask.all(),
                            lambda p: self.batch_grads(p, x, y, q, mask),
                            lambda p: self.partial_batch_grads(p, idx, mask, weights, data),
                            params,
                        )
                    else:
                        grads, new_stats = self.batch_grads(params, x, y, q, mask)
                    if self.prox_mu:  # proximal term toward the anchor (FedProx: the start)
                        grads = jax.tree.map(
                            lambda g, p, a: g + self.prox_mu * (p - a), grads, params, anchor
                        )
                    params, opt = sgd_like_step(params, opt, grads, lr, self.direction)
                    if new_stats is not None:  # BatchNorm running statistics of this batch
                        params = {**params, "batch_stats": new_stats}
                    if self.post_step is not None:
                        params = self.post_step(params)
                    return params, opt

                return self.masked(active, do_step, state), None

            (params, opt), _ = jax.lax.scan(step, (params, opt), jnp.arange(n_steps))
            return (params, opt, t + 1), None

        (params, opt, t), _ = jax.lax.scan(
            epoch, (start_params, opt_state, epochs_done), jnp.arange(self.local_epochs)
        )
        return params, opt, t

    # ----------------------------------------------------------------------------- all clients
    def train_clients(
        self,
        global_params,
        opt_states,
        epochs_done,
        sample_weights,
        participates,
        agg_weights,
        key,
        data,
        own_params=None,
        anchor=None,
    ) -> LocalResult:
        """Local updates of all participating clients, then their weighted delta sum.

        Clients are processed in chunks (``client_chunk``) inside a ``lax.scan`` whose carry
        accumulates ``sum_t w_t (theta^t - theta)`` (``w = agg_weights``), so per-client
        parameters are never all materialised. Non-participating clients keep their state and
        contribute nothing.

        With ``own_params`` (leaves ``[C, ...]``: personalised models) each client starts from
        its own parameters instead of the global ones, and its result is written back there.
        ``anchor`` (a single model) is the point of the proximal term for every client (default:
        each client's start).
        """
        n_clients = participates.shape[0]
        chunk = n_clients if self.client_chunk == 0 else min(self.client_chunk, n_clients)
        n_chunks = math.ceil(n_clients / chunk)
        chunk_ids = jnp.arange(n_chunks * chunk, dtype=jnp.int32).reshape(n_chunks, chunk)

        def one_client(start, opt, t, offset, count, client, take_part):
            # Keyed by the client's global index: the same shuffles on any number of devices.
            client_key = jax.random.fold_in(key, client)

            def train(state):
                return self.client_update(*state, sample_weights, offset, count, client_key, data, anchor)

            # Not taking part: parameters stay as they were (weight 0), optimizer state is kept.
            new_params, new_opt, new_t = self.masked(take_part, train, (start, opt, t))
            return new_params, new_opt, new_t, tree_sq_distance(new_params, start)

        def body(carry, ids):
            delta_sum, opt_all, t_all, own_all, sq_all = carry
            valid = ids < n_clients
            safe = jnp.minimum(ids, n_clients - 1)
            take = lambda tree: jax.tree.map(lambda a: a[safe], tree)  # noqa: E731
            if own_all is None:
                start = jax.tree.map(lambda g: jnp.broadcast_to(g, (len(ids), *g.shape)), global_params)
            else:
                start = take(own_all)
            args = (
                start,
                take(opt_all),
                t_all[safe],
                data.offsets[safe],
                data.counts[safe],
                data.global_ids[safe],
                participates[safe] & valid,
            )
            if chunk == 1:
                squeezed = jax.tree.map(lambda a: a[0], args)
                outs = jax.tree.map(lambda a: a[None], one_client(*squeezed))
            else:
                outs = jax.vmap(one_client)(*args)
            params_c, opt_c, t_c, sq_c = outs
            w = jnp.where(valid & participates[safe], agg_weights[safe], 0.0)
            delta_sum = jax.tree.map(
                jnp.add, delta_sum, aggregation.weighted_delta_sum(global_params, params_c, w)
            )
            write = jnp.where(valid, ids, n_clients)  # out of range -> dropped
            scatter = lambda a, n: a.at[write].set(n, mode="drop")  # noqa: E731
            opt_all = jax.tree.map(scatter, opt_all, opt_c)
            t_all = t_all.at[write].set(t_c, mode="drop")
            sq_all = sq_all.at[write].set(sq_c, mode="drop")
            if own_all is not None:
                own_all = jax.tree.map(scatter, own_all, params_c)
            return (delta_sum, opt_all, t_all, own_all, sq_all), None

        zeros = jax.tree.map(jnp.zeros_like, global_params)
        init = (zeros, opt_states, epochs_done, own_params, jnp.zeros((n_clients,), jnp.float32))
        (delta_sum, opt_states, epochs_done, own_out, sq), _ = jax.lax.scan(body, init, chunk_ids)
        return LocalResult(delta_sum, opt_states, epochs_done, own_out, sq)


class LocalResult(NamedTuple):
    """What :meth:`LocalTrainer.train_clients` returns."""

    delta_sum: object  # sum_t w_t (theta^t - theta), like the global params
    opt_states: object  # per-client optimizer states [C, ...]
    epochs_done: jax.Array  # [C]
    params: object  # the updated personalised models [C, ...] (None without own_params)
    delta_sq_norm: jax.Array  # [C] ||theta^t_end - theta^t_start||^2 (0 for non-participants)


def tree_sq_distance(a, b) -> jax.Array:
    """``||a - b||^2`` over all leaves of two pytrees of the same structure."""
    return sum(
        jnp.sum(jnp.square(x - y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
