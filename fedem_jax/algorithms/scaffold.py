"""SCAFFOLD: stochastic controlled averaging (Karimireddy et al., ICML 2020, Algorithm 1 with
control-variate option II).

The server keeps the model ``x`` and a control variate ``c``; every client keeps its own ``c_i``
(zero at the start). A participating client starts from ``y_i = x`` and corrects every local
gradient by the drift of its data from the federation's:

    y_i <- y_i - lr (g_i(y_i) - c_i + c),

then updates its control variate from the distance it travelled (option II):

    c_i+ = c_i - c + (x - y_i) / (K lr),

where ``K lr`` is the sum of the learning rates of the local steps it took (``K`` steps at a
constant ``lr`` in the paper; with a schedule or masked small-client steps, their actual sum).
The server averages with the engine's ``p_i = n_i / n`` weights, as FedAvg does here:
``x <- x + server_lr sum_{i in S} p_i (y_i - x)`` and ``c <- c + sum_{i in S} p_i (c_i+ - c_i)``,
so ``c`` stays the ``p``-weighted average of the ``c_i`` (the paper's ``|S|/N`` mean is the case of
equal ``p_i``). Local steps are plain SGD unless ``--momentum`` is given, as in the paper.

The correction enters the local objective as ``f_i(y) + <y, stop_grad(c - c_i)>``, whose gradient
is ``g_i(y) + c - c_i``; weight decay, if any, is part of ``f_i``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax

from fedem_jax.algorithms.base import (
    Algorithm,
    Context,
    GlobalState,
    Params,
    all_finite,
    broadcast_to_clients,
    round_metrics,
)  # fmt: skip
from fedem_jax.algorithms.fedem import shared_model_evaluation
from fedem_jax.algorithms.registry import Capabilities, Method, hyperparam
from fedem_jax.core import aggregation
from fedem_jax.core.client_update import ClientUpdate
from fedem_jax.core.optim import or_default
from fedem_jax.data.federated import ClientSplit, FederatedData
from fedem_jax.errors import check


class ScaffoldState(GlobalState):
    """``params``: the server model ``x [1, ...]``; ``server_control``: ``c [1, ...]``;
    ``client_control``: every client's ``c_i``, leaves ``[C, 1, ...]``."""

    server_control: Params
    client_control: Params

    CLIENT_FIELDS: ClassVar[tuple[str, ...]] = ("clients", "client_control")


@dataclasses.dataclass(frozen=True)
class ScaffoldHyperparams:
    server_lr: float = hyperparam(0.0, "server learning rate (0: 1.0 for avg, 0.01 for adam/yogi)")

    def validate(self) -> None:
        check(self.server_lr >= 0, f"--server_lr must be >= 0, got {self.server_lr}")


def corrected_update(update: ClientUpdate) -> ClientUpdate:
    """Local training of ``{"y", "correction"}``: steps on ``y`` with the gradient
    ``g(y) + correction``; ``correction`` (``c - c_i``) is never changed."""

    def batch_loss(params, x, y, _weights, mask):
        shift = sum(
            jnp.vdot(p, jax.lax.stop_gradient(s))
            for p, s in zip(jax.tree.leaves(params["y"]), jax.tree.leaves(params["correction"]), strict=True)
        )
        return update.one_model_loss(params["y"], x, y, mask) + shift

    trained = lambda params: {"y": True, "correction": False}  # noqa: E731
    direction = optax.masked(update.direction, trained)
    return dataclasses.replace(update, batch_loss=batch_loss, direction=direction)


def lr_sums(update: ClientUpdate, train: ClientSplit, epochs_done: jax.Array) -> jax.Array:
    """``[C]`` sum of the learning rates of the local steps each client takes this round (``K lr``):
    steps per epoch (see ``ClientUpdate.drop_last``) times the epochs' rates."""
    steps_cap = max(1, math.ceil(train.max_count / update.batch_size))
    counts = train.counts
    if update.drop_last:  # full batches only, but a client smaller than a batch takes one step
        steps = jnp.where(counts > 0, jnp.maximum(counts // update.batch_size, 1), 0)
    else:
        steps = -(-counts // update.batch_size)
    steps = jnp.minimum(steps, steps_cap).astype(jnp.float32)
    rates = sum(update.schedule(epochs_done + e) for e in range(update.local_epochs))
    return steps * rates


def make_scaffold(ctx: Context, hp: ScaffoldHyperparams) -> Algorithm:
    update = corrected_update(ctx.update)
    server_lr = or_default(hp.server_lr, 1.0)

    def init(data: FederatedData) -> ScaffoldState:
        x = ctx.init_components(data)
        zeros = jax.tree.map(jnp.zeros_like, x)
        opt = update.direction.init({"y": x, "correction": zeros})
        clients = ctx.init_clients(data, x)
        if not ctx.update.fresh_opt:
            clients = clients.replace(opt_state=broadcast_to_clients(opt, data.n_clients))
        return ScaffoldState(
            params=x,
            clients=clients,
            round=jnp.zeros((), jnp.int32),
            server_control=zeros,
            client_control=broadcast_to_clients(zeros, data.n_clients),
        )

    def new_controls(state: ScaffoldState, trained, participates, train):
        """Option II: ``c_i+ = c_i - c + (x - y_i) / (K lr)`` for clients that took a step."""
        rate_sum = lr_sums(ctx.update, train, state.clients.epochs_done)
        moved = participates & (rate_sum > 0)
        rate_sum = jnp.where(moved, rate_sum, 1.0)

        def leaf(c_i, c, x, y):
            per_client = (-1,) + (1,) * (y.ndim - 1)
            new = c_i - c[None] + (x[None] - y) / rate_sum.reshape(per_client).astype(y.dtype)
            return jnp.where(moved.reshape(per_client), new, c_i)

        return jax.tree.map(leaf, state.client_control, state.server_control, state.params, trained)

    def round_fn(state: ScaffoldState, train: ClientSplit):
        key = ctx.round_key(state.round)
        participates = ctx.participants(key, train)
        correction = jax.tree.map(lambda c, c_i: c[None] - c_i, state.server_control, state.client_control)
        own = {"y": broadcast_to_clients(state.params, participates.shape[0]), "correction": correction}
        result = update.train(state.clients, train, jax.random.fold_in(key, 1), participates, own=own)
        trained = result.params["y"]
        controls = new_controls(state, trained, participates, train)
        weights = jnp.where(participates, ctx.client_weights(train), 0.0)
        delta_x = aggregation.weighted_delta_sum(state.params, trained, weights)
        delta_c = jax.tree.map(
            lambda new, old: jnp.tensordot(weights.astype(new.dtype), new - old, axes=1),
            controls,
            state.client_control,
        )
        delta_x, delta_c = ctx.layout.client_sum((delta_x, delta_c))
        params = jax.tree.map(lambda p, d: p + server_lr * d, state.params, delta_x)
        new_state = state.replace(
            params=params,
            clients=result.client_state(state.clients),
            round=state.round + 1,
            server_control=aggregation.apply_delta(state.server_control, delta_c),
            client_control=controls,
        )
        return new_state, round_metrics(ctx, participates, finite=all_finite(params))

    evaluate, evaluate_unseen = shared_model_evaluation(ctx)
    return Algorithm(init=init, round=round_fn, evaluate=evaluate, evaluate_unseen=evaluate_unseen)


_NO_DP = "its control variates leave the clients too and are not clipped or noised yet"
_CAPS = Capabilities(unseen=True, batch_norm=False, plain_sgd=True, no_dp_why=_NO_DP, cohort=True)
METHODS = (
    Method("SCAFFOLD", make_scaffold, "FedAvg with client-drift control variates (Karimireddy et al., 2020)",
           ScaffoldHyperparams, _CAPS),
)  # fmt: skip
