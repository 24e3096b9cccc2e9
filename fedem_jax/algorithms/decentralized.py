"""D-FedEM: FedEM without a server (Marfoq et al., NeurIPS 2021, section 3.4 and Algorithm 2).

Every client holds its own copy of the M components (leaves ``[C, M, ...]``). A round is the
FedEM client steps (E-step with the client's own components, ``pi`` update, local epochs of the
M-step), then gossip: ``theta_t <- sum_s W_ts theta_s``, one matrix product over the client axis.

``W`` is doubly stochastic on a seeded Erdős–Rényi graph (edge probability ``--graph_p``, 0.5 as
in the reference; redrawn until connected) with Metropolis–Hastings weights
``W_ts = 1 / (1 + max(deg_t, deg_s))`` on edges and the rest of each row on the diagonal. They are
symmetric and doubly stochastic by construction, keep the self-weights the reference forbade, and
need no SDP solver (the reference's fastest-mixing weights do): on a connected graph with positive
self-weights the gossip converges to the average.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedem_jax.algorithms.common import all_finite, personal_sample_losses, round_key
from fedem_jax.algorithms.fedem import FedEM, sample_participants
from fedem_jax.algorithms.personalized import PersonalState
from fedem_jax.core import mixture
from fedem_jax.core.local import LocalTrainer
from fedem_jax.data.federated import ClientSplit


def _connected(adjacency: np.ndarray) -> bool:
    seen, frontier = {0}, [0]
    while frontier:
        node = frontier.pop()
        for other in np.flatnonzero(adjacency[node]):
            if other not in seen:
                seen.add(int(other))
                frontier.append(int(other))
    return len(seen) == len(adjacency)


def erdos_renyi_graph(n: int, p: float, seed: int, max_tries: int = 1000) -> np.ndarray:
    """Symmetric ``[n, n]`` bool adjacency (no self-loops) of a connected G(n, p) graph."""
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        upper = np.triu(rng.random((n, n)) < p, k=1)
        adjacency = upper | upper.T
        if n == 1 or _connected(adjacency):
            return adjacency
    raise ValueError(
        f"no connected Erdos-Renyi graph with n={n}, p={p} in {max_tries} draws; raise --graph_p"
    )


def metropolis_hastings_weights(adjacency: np.ndarray) -> np.ndarray:
    """Doubly stochastic, symmetric mixing matrix of a graph (float32)."""
    degree = adjacency.sum(axis=1)
    weights = np.where(adjacency, 1.0 / (1.0 + np.maximum(degree[:, None], degree[None, :])), 0.0)
    weights[np.diag_indices_from(weights)] = 1.0 - weights.sum(axis=1)
    return weights.astype(np.float32)


def mixing_matrix(n_clients: int, graph_p: float, seed: int) -> np.ndarray:
    return metropolis_hastings_weights(erdos_renyi_graph(n_clients, graph_p, seed))


def make_dfedem(trainer: LocalTrainer, local: FedEM, *, seed: int, mixing: np.ndarray) -> FedEM:
    """``local`` must have been built on the M-component FedEM (same init on every client);
    ``mixing`` is the ``[C, C]`` gossip matrix. All clients take part in every round."""
    mixing = jnp.asarray(mixing)

    def round_fn(state: PersonalState, train: ClientSplit):
        key = round_key(seed, state.round)
        participates = sample_participants(key, train, 0, 1.0)
        losses = personal_sample_losses(trainer, state.params, train)  # [M, N], own components
        log_pi = jnp.log(state.clients.pi)[train.client_id].T
        q = mixture.e_step(log_pi, losses)
        pi = mixture.update_pi_all_clients(q, train.client_id, train.counts)
        template = jax.tree.map(lambda a: a[0], state.params)
        result = trainer.train_clients(
            template, state.clients.opt_state, state.clients.epochs_done, q, participates,
            jnp.zeros(participates.shape), jax.random.fold_in(key, 1), train, own_params=state.params,
        )  # fmt: skip
        params = jax.tree.map(lambda a: jnp.tensordot(mixing.astype(a.dtype), a, axes=1), result.params)
        clients = state.clients.replace(pi=pi, opt_state=result.opt_states, epochs_done=result.epochs_done)
        metrics = {
            "train_nll_start": mixture.mixture_nll_from_losses(log_pi, losses).mean(),
            "params_finite": all_finite(params),
            "participants": participates,
        }
        return PersonalState(params, clients, state.round + 1), metrics

    return local._replace(round=round_fn)
