"""FedAvg+ (spec section 4): FedAvg, plus ``tune_epochs`` local epochs of fine-tuning of a *copy* of
the global model on each client before every evaluation; the global model is not changed."""

from __future__ import annotations

import dataclasses

import jax

from fedem_jax.algorithms.base import Algorithm, Context, GlobalState, PersonalState, broadcast_to_clients
from fedem_jax.algorithms.common import evaluate_own_models
from fedem_jax.algorithms.fedem import ServerHyperparams, make_fedem
from fedem_jax.algorithms.registry import Capabilities, Method, hyperparam
from fedem_jax.data.federated import ClientSplit
from fedem_jax.errors import check


@dataclasses.dataclass(frozen=True)
class FedAvgPlusHyperparams(ServerHyperparams):
    tune_epochs: int = hyperparam(1, "FedAvg+: local fine-tuning epochs before each evaluation")

    def validate(self) -> None:
        super().validate()
        check(self.tune_epochs >= 1, f"--tune_epochs must be >= 1, got {self.tune_epochs}")


def make_fedavg_plus(ctx: Context, hp: FedAvgPlusHyperparams) -> Algorithm:
    fedavg = make_fedem(ctx, hp)
    tuner = dataclasses.replace(ctx.update, local_epochs=hp.tune_epochs)
    base_key = jax.random.PRNGKey(ctx.seed)

    def prepare_eval(state: GlobalState, train: ClientSplit) -> PersonalState:
        key = jax.random.fold_in(jax.random.fold_in(base_key, 2), state.round)
        copies = broadcast_to_clients(state.params, train.counts.shape[0])
        tuned = tuner.train(state.clients, train, key, ctx.real(train), own=copies).params
        return PersonalState(params=tuned, clients=state.clients, round=state.round)

    return fedavg._replace(evaluate=evaluate_own_models(ctx), prepare_eval=prepare_eval, evaluate_unseen=None)


METHODS = (
    Method("FedAvg+", make_fedavg_plus, "FedAvg, fine-tuned on each client before evaluation",
           FedAvgPlusHyperparams, Capabilities(personal=True, dp=True, dp_adaptive=True, cohort=True)),
)  # fmt: skip
