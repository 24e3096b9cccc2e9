"""APFL: adaptive personalized federated learning (Deng, Kamani and Mahdavi, 2020, Algorithm 1).

Client ``t`` keeps a local model ``v_t`` and a mixing weight ``alpha_t``; its personalised model is
the parameter interpolation ``v_bar_t = alpha_t v_t + (1 - alpha_t) w``. On every local batch it
takes one step on the objective

    f(w_t) + f(alpha_t v_t + (1 - alpha_t) stop_grad(w_t)),

which is Deng et al.'s three updates in one gradient: ``w_t`` descends ``grad f(w_t)``; ``v_t``
descends ``alpha_t grad f(v_bar_t)``; ``alpha_t`` (if learned, ``--learn_alpha``) descends
``<v_t - w_t, grad f(v_bar_t)>`` and is clipped to ``[0, 1]``. The server averages the ``w_t``
(``n_t / n`` weights). Weight decay and momentum apply to ``w`` and ``v``, not to ``alpha``.
The reference's interpolation was a no-op and the method unreachable from its CLI.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from fedem_jax.algorithms.common import all_finite, broadcast_to_clients, round_key
from fedem_jax.algorithms.fedem import FedEM, sample_participants
from fedem_jax.algorithms.personalized import PersonalState, make_personal_evaluate
from fedem_jax.core import aggregation, mixture
from fedem_jax.core.local import LocalTrainer
from fedem_jax.data.federated import ClientSplit


def interpolate(v, w, alpha):
    """``alpha v + (1 - alpha) w``; ``alpha`` broadcast over the leading axes of ``v``."""

    def leaf(vv, ww):
        a = alpha.reshape(alpha.shape + (1,) * (vv.ndim - alpha.ndim)).astype(vv.dtype)
        return a * vv + (1 - a) * ww

    return jax.tree.map(leaf, v, w)


def make_apfl(
    task,
    trainer: LocalTrainer,
    local: FedEM,
    *,
    seed: int,
    sampling_rate: float,
    alpha: float,
    learn_alpha: bool,
) -> FedEM:
    """``trainer`` is the usual one (one learner); ``local`` gives the initial model."""

    def one_model(stacked):
        return jax.tree.map(lambda a: a[0], stacked)  # [1, ...] -> [...]

    def batch_loss(params, x, y, _weights, mask):
        mix = params["alpha"] if learn_alpha else jax.lax.stop_gradient(params["alpha"])
        personal = interpolate(params["v"], jax.lax.stop_gradient(params["w"]), mix)
        ones = jnp.ones((1, x.shape[0]), jnp.float32)
        global_loss = trainer.per_sample_loss(trainer.apply_fn(one_model(params["w"]), x), y)
        personal_loss = trainer.per_sample_loss(trainer.apply_fn(one_model(personal), x), y)
        return mixture.weighted_batch_loss(global_loss[None], ones, mask) + mixture.weighted_batch_loss(
            personal_loss[None], ones, mask
        )

    def clip_alpha(params):
        return {**params, "alpha": jnp.clip(params["alpha"], 0.0, 1.0)}

    not_alpha = lambda params: {"w": True, "v": True, "alpha": False}  # noqa: E731
    apfl_trainer = dataclasses.replace(
        trainer,
        batch_loss=batch_loss,
        post_step=clip_alpha,
        direction=optax.masked(trainer.direction, not_alpha),
    )
    evaluate_personal = make_personal_evaluate(task, trainer)

    def init(data) -> PersonalState:
        state = local.init(data)
        start = one_model(state.params)  # the common initial model, leaves [1, ...]
        one_client = {"w": start, "v": start, "alpha": jnp.asarray(alpha, jnp.float32)}
        opt_state = broadcast_to_clients(apfl_trainer.direction.init(one_client), data.n_clients)
        opt_state = jax.tree.map(jnp.array, opt_state)  # materialise the broadcast
        personal = {"v": state.params, "alpha": jnp.full((data.n_clients,), alpha, jnp.float32)}
        clients = state.clients.replace(opt_state=opt_state)
        return PersonalState(params=personal, clients=clients, round=state.round, server=start)

    def round_fn(state: PersonalState, train: ClientSplit):
        key = round_key(seed, state.round)
        participates = sample_participants(key, train, 0, sampling_rate)
        n_clients = participates.shape[0]
        own = {"w": broadcast_to_clients(state.server, n_clients), **state.params}
        template = jax.tree.map(lambda a: a[0], own)
        ones = jnp.ones((1, train.y.shape[0]), jnp.float32)
        result = apfl_trainer.train_clients(
            template, state.clients.opt_state, state.clients.epochs_done, ones, participates,
            jnp.zeros(participates.shape), jax.random.fold_in(key, 1), train, own_params=own,
        )  # fmt: skip
        weights = jnp.where(participates, aggregation.client_weights(train.counts), 0.0)
        delta = aggregation.weighted_delta_sum(state.server, result.params["w"], weights)
        server = aggregation.apply_delta(state.server, delta)
        personal = {"v": result.params["v"], "alpha": result.params["alpha"]}
        clients = state.clients.replace(opt_state=result.opt_states, epochs_done=result.epochs_done)
        metrics = {
            "train_nll_start": jnp.zeros(()),
            "params_finite": all_finite((server, personal)),
            "participants": participates,
            "mean_alpha": personal["alpha"].mean(),
        }
        return PersonalState(personal, clients, state.round + 1, server), metrics

    def evaluate(state: PersonalState, split: ClientSplit):
        n_clients = state.params["alpha"].shape[0]
        models = interpolate(
            state.params["v"], broadcast_to_clients(state.server, n_clients), state.params["alpha"]
        )
        return evaluate_personal(models, state.clients.pi, split)

    return local._replace(init=init, round=round_fn, evaluate=evaluate)
