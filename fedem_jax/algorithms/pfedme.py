"""pFedMe as the reference implements it (spec section 4).

Each client keeps its own model and trains it with ``prox_sgd`` (momentum 0, weight decay, and
``mu * (theta_t - w)`` added to every gradient), where the anchor ``w`` is the average of *all*
client models, ``w = sum_t (n_t / n) theta_t``. The average is recomputed on the server every
round but never copied into the clients: each client evaluates its own model.

This is not the Moreau-envelope algorithm of Dinh, Tran and Nguyen ("Personalized Federated
Learning with Moreau Envelopes", NeurIPS 2020): that one is ``pFedMe-true``.
"""

from __future__ import annotations

import dataclasses

import jax

from fedem_jax.algorithms.base import (
    Algorithm,
    Context,
    PersonalGlobalState,
    all_finite,
    round_metrics,
)
from fedem_jax.algorithms.common import client_average, evaluate_own_models, init_with_global
from fedem_jax.algorithms.registry import Capabilities, Method, hyperparam
from fedem_jax.data.federated import ClientSplit, FederatedData
from fedem_jax.errors import check


@dataclasses.dataclass(frozen=True)
class PFedMeHyperparams:
    mu: float = hyperparam(0.01, "FedProx, pFedMe: proximal coefficient")

    def validate(self) -> None:
        check(self.mu > 0, f"--mu must be > 0 for pFedMe, got {self.mu}")


def make_pfedme(ctx: Context, hp: PFedMeHyperparams) -> Algorithm:
    update = dataclasses.replace(ctx.update, prox_mu=hp.mu)

    def init(data: FederatedData) -> PersonalGlobalState:
        """Per-client models ``params [C, 1, ...]``; their weighted average ``global_model [1, ...]``."""
        return init_with_global(ctx, data)

    def round_fn(state: PersonalGlobalState, train: ClientSplit):
        key = ctx.round_key(state.round)
        participates = ctx.participants(key, train)
        result = update.train(
            state.clients,
            train,
            jax.random.fold_in(key, 1),
            participates,
            own=state.params,
            anchor=state.global_model,
        )
        average = client_average(ctx, result.params, ctx.client_weights(train))
        new_state = state.replace(
            params=result.params,
            clients=result.client_state(state.clients),
            round=state.round + 1,
            global_model=average,
        )
        return new_state, round_metrics(ctx, participates, finite=all_finite(result.params))

    return Algorithm(init=init, round=round_fn, evaluate=evaluate_own_models(ctx))


# pFedMe's and L2SGD's reason to refuse --dp_clip.
NO_DP_AVERAGES_OWN_MODELS = (
    "the server averages every client's own model, sampled this round or not (it holds them all), "
    "not a sampled cohort's updates of one shared model"
)
METHODS = (
    Method("pFedMe", make_pfedme, "the reference's pFedMe: personal models, prox-SGD toward their average",
           PFedMeHyperparams,
           Capabilities(personal=True, batch_norm=True, plain_sgd=True, no_dp_why=NO_DP_AVERAGES_OWN_MODELS)),
)  # fmt: skip
