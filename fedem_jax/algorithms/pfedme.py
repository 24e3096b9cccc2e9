"""pFedMe as the reference implements it (spec section 4).

Each client keeps its own model and trains it with ``prox_sgd`` (momentum 0, weight decay, and
``mu * (theta_t - w)`` added to every gradient), where the anchor ``w`` is the average of *all*
client models, ``w = sum_t (n_t / n) theta_t``. The average is recomputed on the server every
round but never copied into the clients: each client evaluates its own model.

This is not the Moreau-envelope algorithm of Dinh, Tran and Nguyen ("Personalized Federated
Learning with Moreau Envelopes", NeurIPS 2020); it is the method the FedEM paper's reference
code ran under that name.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedem_jax.algorithms.common import all_finite, round_key
from fedem_jax.algorithms.fedem import FedEM, sample_participants
from fedem_jax.algorithms.personalized import PersonalState
from fedem_jax.core import aggregation
from fedem_jax.core.local import LocalTrainer
from fedem_jax.data.federated import ClientSplit


def weighted_client_average(client_params, weights):
    """``sum_t w_t theta_t`` for leaves ``[C, ...]``."""
    return jax.tree.map(lambda a: jnp.tensordot(weights.astype(a.dtype), a, axes=1), client_params)


def make_pfedme(trainer: LocalTrainer, local: FedEM, *, seed: int, sampling_rate: float) -> FedEM:
    """``trainer`` must carry the proximal coefficient (``prox_mu``); ``local`` is the ``local``
    method, whose initial state (the same model on every client) and evaluation are reused."""
    if trainer.prox_mu <= 0:
        raise ValueError("pFedMe needs trainer.prox_mu > 0")

    def init(data) -> PersonalState:
        state = local.init(data)
        return state.replace(server=jax.tree.map(lambda a: a[0], state.params))

    def round_fn(state: PersonalState, train: ClientSplit):
        key = round_key(seed, state.round)
        participates = sample_participants(key, train, 0, sampling_rate)
        ones = jnp.ones((1, train.y.shape[0]), jnp.float32)
        result = trainer.train_clients(
            state.server, state.clients.opt_state, state.clients.epochs_done, ones, participates,
            jnp.zeros(participates.shape), jax.random.fold_in(key, 1), train,
            own_params=state.params, anchor=state.server,
        )  # fmt: skip
        average = weighted_client_average(result.params, aggregation.client_weights(train.counts))
        clients = state.clients.replace(opt_state=result.opt_states, epochs_done=result.epochs_done)
        metrics = {
            "train_nll_start": jnp.zeros(()),
            "params_finite": all_finite(result.params),
            "participants": participates,
        }
        new_state = PersonalState(
            params=result.params, clients=clients, round=state.round + 1, server=average
        )
        return new_state, metrics

    return local._replace(init=init, round=round_fn)
