"""Clustered federated learning (Sattler, Müller and Samek, IEEE TNNLS 2020).

Every client holds the model of its cluster (leaves ``[C, 1, ...]``; clients of a cluster hold
identical copies), and the cluster assignment is a dense ``[C]`` int array in the server state.
Each round: every client trains its cluster's model locally; the server computes the Gram matrix
of the clients' updates, splits every cluster that meets Sattler's criterion
(:func:`fedem_jax.core.clustering.split_clusters`, with the per-client L2 norm taken over each
client's whole update: the reference took it over the wrong axis and so never split), then
gives each client the ``n_t``-weighted average of its (new) cluster's models.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from fedem_jax.algorithms.common import all_finite, round_key
from fedem_jax.algorithms.fedem import FedEM, sample_participants
from fedem_jax.algorithms.personalized import PersonalState
from fedem_jax.core import aggregation, clustering
from fedem_jax.core.local import LocalTrainer
from fedem_jax.data.federated import ClientSplit


@flax.struct.dataclass
class Clusters:
    cluster_id: jax.Array  # [C] int32
    n_clusters: jax.Array  # scalar int32


def make_clustered(trainer: LocalTrainer, local: FedEM, *, seed: int, tol_1: float, tol_2: float) -> FedEM:
    """Built on ``local`` (its initial state and per-client evaluation); full participation."""

    def init(data) -> PersonalState:
        state = local.init(data)
        clusters = Clusters(jnp.zeros((data.n_clients,), jnp.int32), jnp.ones((), jnp.int32))
        return state.replace(server=clusters)

    def round_fn(state: PersonalState, train: ClientSplit):
        key = round_key(seed, state.round)
        participates = sample_participants(key, train, 0, 1.0)
        ones = jnp.ones((1, train.y.shape[0]), jnp.float32)
        template = jax.tree.map(lambda a: a[0], state.params)
        result = trainer.train_clients(
            template, state.clients.opt_state, state.clients.epochs_done, ones, participates,
            jnp.zeros(participates.shape), jax.random.fold_in(key, 1), train, own_params=state.params,
        )  # fmt: skip
        updates = jax.tree.map(jnp.subtract, result.params, state.params)
        weights = jnp.where(participates, aggregation.client_weights(train.counts), 0.0)
        cluster_id, n_clusters = clustering.split_clusters(
            clustering.update_gram(updates),
            weights,
            state.server.cluster_id,
            state.server.n_clusters,
            tol_1,
            tol_2,
        )
        params = clustering.cluster_average(result.params, weights, cluster_id)
        clients = state.clients.replace(opt_state=result.opt_states, epochs_done=result.epochs_done)
        metrics = {
            "train_nll_start": jnp.zeros(()),
            "params_finite": all_finite(params),
            "participants": participates,
            "n_clusters": n_clusters,
        }
        new_state = PersonalState(params, clients, state.round + 1, Clusters(cluster_id, n_clusters))
        return new_state, metrics

    return local._replace(init=init, round=round_fn)
