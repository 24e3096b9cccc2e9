"""Pieces shared by method modules: per-sample losses, per-client reductions and evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedem_jax.algorithms.base import (
    Context,
    PersonalGlobalClipState,
    PersonalGlobalState,
    PersonalState,
    broadcast_to_clients,
    next_dp_clip,
    take_first,
    with_dp_clip,
)
from fedem_jax.core import aggregation, mixture
from fedem_jax.core.client_update import ClientUpdate
from fedem_jax.data.federated import ClientSplit, FederatedData
from fedem_jax.execution.sample_map import map_samples


def shared_sample_losses(update: ClientUpdate, params, split: ClientSplit, eval_chunk: int) -> jax.Array:
    """``[M, N]`` per-sample loss of every component of one shared model on every sample,
    ``eval_chunk`` samples per forward pass (the E-step input, paper eq. (4))."""
    losses = map_samples(
        lambda xy: update.learner_losses(params, xy[0][None], xy[1][None])[:, 0],
        (split.x, split.y),
        eval_chunk,
    )
    return losses.T


def personal_sample_losses(update: ClientUpdate, params, split: ClientSplit) -> jax.Array:
    """``[M, N]`` per-sample loss when client ``c`` has its own components ``params[c]``
    (leaves ``[C, M, ...]``); computed one client at a time over its padded sample range."""
    positions = jnp.arange(split.max_count)
    n_samples = split.y.shape[0]

    def one_client(args):
        client_params, offset, count = args
        idx = offset + jnp.minimum(positions, jnp.maximum(count - 1, 0))
        return update.learner_losses(client_params, split.x[idx], split.y[idx])  # [M, max_count]

    per_client = jax.lax.map(one_client, (params, split.offsets, split.counts))  # [C, M, max_count]
    index = split.offsets[:, None] + positions[None, :]
    index = jnp.where(positions[None, :] < split.counts[:, None], index, n_samples)  # padding dropped
    n_learners = per_client.shape[1]
    flat = jnp.zeros((n_learners, n_samples), per_client.dtype)
    return flat.at[:, index].set(jnp.moveaxis(per_client, 1, 0), mode="drop")


def client_losses(ctx: Context, params, train: ClientSplit) -> jax.Array:
    """``[C]`` mean training loss of each client with one shared single model ``params [1, ...]``."""
    return client_means(shared_sample_losses(ctx.update, params, train, ctx.eval_chunk)[0], train)


def client_means(values: jax.Array, split: ClientSplit) -> jax.Array:
    """``[C]`` mean over each client's samples of a flat per-sample ``[N]`` array."""
    n_clients = split.counts.shape[0]
    sums = jax.ops.segment_sum(values, split.client_id, n_clients)
    return sums / jnp.maximum(split.counts, 1).astype(values.dtype)


def client_average(ctx: Context, client_params, weights):
    """``sum_t w_t theta_t`` over every client (leaves ``[C, ...]``; ``w`` sums to 1 over blocks)."""
    local = jax.tree.map(lambda a: jnp.tensordot(weights.astype(a.dtype), a, axes=1), client_params)
    return ctx.layout.client_sum(local)


def evaluate_personal(ctx: Context, params, pi, split: ClientSplit) -> dict:
    """Per-client ``(correct, loss_sum, count)`` of each client's own mixture ``params[c]``
    (leaves ``[C, M, ...]``) weighted by ``pi[c]``."""
    positions = jnp.arange(split.max_count)
    task = ctx.task

    def one_client(args):
        client_params, client_pi, offset, count = args
        idx = offset + jnp.minimum(positions, jnp.maximum(count - 1, 0))
        mask = positions < count
        logits = ctx.update.learner_logits(client_params, split.x[idx])  # [M, n, out]
        probs = mixture.mixture_probs(client_pi, task.class_probs(logits))
        y = split.y[idx]
        correct = jnp.sum(jnp.where(mask, task.sample_correct(probs, y), 0.0))
        loss = jnp.sum(jnp.where(mask, task.sample_nll(probs, y), 0.0))
        return correct.astype(jnp.float32), loss

    correct, loss_sum = jax.lax.map(one_client, (params, pi, split.offsets, split.counts))
    return {"correct": correct, "loss_sum": loss_sum, "count": split.counts}


def evaluate_own_models(ctx: Context):
    """``evaluate`` of a :class:`PersonalState`: every client with its own models."""

    def evaluate(state: PersonalState, split: ClientSplit) -> dict:
        return evaluate_personal(ctx, state.params, state.clients.pi, split)

    return evaluate


def init_with_global(ctx: Context, data: FederatedData, one_client_opt=None) -> PersonalGlobalState:
    """:func:`init_personal`, with the initial model also as the global one; every client's
    optimizer state is ``one_client_opt(model)`` (default: the local optimizer's, as there)."""
    state = init_personal(ctx, data)
    start = take_first(state.params)
    clients = state.clients
    if one_client_opt is not None and not ctx.update.fresh_opt:
        clients = clients.replace(opt_state=broadcast_to_clients(one_client_opt(start), data.n_clients))
    return PersonalGlobalState(params=state.params, clients=clients, round=state.round, global_model=start)


def with_adaptive_clip(ctx: Context, state: PersonalGlobalState) -> PersonalGlobalState:
    """``state`` with the clip adaptive clipping starts from, when ``--dp_clip_quantile`` is on."""
    dp = ctx.privacy
    return with_dp_clip(state, dp.clip, PersonalGlobalClipState) if dp is not None and dp.adaptive else state


def global_model_step(
    ctx: Context, state: PersonalGlobalState, sent, participates, train: ClientSplit, key, server_lr=None
):
    """The server's step on the global model of a method with personal models too (Ditto, APFL,
    pFedMe-true): the participants' new global models ``sent`` ``[C, 1, ...]`` averaged as updates
    with ``ctx.aggregation_weights``, the sum scaled by ``server_lr`` if given (a traced value in a
    sweep). Under ``--dp_clip`` (McMahan
    et al., ICLR 2018) each update is clipped, the sum noised from ``fold_in(key, 2)``, and with
    ``--dp_clip_quantile`` the clip moved (Andrew et al., NeurIPS 2021) from ``fold_in(key, 3)``.
    Returns the new global model, the state's other changed fields (``dp_clip``) and the round's
    extra metrics."""
    dp = ctx.privacy
    clip = state.dp_clip if isinstance(state, PersonalGlobalClipState) else None
    weights = jnp.where(participates, ctx.aggregation_weights(train), 0.0)
    if dp is not None:  # each global update clipped; its norm before clipping kept
        sent, norms_sq = jax.vmap(lambda w: dp.clip_and_norm(state.global_model, w, clip))(sent)
    delta = ctx.layout.client_sum(aggregation.weighted_delta_sum(state.global_model, sent, weights))
    if dp is not None:  # noise from the round's key: the same on every device
        delta = dp.privatize(delta, jax.random.fold_in(key, 2), clip)
    if server_lr is not None:
        delta = jax.tree.map(lambda d: server_lr * d, delta)
    server = aggregation.apply_delta(state.global_model, delta)
    if clip is None:
        return server, {}, {}
    # adaptive clipping: the noised share of global updates within the clip moves it
    new_clip = next_dp_clip(ctx, clip, participates, norms_sq, jax.random.fold_in(key, 3))
    return server, {"dp_clip": new_clip}, {"dp_clip": clip}


def init_personal(ctx: Context, data: FederatedData) -> PersonalState:
    """The same initial components on every client (as the reference), leaves ``[C, M, ...]``."""
    params = ctx.init_components(data)
    clients = ctx.init_clients(data, params)
    return PersonalState(
        params=broadcast_to_clients(params, data.n_clients), clients=clients, round=jnp.zeros((), jnp.int32)
    )
