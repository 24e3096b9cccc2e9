"""Clustered federated learning (Sattler, Müller and Samek, IEEE TNNLS 2020).

Every client holds the model of its cluster (leaves ``[C, 1, ...]``; clients of a cluster hold
identical copies), and the cluster assignment is a dense ``[C]`` int array in the state.
Each round: every client trains its cluster's model locally; the server computes the Gram matrix
of the clients' updates, splits every cluster that meets Sattler's criterion
(:func:`fedem_jax.core.clustering.split_clusters`, with the per-client L2 norm taken over each
client's whole update: the reference took it over the wrong axis and so never split), then
gives each client the ``n_t``-weighted average of its (new) cluster's models.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from fedem_jax.algorithms.base import Algorithm, Context, PersonalState, all_finite, round_metrics
from fedem_jax.algorithms.common import evaluate_own_models, init_personal
from fedem_jax.algorithms.registry import Capabilities, Method, hyperparam
from fedem_jax.core import clustering
from fedem_jax.data.federated import ClientSplit, FederatedData
from fedem_jax.errors import check


class ClusteredState(PersonalState):
    """Each client's copy of its cluster's model ``params [C, 1, ...]``, its cluster ``cluster_id
    [C]`` and the number of clusters so far."""

    cluster_id: jax.Array  # [C] int32
    n_clusters: jax.Array  # scalar int32

    CLIENT_FIELDS: ClassVar[tuple[str, ...]] = ("clients", "params", "cluster_id")


@dataclasses.dataclass(frozen=True)
class ClusteredHyperparams:
    tol_1: float = hyperparam(0.4, "clustered: split when the mean update norm is below this")
    tol_2: float = hyperparam(1.6, "clustered: ... and the largest client update norm is above this")

    def validate(self) -> None:
        check(
            self.tol_1 >= 0 and self.tol_2 >= 0,
            f"--tol_1 and --tol_2 must be >= 0, got {self.tol_1}, {self.tol_2}",
        )


def make_clustered(ctx: Context, hp: ClusteredHyperparams) -> Algorithm:
    layout = ctx.layout

    def init(data: FederatedData) -> ClusteredState:
        state = init_personal(ctx, data)
        return ClusteredState(
            params=state.params, clients=state.clients, round=state.round,
            cluster_id=jnp.zeros((data.n_clients,), jnp.int32), n_clusters=jnp.ones((), jnp.int32),
        )  # fmt: skip

    def round_fn(state: ClusteredState, train: ClientSplit):
        key = ctx.round_key(state.round)
        participates = ctx.participants(key, train)  # validation: rate 1
        result = ctx.update.train(
            state.clients, train, jax.random.fold_in(key, 1), participates, own=state.params
        )
        updates = jax.tree.map(jnp.subtract, result.params, state.params)
        weights = jnp.where(participates, ctx.client_weights(train), 0.0)
        # The split sees every client: the updates' Gram matrix and the assignment, gathered.
        cluster_id_all, n_clusters = clustering.split_clusters(
            clustering.update_gram(layout.all_clients(updates)), layout.all_clients(weights),
            layout.all_clients(state.cluster_id), state.n_clusters, hp.tol_1, hp.tol_2,
        )  # fmt: skip
        cluster_id = layout.own_block(cluster_id_all)
        params = clustering.cluster_average(
            result.params, weights, cluster_id, cluster_id_all.shape[0], layout.client_sum
        )
        new_state = state.replace(
            params=params, clients=result.client_state(state.clients), round=state.round + 1,
            cluster_id=cluster_id, n_clusters=n_clusters,
        )  # fmt: skip
        metrics = round_metrics(ctx, participates, finite=all_finite(params), n_clusters=n_clusters)
        return new_state, metrics

    return Algorithm(init=init, round=round_fn, evaluate=evaluate_own_models(ctx))


_NO_DP = (
    "the server splits clusters by comparing the clients' individual updates, which it must see unclipped"
)
METHODS = (
    Method("clustered", make_clustered, "Clustered FL (Sattler et al., 2020)", ClusteredHyperparams,
           Capabilities(personal=True, full_participation=True, sweep_vmap=False, no_dp_why=_NO_DP)),
)  # fmt: skip
