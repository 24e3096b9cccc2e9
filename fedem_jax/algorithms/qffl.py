"""q-FFL / q-FedAvg: fair resource allocation in federated learning (Li, Sanjabi, Beirami and Smith,
ICLR 2020, Algorithm 3), the update as published.

Each participating client ``k`` starts from ``w``, measures its loss ``F_k = F_k(w)`` (mean
training loss) and runs the local epochs to ``w_k``. With ``L = 1 / lr`` (the client's current
learning rate) and ``Delta w_k = L (w - w_k)``:

    Delta_k = F_k^q Delta w_k,     h_k = q F_k^(q-1) ||Delta w_k||^2 + L F_k^q,
    w <- w - sum_k Delta_k / sum_k h_k.

``q = 0`` is FedAvg with uniform client weights; larger ``q`` weights high-loss clients more.
The reference's version of this update was always zero.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fedem_jax.algorithms.base import Algorithm, Context, GlobalState, all_finite, round_metrics
from fedem_jax.algorithms.common import client_losses
from fedem_jax.algorithms.fedem import ServerHyperparams, make_fedem
from fedem_jax.algorithms.registry import Capabilities, Method, hyperparam
from fedem_jax.core import aggregation
from fedem_jax.core.optim import is_zero
from fedem_jax.data.federated import ClientSplit
from fedem_jax.errors import check


@dataclasses.dataclass(frozen=True)
class QFFLHyperparams:
    q: float = hyperparam(1.0, "q-FFL: fairness exponent q >= 0")

    def validate(self) -> None:
        check(self.q >= 0, f"--q must be >= 0, got {self.q}")


def make_qffl(ctx: Context, hp: QFFLHyperparams) -> Algorithm:
    fedavg = make_fedem(ctx, ServerHyperparams())
    update, layout, q = ctx.update, ctx.layout, hp.q

    def round_fn(state: GlobalState, train: ClientSplit):
        key = ctx.round_key(state.round)
        participates = ctx.participants(key, train)
        losses = client_losses(ctx, state.params, train)
        losses = jnp.maximum(losses, 1e-10)
        lipschitz = 1.0 / update.schedule(state.clients.epochs_done)  # [C]
        scaled = jnp.where(participates, lipschitz * losses**q, 0.0)  # L F^q
        result = update.train(
            state.clients,
            train,
            jax.random.fold_in(key, 1),
            participates,
            start=state.params,
            agg_weights=scaled,
        )
        # result.delta_sum = sum_k L F_k^q (w_k - w) = -sum_k Delta_k
        curvature = 0.0 if is_zero(q) else jnp.where(q > 0, q * losses ** (q - 1), 0.0)
        curvature = curvature * lipschitz**2 * result.delta_sq_norm
        h_sum = layout.client_sum(jnp.sum(jnp.where(participates, curvature + scaled, 0.0)))
        step = jax.tree.map(lambda d: d / h_sum.astype(d.dtype), layout.client_sum(result.delta_sum))
        params = aggregation.apply_delta(state.params, step)
        new_state = state.replace(
            params=params, clients=result.client_state(state.clients), round=state.round + 1
        )
        metrics = round_metrics(
            ctx, participates, finite=all_finite(params), nll_sum=jnp.sum(losses * train.counts),
            n_samples=jnp.sum(train.counts),
        )  # fmt: skip
        return new_state, metrics

    return fedavg._replace(round=round_fn)


_NO_DP = "the server weights each update by the client's own loss, which leaves the client unprotected"
METHODS = (
    Method("q-FFL", make_qffl, "fair aggregation with exponent q (Li et al., 2020)", QFFLHyperparams,
           Capabilities(unseen=True, no_dp_why=_NO_DP, cohort=True)),
)  # fmt: skip
