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

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fedem_jax.algorithms.base import (
    Algorithm,
    Context,
    PersonalState,
    all_finite,
    padded_mixing,
    round_metrics,
)
from fedem_jax.algorithms.common import evaluate_own_models, init_personal, personal_sample_losses
from fedem_jax.algorithms.registry import Capabilities, Method, hyperparam
from fedem_jax.core import mixture
from fedem_jax.data.federated import ClientSplit
from fedem_jax.errors import check


@dataclasses.dataclass(frozen=True)
class DFedEMHyperparams:
    graph_p: float = hyperparam(0.5, "D-FedEM: edge probability of the Erdos-Renyi graph", sweep=False)

    def validate(self) -> None:
        check(0 < self.graph_p <= 1, f"--graph_p must be in (0, 1], got {self.graph_p}")


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


def make_dfedem(ctx: Context, hp: DFedEMHyperparams, mixing: np.ndarray | None = None) -> Algorithm:
    """All clients take part in every round; gossip with ``mixing`` (default: Metropolis-Hastings
    weights on the seeded graph of the data seed)."""
    if mixing is None:
        mixing = mixing_matrix(ctx.n_clients, hp.graph_p, ctx.data_seed)
    layout = ctx.layout

    def round_fn(state: PersonalState, train: ClientSplit):
        key = ctx.round_key(state.round)
        participates = ctx.participants(key, train)  # validation: rate 1
        losses = personal_sample_losses(ctx.update, state.params, train)  # [M, N], own components
        log_pi = jnp.log(state.clients.pi)[train.client_id].T
        q = mixture.e_step(log_pi, losses)
        pi = mixture.update_pi_all_clients(q, train.client_id, train.counts)
        result = ctx.update.train(
            state.clients, train, jax.random.fold_in(key, 1), participates, own=state.params, weights=q
        )
        # Gossip: this block's rows of W against every client's models.
        rows = padded_mixing(mixing, train.global_ids, layout.all_clients(train.global_ids))
        everyone = layout.all_clients(result.params)
        params = jax.tree.map(lambda a: jnp.tensordot(rows.astype(a.dtype), a, axes=1), everyone)
        valid = train.client_id < train.counts.shape[0]
        nll = jnp.where(valid, mixture.mixture_nll_from_losses(log_pi, losses), 0.0)
        new_state = state.replace(
            params=params, clients=result.client_state(state.clients, pi=pi), round=state.round + 1
        )
        metrics = round_metrics(
            ctx, participates, finite=all_finite(params), nll_sum=nll.sum(), n_samples=valid.sum()
        )
        return new_state, metrics

    return Algorithm(
        init=lambda data: init_personal(ctx, data), round=round_fn, evaluate=evaluate_own_models(ctx)
    )


_NO_DP = (
    "clients exchange models with their neighbours and no server adds noise: central DP does not "
    "apply (it would need local DP)"
)
_CAPS = Capabilities(components=True, personal=True, full_participation=True, no_dp_why=_NO_DP)
METHODS = (
    Method("D-FedEM", make_dfedem, "FedEM without a server: gossip on a random graph (Marfoq et al., 2021)",
           DFedEMHyperparams, _CAPS),
)  # fmt: skip
