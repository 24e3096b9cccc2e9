"""What one client computes in a round: local epochs of minibatch SGD on all its learners.

The M-step for the components of FedEM (Marfoq et al., NeurIPS 2021, Algorithm 1, lines 6-9):
each participating client starts every component from the global ``theta_m`` and runs
``local_epochs`` epochs of minibatch SGD on ``(1/|B|) sum_{i in B} q[m, i] l_m(i)``; all
components see the same shuffled batches. Other methods change the objective or the step through
hooks (``prox_mu``, ``batch_loss``, ``post_step``, ``custom_step``).

How learners and clients are executed (vmap, chunks, sequential, devices) is the
:class:`~fedem_jax.execution.Layout`'s business, not this module's.

Client data are stored flat (see :mod:`fedem_jax.data.federated`). Each client runs the same
static number of steps per epoch, ``ceil(max_count / batch_size)``; steps past the end of a
client's data are *masked*: they return the state untouched, bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedem_jax.core import aggregation, mixture
from fedem_jax.core.optim import is_zero, sgd_like_step
from fedem_jax.core.shuffle import epoch_order
from fedem_jax.execution.layout import Layout


@dataclasses.dataclass(frozen=True)
class ClientUpdate:
    """Static settings of local training; closed over by the jitted round."""

    apply_fn: Callable  # (params_of_one_learner, x[B, ...]) -> logits [B, out], for training
    forward_fn: Callable  # the same function, implemented for forward-only passes
    per_sample_loss: Callable  # (logits, labels) -> [B]
    direction: object  # optax.GradientTransformation: gradients -> update direction
    schedule: Callable  # epochs already done -> learning rate
    batch_size: int
    local_epochs: int
    # Drop each client's last partial batch, unless it is the client's only batch (the reference
    # sets DataLoader(drop_last=len(client) > batch_size)): a small client trains on what it has.
    drop_last: bool
    layout: Layout = Layout()
    prox_mu: float = 0.0  # FedProx/pFedMe: adds mu * (theta - anchor) to every local gradient
    # A method's own objective on one batch, ``(params, x, y, weights[M, B], mask[B]) -> scalar``;
    # None: FedEM's weighted loss of the stacked learners (paper eq. (8)).
    batch_loss: Callable | None = None
    post_step: Callable | None = None  # params -> params after every step (e.g. a projection)
    # A method's whole step on one batch, replacing the gradient step:
    # ``(params, opt_state, x, y, weights[M, B], mask[B], lr) -> (params, opt_state)``.
    custom_step: Callable | None = None
    # Models with BatchNorm: parameters are ``{"params", "batch_stats"}``; ``apply_fn(params, x,
    # mask)`` returns ``(logits, {"batch_stats": new})``, batch statistics computed over the samples
    # of ``mask`` (a partial batch's padding is left out), and the new statistics replace the old
    # after each step
    # (``direction`` must leave ``batch_stats`` alone: see ``experiment.make_update``).
    stateful: bool = False
    # --client_momentum fresh: every client starts each round's local training from a new
    # optimizer state (``direction.init``) and none is kept: ``clients.opt_state`` is None.
    fresh_opt: bool = False

    # ----------------------------------------------------------------------------- one batch
    def learner_logits(self, params, x) -> jax.Array:
        """Outputs of every learner on one batch: ``[M, B, out]``."""
        return self.layout.map_learners(lambda p: self.forward_fn(p, x), params)

    def learner_losses(self, params, x, y) -> jax.Array:
        """Per-sample loss of every learner on one batch: ``[M, B]``."""
        return jax.vmap(self.per_sample_loss, in_axes=(0, None))(self.learner_logits(params, x), y)

    def one_model_loss(self, params, x, y, mask) -> jax.Array:
        """Mean loss on one batch of a single-model method's params (leaves ``[1, ...]``)."""
        losses = self.per_sample_loss(self.apply_fn(jax.tree.map(lambda a: a[0], params), x), y)
        return mixture.weighted_batch_loss(losses[None], jnp.ones((1, x.shape[0]), jnp.float32), mask)

    def batch_grads(self, params, x, y, q, mask):
        """Gradient of ``weighted_batch_loss`` with respect to the stacked ``[M, ...]`` params
        (or of the method's own ``batch_loss``). Stateful models also return the new statistics
        ``[M, ...]`` (else ``None``)."""
        if self.batch_loss is not None:
            return jax.grad(self.batch_loss)(params, x, y, q, mask), None

        def one_learner_loss(p, q_m):
            if self.stateful:  # BatchNorm statistics over the batch's real samples only
                logits, new_state = self.apply_fn(p, x, mask)
            else:
                logits, new_state = self.apply_fn(p, x), None
            loss = mixture.weighted_batch_loss(self.per_sample_loss(logits, y)[None], q_m[None], mask)
            return loss, (new_state["batch_stats"] if self.stateful else None)

        return self.layout.map_learners(jax.grad(one_learner_loss, has_aux=True), params, q)

    @property
    def uses_micro_batches(self) -> bool:
        micro = self.layout.micro_batch
        return (
            0 < micro < self.batch_size
            and not self.layout.clients_vmapped
            and not self.stateful
            and self.batch_loss is None
        )

    def partial_batch_grads(self, params, idx, mask, weights, data):
        """``batch_grads`` of a partial batch (valid samples first), computed over only
        ``ceil(k / micro_batch)`` sub-batches: sum_j (k_j / k) * grad(sub-batch j)."""
        micro = self.layout.micro_batch
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

    def gradient_step(self, params, opt, batch, weights, data, lr, anchor):
        """One step on one batch ``(idx, mask)``: ``(params, opt)`` after it."""
        idx, mask = batch
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
        if not is_zero(self.prox_mu):  # proximal term toward the anchor (FedProx: the start)
            grads = jax.tree.map(lambda g, p, a: g + self.prox_mu * (p - a), grads, params, anchor)
        params, opt = sgd_like_step(params, opt, grads, lr, self.direction)
        if new_stats is not None:  # BatchNorm running statistics of this batch
            params = {**params, "batch_stats": new_stats}
        if self.post_step is not None:
            params = self.post_step(params)
        return params, opt

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
            order = epoch_order(jax.random.fold_in(key, e), n_slots, count)
            lr = self.schedule(t)

            def step(state, s):
                slots = s * batch + jnp.arange(batch)
                mask = slots < count
                if self.drop_last:  # the reference's rule: a client smaller than a batch still steps
                    active = ((s + 1) * batch <= count) | ((s == 0) & (count > 0))
                else:
                    active = s * batch < count
                idx = offset + jnp.minimum(order[slots], count - 1)

                def do_step(state):
                    return self.gradient_step(*state, (idx, mask), weights, data, lr, anchor)

                return self.layout.masked(active, do_step, state), None

            (params, opt), _ = jax.lax.scan(step, (params, opt), jnp.arange(n_steps))
            return (params, opt, t + 1), None

        (params, opt, t), _ = jax.lax.scan(
            epoch, (start_params, opt_state, epochs_done), jnp.arange(self.local_epochs)
        )
        return params, opt, t

    # ----------------------------------------------------------------------------- all clients
    def train(
        self, clients, data, key, participates, *, start=None, own=None, weights=None, agg_weights=None,
        anchor=None, clip=None,
    ) -> LocalResult:  # fmt: skip
        """Local updates of every participating client of ``data`` (one block of clients).

        Args:
          clients: per-client state with ``opt_state`` and ``epochs_done`` (leaves ``[C, ...]``).
          key: the round's local-training key; client ``c`` shuffles with ``fold_in(key, c)``, ``c``
            its global index, so the shuffles are the same on any layout or number of devices.
          participates: ``[C]`` booleans; the others keep their state and contribute nothing.
          start: the global model every client starts from; with it, the result's ``delta_sum``
            is ``sum_t w_t (theta^t - start)`` with ``w = agg_weights`` (default 0).
          own: instead of ``start``, per-client models (leaves ``[C, ...]``) each client starts from;
            the result's ``params`` are their updated values.
          weights: ``[M, N]`` per-sample loss weights (default: all ones, one learner).
          anchor: the point of the proximal term for every client (default: each client's start).
          clip: ``(start, params) -> params`` bounding what a client sends (DP: the update's
            norm, :meth:`fedem_jax.core.privacy.Mechanism.clip_update`); with ``start=`` only.
        """
        if (start is None) == (own is None):
            raise ValueError("train: give exactly one of start= or own=")
        n_clients = participates.shape[0]
        weights = jnp.ones((1, data.y.shape[0]), jnp.float32) if weights is None else weights
        agg_weights = jnp.zeros((n_clients,), jnp.float32) if agg_weights is None else agg_weights
        inputs = (data.offsets, data.counts, data.global_ids, participates, agg_weights)
        states = (own, clients.opt_state, clients.epochs_done, jnp.zeros((n_clients,), jnp.float32))

        def one_client(inp, state, valid):
            offset, count, client, take_part, w = inp
            own_params, opt, t, _ = state
            begin = start if own is None else own_params
            client_key = jax.random.fold_in(key, client)
            if self.fresh_opt:
                opt = self.direction.init(begin)

            def run(st):
                return self.client_update(*st, weights, offset, count, client_key, data, anchor)

            # Not taking part: parameters stay as they were (weight 0), optimizer state is kept.
            params, opt, t = self.layout.masked_client(take_part & valid, run, (begin, opt, t))
            kept_opt = None if self.fresh_opt else opt
            new_state = (None if own is None else params, kept_opt, t, tree_sq_distance(params, begin))
            sent = params if clip is None or own is not None else clip(begin, params)
            contribution = None if own is not None else (sent, jnp.where(take_part, w, 0.0))
            return contribution, new_state

        def accumulate(total, contribution, valid):
            if contribution is None:
                return total
            params, w = contribution
            w = jnp.where(valid, w, 0.0)
            return jax.tree.map(jnp.add, total, aggregation.weighted_delta_sum(start, params, w))

        zeros = None if start is None else jax.tree.map(jnp.zeros_like, start)
        delta_sum, (own_out, opt, t, sq) = self.layout.scan_clients(
            one_client, inputs, states, accumulate, zeros
        )
        return LocalResult(delta_sum, opt, t, own_out, sq)


class LocalResult(NamedTuple):
    """What :meth:`ClientUpdate.train` returns."""

    delta_sum: object  # sum_t w_t (theta^t - theta), like the global params (None with own=)
    opt_states: object  # per-client optimizer states [C, ...]
    epochs_done: jax.Array  # [C]
    params: object  # the updated personalised models [C, ...] (None with start=)
    delta_sq_norm: jax.Array  # [C] ||theta^t_end - theta^t_start||^2 (0 for non-participants)

    def client_state(self, clients, **changes):
        """``clients`` with this result's optimizer states and epoch counters (and ``changes``)."""
        return clients.replace(opt_state=self.opt_states, epochs_done=self.epochs_done, **changes)


def tree_sq_distance(a, b) -> jax.Array:
    """``||a - b||^2`` over all leaves of two pytrees of the same structure."""
    return sum(
        jnp.sum(jnp.square(x - y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
