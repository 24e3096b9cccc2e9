"""``local`` (spec section 4): no communication; every client trains its own model on its own data."""

from __future__ import annotations

import jax

from fedem_jax.algorithms.base import Algorithm, Context, PersonalState, all_finite, round_metrics
from fedem_jax.algorithms.common import evaluate_own_models, init_personal
from fedem_jax.algorithms.registry import Capabilities, Method
from fedem_jax.data.federated import ClientSplit


def make_local(ctx: Context, hp) -> Algorithm:
    del hp

    def round_fn(state: PersonalState, train: ClientSplit):
        key = jax.random.fold_in(ctx.round_key(state.round), 1)
        participates = ctx.real(train)
        result = ctx.update.train(state.clients, train, key, participates, own=state.params)
        new_state = state.replace(
            params=result.params, clients=result.client_state(state.clients), round=state.round + 1
        )
        return new_state, round_metrics(ctx, participates, finite=all_finite(result.params))

    return Algorithm(
        init=lambda data: init_personal(ctx, data), round=round_fn, evaluate=evaluate_own_models(ctx)
    )


METHODS = (
    Method(
        "local",
        make_local,
        "no communication: each client trains alone",
        capabilities=Capabilities(
            personal=True, no_dp_why="its clients send nothing: there is nothing to protect"
        ),
    ),
)
