"""pFedMe with Moreau envelopes (Dinh, Tran and Nguyen, "Personalized Federated Learning with
Moreau Envelopes", NeurIPS 2020, Algorithm 1): ``--method pFedMe-true``.

Client ``i`` keeps a personalised model ``theta_i`` and, during a round, a local copy ``w_i`` of
the global model. On every local batch it first solves the Moreau-envelope problem
``min_theta f_i(theta; batch) + (lambda / 2) ||theta - w_i||^2`` approximately with ``K`` gradient
steps of size ``personal_lr`` (from its current ``theta_i``), then moves the local model toward it:
``w_i <- w_i - lr * lambda * (w_i - theta_i)``. The server mixes
``w <- (1 - beta) w + beta * sum_{i in S} p_i w_i`` (``p_i = n_i / n_S`` over the participants;
Dinh et al. use the uniform mean). Each client is evaluated with its personalised ``theta_i``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from fedem_jax.algorithms.common import all_finite, broadcast_to_clients, round_key
from fedem_jax.algorithms.fedem import FedEM, sample_participants
from fedem_jax.algorithms.personalized import PersonalState, make_personal_evaluate
from fedem_jax.core import mixture
from fedem_jax.core.local import LocalTrainer
from fedem_jax.data.federated import ClientSplit


def make_pfedme_moreau(
    task,
    trainer: LocalTrainer,
    local: FedEM,
    *,
    seed: int,
    sampling_rate: float,
    lam: float,
    inner_steps: int,
    personal_lr: float,
    beta: float,
) -> FedEM:
    """Built on ``local`` (its initial model and per-client evaluation of ``theta``)."""

    def one_model(stacked):
        return jax.tree.map(lambda a: a[0], stacked)

    def batch_loss(theta, x, y, mask):
        losses = trainer.per_sample_loss(trainer.apply_fn(one_model(theta), x), y)
        return mixture.weighted_batch_loss(losses[None], jnp.ones((1, x.shape[0])), mask)

    def moreau_step(params, opt_state, x, y, _weights, mask, lr):
        w = params["w"]

        def inner(theta, _):
            grads = jax.grad(batch_loss)(theta, x, y, mask)
            return jax.tree.map(lambda t, g, a: t - personal_lr * (g + lam * (t - a)), theta, grads, w), None

        theta, _ = jax.lax.scan(inner, params["theta"], None, length=inner_steps)
        w = jax.tree.map(lambda a, t: a - lr * lam * (a - t), w, theta)
        return {"w": w, "theta": theta}, opt_state

    moreau_trainer = dataclasses.replace(trainer, custom_step=moreau_step, direction=optax.identity())
    evaluate_personal = make_personal_evaluate(task, trainer)

    def init(data) -> PersonalState:
        state = local.init(data)
        start = one_model(state.params)
        opt_state = broadcast_to_clients(
            moreau_trainer.direction.init({"w": start, "theta": start}), data.n_clients
        )
        clients = state.clients.replace(opt_state=opt_state)
        return PersonalState(params=state.params, clients=clients, round=state.round, server=start)

    def round_fn(state: PersonalState, train: ClientSplit):
        key = round_key(seed, state.round)
        participates = sample_participants(key, train, 0, sampling_rate)
        n_clients = participates.shape[0]
        own = {"w": broadcast_to_clients(state.server, n_clients), "theta": state.params}
        ones = jnp.ones((1, train.y.shape[0]), jnp.float32)
        result = moreau_trainer.train_clients(
            jax.tree.map(lambda a: a[0], own), state.clients.opt_state, state.clients.epochs_done, ones,
            participates, jnp.zeros(participates.shape), jax.random.fold_in(key, 1), train, own_params=own,
        )  # fmt: skip
        counts = jnp.where(participates, train.counts, 0).astype(jnp.float32)
        weights = counts / jnp.maximum(counts.sum(), 1.0)
        mean_local = jax.tree.map(
            lambda a: jnp.tensordot(weights.astype(a.dtype), a, axes=1), result.params["w"]
        )
        server = jax.tree.map(lambda g, m: (1 - beta) * g + beta * m, state.server, mean_local)
        clients = state.clients.replace(opt_state=result.opt_states, epochs_done=result.epochs_done)
        metrics = {
            "train_nll_start": jnp.zeros(()),
            "params_finite": all_finite((server, result.params["theta"])),
            "participants": participates,
        }
        return PersonalState(result.params["theta"], clients, state.round + 1, server), metrics

    def evaluate(state: PersonalState, split: ClientSplit):
        return evaluate_personal(state.params, state.clients.pi, split)

    return local._replace(init=init, round=round_fn, evaluate=evaluate)
