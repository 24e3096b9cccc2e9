"""L2SGD: loopless local SGD for a mixture of global and local models (Hanzely and Richtárik,
"Federated Learning of a Mixture of Global and Local Models", 2020, Algorithm 1).

It minimises ``sum_t f_t(x_t) + (penalty / 2) sum_t ||x_t - x_bar||^2``. In the loopless
algorithm every iteration is, with probability ``1 - p``, a local gradient step on each
``x_t`` and, with probability ``p`` (``--comm_prob``), an averaging step
``x_t <- x_t - (lr * penalty / p) (x_t - x_bar)``. A federated round of fedem_jax is one
communication, so here a round is ``local_epochs`` of local SGD on each client's own model
followed by that averaging step, with ``x_bar = sum_t (n_t / n) x_t`` and the pull fraction
``min(1, lr_t * penalty / p)`` (``lr_t``: the client's scheduled learning rate). The reference's
averaging step was a no-op, which turned L2SGD into local training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedem_jax.algorithms.common import all_finite, round_key
from fedem_jax.algorithms.fedem import FedEM, sample_participants
from fedem_jax.algorithms.personalized import PersonalState
from fedem_jax.algorithms.pfedme import weighted_client_average
from fedem_jax.core import aggregation
from fedem_jax.core.local import LocalTrainer
from fedem_jax.data.federated import ClientSplit


def make_l2sgd(
    trainer: LocalTrainer, local: FedEM, *, seed: int, sampling_rate: float, penalty: float, comm_prob: float
) -> FedEM:
    """Built on ``local`` (its initial state and per-client evaluation)."""

    def round_fn(state: PersonalState, train: ClientSplit):
        key = round_key(seed, state.round)
        participates = sample_participants(key, train, 0, sampling_rate)
        ones = jnp.ones((1, train.y.shape[0]), jnp.float32)
        template = jax.tree.map(lambda a: a[0], state.params)
        result = trainer.train_clients(
            template, state.clients.opt_state, state.clients.epochs_done, ones, participates,
            jnp.zeros(participates.shape), jax.random.fold_in(key, 1), train, own_params=state.params,
        )  # fmt: skip
        average = weighted_client_average(result.params, aggregation.client_weights(train.counts))
        pull = jnp.minimum(1.0, trainer.schedule(state.clients.epochs_done) * penalty / comm_prob)
        pull = jnp.where(participates, pull, 0.0)

        def pull_toward_average(x, mean):
            p = pull.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
            return x - p * (x - mean[None])

        params = jax.tree.map(pull_toward_average, result.params, average)
        clients = state.clients.replace(opt_state=result.opt_states, epochs_done=result.epochs_done)
        metrics = {
            "train_nll_start": jnp.zeros(()),
            "params_finite": all_finite(params),
            "participants": participates,
        }
        return PersonalState(params, clients, state.round + 1), metrics

    return local._replace(round=round_fn)
