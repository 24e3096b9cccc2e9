"""Baselines with one model per client, built on the FedEM engine (spec section 4).

- ``local`` (no communication): every client trains its own model on its own data only.
- ``FedAvg+``: FedAvg, plus ``tune_epochs`` local epochs of fine-tuning of a *copy* of the
  global model on each client before every evaluation; the global model is not changed.

Per-client models live on the client axis as dense arrays ``[C, 1, ...]`` (M = 1), never in
Python containers. Both evaluate each client with its own model.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from fedem_jax.algorithms.common import broadcast_to_clients
from fedem_jax.algorithms.fedem import ClientState, FedEM, FedEMState
from fedem_jax.core import mixture
from fedem_jax.core.local import LocalTrainer
from fedem_jax.data.federated import ClientSplit


@flax.struct.dataclass
class PersonalState:
    """Per-client models ``params`` (leaves ``[C, M, ...]``) and per-client optimizer state."""

    params: object
    clients: ClientState
    round: jax.Array
    server: object = None  # method-specific shared state (pFedMe, APFL: the global model)


def make_personal_evaluate(task, trainer: LocalTrainer):
    """Per-client ``(correct, loss_sum, count)`` of each client's own model (``[C, M, ...]``)."""

    def evaluate_personal(params, pi, split: ClientSplit):
        positions = jnp.arange(split.max_count)

        def one_client(args):
            client_params, client_pi, offset, count = args
            idx = offset + jnp.minimum(positions, jnp.maximum(count - 1, 0))
            mask = positions < count
            logits = trainer.learner_logits(client_params, split.x[idx])  # [M, n, out]
            probs = mixture.mixture_probs(client_pi, task.class_probs(logits))
            y = split.y[idx]
            correct = jnp.sum(jnp.where(mask, task.sample_correct(probs, y), 0.0))
            loss = jnp.sum(jnp.where(mask, task.sample_nll(probs, y), 0.0))
            return correct.astype(jnp.float32), loss

        correct, loss_sum = jax.lax.map(one_client, (params, pi, split.offsets, split.counts))
        return {"correct": correct, "loss_sum": loss_sum, "count": split.counts}

    return evaluate_personal


def _all_clients(train: ClientSplit) -> jax.Array:
    return train.global_ids < train.counts.shape[0]


def make_local(model, task, trainer: LocalTrainer, fedavg: FedEM, seed: int) -> FedEM:
    """No communication: each client runs ``local_epochs`` per round on its own model only."""
    base_key = jax.random.PRNGKey(seed)
    evaluate_personal = make_personal_evaluate(task, trainer)

    def init(data) -> PersonalState:
        shared = fedavg.init(data)  # same initial model on every client, as the reference
        n_clients = data.n_clients
        params = broadcast_to_clients(shared.params, n_clients)
        return PersonalState(params=params, clients=shared.clients, round=shared.round)

    def round_fn(state: PersonalState, train: ClientSplit):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base_key, 1), state.round), 1)
        ones = jnp.ones((1, train.y.shape[0]), jnp.float32)
        participates = _all_clients(train)
        template = jax.tree.map(lambda a: a[0], state.params)
        _, opt, epochs, params, _ = trainer.train_clients(
            template, state.clients.opt_state, state.clients.epochs_done, ones, participates,
            jnp.zeros(participates.shape), key, train, own_params=state.params,
        )  # fmt: skip
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
        clients = ClientState(pi=state.clients.pi, opt_state=opt, epochs_done=epochs)
        metrics = {"train_nll_start": jnp.zeros(()), "params_finite": finite, "participants": participates}
        return PersonalState(params=params, clients=clients, round=state.round + 1), metrics

    def evaluate(state: PersonalState, split: ClientSplit):
        return evaluate_personal(state.params, state.clients.pi, split)

    def no_unseen(*_):
        raise NotImplementedError("local has no shared model for unseen clients")

    return FedEM(init, round_fn, evaluate, no_unseen, prepare_eval=lambda state, train: state)


def make_fedavg_plus(task, trainer: LocalTrainer, fedavg: FedEM, tune_epochs: int, seed: int) -> FedEM:
    """FedAvg whose evaluation first fine-tunes a copy of the global model on every client."""
    base_key = jax.random.PRNGKey(seed)
    tuner = dataclasses.replace(trainer, local_epochs=tune_epochs)
    evaluate_personal = make_personal_evaluate(task, trainer)

    def prepare_eval(state: FedEMState, train: ClientSplit) -> PersonalState:
        key = jax.random.fold_in(jax.random.fold_in(base_key, 2), state.round)
        ones = jnp.ones((1, train.y.shape[0]), jnp.float32)
        participates = _all_clients(train)
        copies = jax.tree.map(lambda g: jnp.broadcast_to(g, (participates.shape[0], *g.shape)), state.params)
        tuned = tuner.train_clients(
            state.params, state.clients.opt_state, state.clients.epochs_done, ones, participates,
            jnp.zeros(participates.shape), key, train, own_params=copies,
        ).params  # fmt: skip
        return PersonalState(params=tuned, clients=state.clients, round=state.round)

    def evaluate(view: PersonalState, split: ClientSplit):
        return evaluate_personal(view.params, view.clients.pi, split)

    return fedavg._replace(evaluate=evaluate, prepare_eval=prepare_eval)
