"""AFL: agnostic federated learning (Mohri, Sivek and Suresh, ICML 2019).

A minimax problem ``min_w max_{lambda in simplex} sum_t lambda_t L_t(w)``. Each round the clients
train from the global model as in FedAvg and the server aggregates with the weights ``lambda``
instead of ``n_t / n`` (descent on the lambda-weighted loss); then ``lambda`` takes a projected
gradient *ascent* step, ``lambda <- Proj_simplex(lambda + lr_lambda * L(w))``, with ``L_t(w)`` the
client's mean training loss at the model the round started from. ``lambda`` starts at
``n_t / n``, so with ``lr_lambda = 0`` AFL is FedAvg.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedem_jax.algorithms.common import all_finite, client_means, round_key, shared_sample_losses
from fedem_jax.algorithms.fedem import FedEM, FedEMState, sample_participants
from fedem_jax.core import aggregation
from fedem_jax.core.local import LocalTrainer
from fedem_jax.data.federated import ClientSplit


def project_to_simplex(v: jax.Array) -> jax.Array:
    """Euclidean projection of ``v`` onto ``{x >= 0, sum x = 1}`` (Duchi et al., ICML 2008)."""
    u = jnp.sort(v)[::-1]
    cumulative = jnp.cumsum(u) - 1.0
    k = jnp.arange(1, v.shape[0] + 1, dtype=v.dtype)
    support = u - cumulative / k > 0
    rho = jnp.max(jnp.where(support, jnp.arange(v.shape[0]), 0))
    theta = cumulative[rho] / (rho + 1).astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)


def make_afl(
    trainer: LocalTrainer,
    fedavg: FedEM,
    *,
    seed: int,
    sampling_rate: float,
    lr_lambda: float,
    eval_chunk: int,
) -> FedEM:
    """Built on ``fedavg`` (its initial state, evaluation and unseen-client evaluation)."""

    def init(data) -> FedEMState:
        state = fedavg.init(data)
        return state.replace(server=aggregation.client_weights(data.train.counts))

    def round_fn(state: FedEMState, train: ClientSplit):
        key = round_key(seed, state.round)
        participates = sample_participants(key, train, 0, sampling_rate)
        losses = client_means(shared_sample_losses(trainer, state.params, train, eval_chunk)[0], train)
        weights = jnp.where(participates, state.server, 0.0)
        ones = jnp.ones((1, train.y.shape[0]), jnp.float32)
        result = trainer.train_clients(
            state.params, state.clients.opt_state, state.clients.epochs_done, ones, participates,
            weights, jax.random.fold_in(key, 1), train,
        )  # fmt: skip
        params = aggregation.apply_delta(state.params, result.delta_sum)
        lam = project_to_simplex(state.server + lr_lambda * losses)
        clients = state.clients.replace(opt_state=result.opt_states, epochs_done=result.epochs_done)
        metrics = {
            "train_nll_start": jnp.sum(losses * train.counts) / jnp.sum(train.counts),
            "params_finite": all_finite(params),
            "participants": participates,
            "max_lambda": jnp.max(lam),
        }
        return FedEMState(params, clients, state.round + 1, lam), metrics

    return fedavg._replace(init=init, round=round_fn)
