"""AFL: agnostic federated learning (Mohri, Sivek and Suresh, ICML 2019).

A minimax problem ``min_w max_{lambda in simplex} sum_t lambda_t L_t(w)``. Each round the clients
train from the global model as in FedAvg and the server aggregates with the weights ``lambda``
instead of ``n_t / n`` (descent on the lambda-weighted loss); then ``lambda`` takes a projected
gradient *ascent* step, ``lambda <- Proj_simplex(lambda + lr_lambda * L(w))``, with ``L_t(w)`` the
client's mean training loss at the model the round started from. ``lambda`` starts at
``n_t / n``, so with ``lr_lambda = 0`` AFL is FedAvg.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from fedem_jax.algorithms.base import Algorithm, Context, GlobalState, all_finite, round_metrics
from fedem_jax.algorithms.common import client_losses
from fedem_jax.algorithms.fedem import ServerHyperparams, make_fedem
from fedem_jax.algorithms.registry import Capabilities, Method, hyperparam
from fedem_jax.core import aggregation
from fedem_jax.data.federated import ClientSplit, FederatedData
from fedem_jax.errors import check


class AFLState(GlobalState):
    """The global model ``params [1, ...]`` and the adversarial client weights ``lam [C]``."""

    lam: jax.Array

    CLIENT_FIELDS: ClassVar[tuple[str, ...]] = ("clients", "lam")


@dataclasses.dataclass(frozen=True)
class AFLHyperparams:
    lr_lambda: float = hyperparam(0.01, "AFL: step size of the ascent on the client weights lambda")

    def validate(self) -> None:
        check(self.lr_lambda >= 0, f"--lr_lambda must be >= 0, got {self.lr_lambda}")


def project_to_simplex(v: jax.Array) -> jax.Array:
    """Euclidean projection of ``v`` onto ``{x >= 0, sum x = 1}`` (Duchi et al., ICML 2008)."""
    u = jnp.sort(v)[::-1]
    cumulative = jnp.cumsum(u) - 1.0
    k = jnp.arange(1, v.shape[0] + 1, dtype=v.dtype)
    support = u - cumulative / k > 0
    rho = jnp.max(jnp.where(support, jnp.arange(v.shape[0]), 0))
    theta = cumulative[rho] / (rho + 1).astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)


def make_afl(ctx: Context, hp: AFLHyperparams) -> Algorithm:
    fedavg = make_fedem(ctx, ServerHyperparams())
    layout = ctx.layout

    def init(data: FederatedData) -> AFLState:
        state = fedavg.init(data)
        lam = aggregation.client_weights(data.train.counts)
        return AFLState(params=state.params, clients=state.clients, round=state.round, lam=lam)

    def round_fn(state: AFLState, train: ClientSplit):
        key = ctx.round_key(state.round)
        participates = ctx.participants(key, train)
        losses = client_losses(ctx, state.params, train)
        weights = jnp.where(participates, state.lam, 0.0)
        result = ctx.update.train(
            state.clients,
            train,
            jax.random.fold_in(key, 1),
            participates,
            start=state.params,
            agg_weights=weights,
        )
        params = aggregation.apply_delta(state.params, layout.client_sum(result.delta_sum))
        # Padded clients of a mesh have lambda 0 and loss 0: the projection keeps them at 0.
        lam_all = project_to_simplex(layout.all_clients(state.lam + hp.lr_lambda * losses))
        new_state = state.replace(
            params=params, clients=result.client_state(state.clients), round=state.round + 1,
            lam=layout.own_block(lam_all),
        )  # fmt: skip
        metrics = round_metrics(
            ctx, participates, finite=all_finite(params), nll_sum=jnp.sum(losses * train.counts),
            n_samples=jnp.sum(train.counts), max_lambda=jnp.max(lam_all),
        )  # fmt: skip
        return new_state, metrics

    return fedavg._replace(init=init, round=round_fn)


_NO_DP = "the server reweights clients by their individual losses, which leave the clients unprotected"
METHODS = (
    Method("AFL", make_afl, "agnostic FL: minimax over client weights (Mohri et al., 2019)", AFLHyperparams,
           Capabilities(unseen=True, no_dp_why=_NO_DP)),
)  # fmt: skip
