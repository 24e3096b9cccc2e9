"""Shared body, personal head: FedPer (Arivazhagan et al., "Federated Learning with
Personalization Layers", 2019) and FedRep (Collins et al., "Exploiting Shared Representations for
Personalized Federated Learning", ICML 2021, Algorithm 1).

The model's parameters are split by path: those whose ``/``-joined path starts with ``--head``
(default: the model's last layer) are the client's own head, the rest the shared body.

- FedPer: every client trains body and head together for ``local_epochs``; the server averages
  the bodies (``n_t / n`` weights), each head stays with its client.
- FedRep: every client first trains its head alone for ``--head_epochs`` with the body frozen,
  then the body alone for ``local_epochs`` with its head frozen; the server averages the bodies.

Clients are evaluated with the global body and their own head.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from fedem_jax.algorithms.base import (
    Algorithm,
    Context,
    PersonalGlobalClipState,
    PersonalGlobalState,
    all_finite,
    broadcast_to_clients,
    for_participants,
    next_dp_clip,
    round_metrics,
    with_dp_clip,
)  # fmt: skip
from fedem_jax.algorithms.common import evaluate_personal, init_with_global
from fedem_jax.algorithms.registry import Capabilities, Method, hyperparam
from fedem_jax.core import aggregation
from fedem_jax.data.federated import ClientSplit, FederatedData
from fedem_jax.errors import ConfigError, check


@dataclasses.dataclass(frozen=True)
class SplitHyperparams:
    head: str = hyperparam("", "FedPer, FedRep: path prefix of the personal head (default: last layer)")
    head_epochs: int = hyperparam(1, "FedRep: epochs of head training before the body's")

    def validate(self) -> None:
        check(self.head_epochs >= 1, f"--head_epochs must be >= 1, got {self.head_epochs}")


def head_mask(params, head: str):
    """A tree of bools like ``params``: True on the head's leaves."""
    flat = traverse_util.flatten_dict(params, sep="/")
    prefix = head or next(reversed(params))  # the last top-level module
    mask = {path: path == prefix or path.startswith(prefix + "/") for path in flat}
    if not any(mask.values()) or all(mask.values()):
        valid = ", ".join(sorted(flat))
        raise ConfigError(f"--head {prefix!r} must name some but not all parameters; paths: {valid}")
    return traverse_util.unflatten_dict(mask, sep="/")


def params_count(params) -> int:
    """The leading (client) axis of stacked per-client parameters."""
    return jax.tree.leaves(params)[0].shape[0]


def merge(body_from, head_from, mask):
    """Head leaves of ``head_from``, body leaves of ``body_from``."""
    return jax.tree.map(lambda b, h, m: h if m else b, body_from, head_from, mask)


def part_update(ctx: Context, mask, trained_head: bool, epochs: int):
    """Local training of one part (head or body) with the other frozen: no gradient, no decay."""
    update = ctx.update

    def batch_loss(params, x, y, _weights, mask_batch):
        frozen = jax.lax.stop_gradient(params)
        model = merge(frozen, params, mask) if trained_head else merge(params, frozen, mask)
        return update.one_model_loss(model, x, y, mask_batch)

    trains = jax.tree.map(lambda m: bool(m) == trained_head, mask)
    return dataclasses.replace(
        update, batch_loss=batch_loss, direction=optax.masked(update.direction, trains), local_epochs=epochs
    )


def make_split_method(ctx: Context, local_mask, representation=False, head_epochs=1) -> Algorithm:
    """FedRep if ``representation`` else FedPer, with the client's own part chosen by
    ``local_mask(params)`` (a tree of bools like ``params``: True on the leaves that stay local).
    FedBN is the same method with the BatchNorm layers as the local part."""

    def parts(mask):
        """The head's and the body's local updates (FedRep)."""
        return part_update(ctx, mask, True, head_epochs), part_update(
            ctx, mask, False, ctx.update.local_epochs
        )

    dp = ctx.privacy
    adaptive_clip = dp is not None and dp.adaptive

    def init(data: FederatedData) -> PersonalGlobalState:
        """Per-client models ``params [C, 1, ...]`` (their head leaves are the clients' own) and the
        global model ``global_model [1, ...]`` (its body leaves are the shared body)."""
        state = init_with_global(ctx, data)
        if adaptive_clip:
            state = with_dp_clip(state, dp.clip, PersonalGlobalClipState)
        mask = local_mask(state.global_model)  # a bad --head fails here, before compiling
        if representation and not ctx.update.fresh_opt:
            head, body = parts(mask)
            opt = {
                "head": head.direction.init(state.global_model),
                "body": body.direction.init(state.global_model),
            }
            state = state.replace(
                clients=state.clients.replace(opt_state=broadcast_to_clients(opt, data.n_clients))
            )
        return state

    def local_training(state: PersonalGlobalState, train, key, participates, mask):
        own = merge(broadcast_to_clients(state.global_model, participates.shape[0]), state.params, mask)
        if not representation:
            result = ctx.update.train(state.clients, train, key, participates, own=own)
            return result.params, result.client_state(state.clients)
        head, body = parts(mask)
        opt = state.clients.opt_state or {"head": None, "body": None}  # None: --client_momentum fresh
        first = head.train(state.clients.replace(opt_state=opt["head"]), train, jax.random.fold_in(key, 0),
                           participates, own=own)  # fmt: skip
        second = body.train(state.clients.replace(opt_state=opt["body"]), train, jax.random.fold_in(key, 1),
                            participates, own=first.params)  # fmt: skip
        opt = None if ctx.update.fresh_opt else {"head": first.opt_states, "body": second.opt_states}
        return second.params, state.clients.replace(opt_state=opt, epochs_done=second.epochs_done)

    def round_fn(state: PersonalGlobalState, train: ClientSplit):
        mask = local_mask(state.global_model)
        key = ctx.round_key(state.round)
        participates = ctx.participants(key, train)
        params, clients = local_training(state, train, jax.random.fold_in(key, 1), participates, mask)
        params = for_participants(participates, params, state.params)  # the unsampled: as they were
        weights = jnp.where(participates, ctx.aggregation_weights(train), 0.0)
        clip = state.dp_clip if adaptive_clip else None  # None: the mechanism's fixed clip
        bodies, norms_sq = sent(state, params, mask, clip)
        delta = ctx.layout.client_sum(aggregation.weighted_delta_sum(state.global_model, bodies, weights))
        if dp is not None:  # noise from the round's key: the same on every device
            delta = dp.privatize(delta, jax.random.fold_in(key, 2), clip)
        delta = jax.tree.map(lambda d, m: jnp.zeros_like(d) if m else d, delta, mask)  # bodies only
        server = aggregation.apply_delta(state.global_model, delta)
        fields, extra = dict(params=params, clients=clients, round=state.round + 1, global_model=server), {}
        if adaptive_clip:  # the noised share of body updates within the clip moves it
            fields["dp_clip"] = next_dp_clip(ctx, clip, participates, norms_sq, jax.random.fold_in(key, 3))
            extra["dp_clip"] = clip
        metrics = round_metrics(ctx, participates, finite=all_finite((server, params)), **extra)
        return state.replace(**fields), metrics

    def sent(state: PersonalGlobalState, params, mask, clip):
        """What each client sends: its body (under DP, its body's update clipped to ``clip``; the
        head, kept at the global one's, counts for nothing), and the squared norms of the body
        updates before clipping (``None`` without DP)."""
        if dp is None:
            return params, None
        bodies = merge(params, broadcast_to_clients(state.global_model, params_count(params)), mask)
        return jax.vmap(lambda b: dp.clip_and_norm(state.global_model, b, clip))(bodies)

    def evaluate(state: PersonalGlobalState, split: ClientSplit):
        mask = local_mask(state.global_model)
        models = merge(broadcast_to_clients(state.global_model, split.counts.shape[0]), state.params, mask)
        return evaluate_personal(ctx, models, state.clients.pi, split)

    return Algorithm(init=init, round=round_fn, evaluate=evaluate)


def make_fedper(ctx: Context, hp: SplitHyperparams) -> Algorithm:
    return make_split_method(ctx, lambda params: head_mask(params, hp.head))


def make_fedrep(ctx: Context, hp: SplitHyperparams) -> Algorithm:
    return make_split_method(ctx, lambda params: head_mask(params, hp.head), True, hp.head_epochs)


_CAPS = Capabilities(personal=True, batch_norm=False, dp=True, dp_adaptive=True, cohort=True)
METHODS = (
    Method("FedPer", make_fedper, "shared body, personal head trained together (Arivazhagan et al., 2019)",
           SplitHyperparams, _CAPS),
    Method("FedRep", make_fedrep, "shared body, personal head trained first (Collins et al., 2021)",
           SplitHyperparams, _CAPS),
)  # fmt: skip
