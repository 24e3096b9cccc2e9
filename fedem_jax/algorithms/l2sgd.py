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

import dataclasses

import jax
import jax.numpy as jnp

from fedem_jax.algorithms.base import Algorithm, Context, PersonalState, all_finite, round_metrics
from fedem_jax.algorithms.common import client_average, evaluate_own_models, init_personal
from fedem_jax.algorithms.pfedme import NO_DP_AVERAGES_OWN_MODELS
from fedem_jax.algorithms.registry import Capabilities, Method, hyperparam
from fedem_jax.data.federated import ClientSplit
from fedem_jax.errors import check


@dataclasses.dataclass(frozen=True)
class L2SGDHyperparams:
    penalty: float = hyperparam(1.0, "L2SGD: penalty lambda pulling local models to their mean")
    comm_prob: float = hyperparam(0.2, "L2SGD: probability p of an averaging step, in (0, 1]")

    def validate(self) -> None:
        check(self.penalty >= 0, f"--penalty must be >= 0, got {self.penalty}")
        check(0 < self.comm_prob <= 1, f"--comm_prob must be in (0, 1], got {self.comm_prob}")


def make_l2sgd(ctx: Context, hp: L2SGDHyperparams) -> Algorithm:
    def round_fn(state: PersonalState, train: ClientSplit):
        key = ctx.round_key(state.round)
        participates = ctx.participants(key, train)
        result = ctx.update.train(
            state.clients, train, jax.random.fold_in(key, 1), participates, own=state.params
        )
        average = client_average(ctx, result.params, ctx.client_weights(train))
        pull = jnp.minimum(1.0, ctx.update.schedule(state.clients.epochs_done) * hp.penalty / hp.comm_prob)
        pull = jnp.where(participates, pull, 0.0)

        def pull_toward_average(x, mean):
            p = pull.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
            return x - p * (x - mean[None])

        params = jax.tree.map(pull_toward_average, result.params, average)
        new_state = state.replace(
            params=params, clients=result.client_state(state.clients), round=state.round + 1
        )
        return new_state, round_metrics(ctx, participates, finite=all_finite(params))

    return Algorithm(
        init=lambda data: init_personal(ctx, data), round=round_fn, evaluate=evaluate_own_models(ctx)
    )


METHODS = (
    Method("L2SGD", make_l2sgd, "loopless local SGD toward the mean model (Hanzely et al., 2020)",
           L2SGDHyperparams, Capabilities(personal=True, no_dp_why=NO_DP_AVERAGES_OWN_MODELS)),
)  # fmt: skip
