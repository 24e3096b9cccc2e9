"""Ditto: fair and robust federated learning through personalization (Li, Hu, Beirami and Smith,
ICML 2021, Algorithm 1).

The global model ``w`` is trained as in FedAvg. Every client also keeps a personal model ``v_k``
and, in the same local epochs, takes steps on its regularised objective

    f_k(v_k) + (lambda / 2) ||v_k - w^t||^2,

where ``w^t`` is the global model of the round's start. Here one gradient of
``f_k(w) + f_k(v) + (lambda / 2) ||v - stop_grad(w^t)||^2`` on each batch does both updates (the
two models share no parameters, so the sum separates). Clients are evaluated with ``v_k``.
"""

from __future__ import annotations

import dataclasses

import jax
import optax

from fedem_jax.algorithms.base import (
    Algorithm,
    Context,
    PersonalGlobalState,
    all_finite,
    broadcast_to_clients,
    round_metrics,
)  # fmt: skip
from fedem_jax.algorithms.common import (
    evaluate_own_models,
    global_model_step,
    init_with_global,
    with_adaptive_clip,
)  # fmt: skip
from fedem_jax.algorithms.registry import Capabilities, Method, hyperparam
from fedem_jax.core.client_update import tree_sq_distance
from fedem_jax.data.federated import ClientSplit, FederatedData
from fedem_jax.errors import check


@dataclasses.dataclass(frozen=True)
class DittoHyperparams:
    ditto_lambda: float = hyperparam(0.1, "Ditto: pull lambda of the personal models toward the global one")

    def validate(self) -> None:
        check(self.ditto_lambda >= 0, f"--ditto_lambda must be >= 0, got {self.ditto_lambda}")


def ditto_update(ctx: Context, lam: float):
    """Local training of ``{"w", "v", "anchor"}``; ``anchor`` (``w^t``) is never changed."""
    update = ctx.update

    def batch_loss(params, x, y, _weights, mask):
        anchor = jax.lax.stop_gradient(params["anchor"])
        pull = tree_sq_distance(params["v"], anchor)
        return (
            update.one_model_loss(params["w"], x, y, mask)
            + update.one_model_loss(params["v"], x, y, mask)
            + 0.5 * lam * pull
        )

    trained = lambda params: {"w": True, "v": True, "anchor": False}  # noqa: E731
    # The anchor's gradient is 0 and, masked out of the optimizer, it gets no decay or momentum.
    return dataclasses.replace(
        update, batch_loss=batch_loss, direction=optax.masked(update.direction, trained)
    )


def make_ditto(ctx: Context, hp: DittoHyperparams) -> Algorithm:
    """Under ``--dp_clip`` only the global model's update leaves a client: it is clipped, and the
    server's sum noised (:func:`fedem_jax.algorithms.common.global_model_step`); the personal
    models stay local."""
    update = ditto_update(ctx, hp.ditto_lambda)

    def init(data: FederatedData) -> PersonalGlobalState:
        """Personal models ``params = v [C, 1, ...]``, the global model ``global_model = w [1, ...]``."""
        state = init_with_global(ctx, data, lambda w: update.direction.init({"w": w, "v": w, "anchor": w}))
        return with_adaptive_clip(ctx, state)

    def round_fn(state: PersonalGlobalState, train: ClientSplit):
        key = ctx.round_key(state.round)
        participates = ctx.participants(key, train)
        global_copies = broadcast_to_clients(state.global_model, participates.shape[0])
        own = {"w": global_copies, "v": state.params, "anchor": global_copies}
        result = update.train(state.clients, train, jax.random.fold_in(key, 1), participates, own=own)
        server, fields, extra = global_model_step(ctx, state, result.params["w"], participates, train, key)
        personal = result.params["v"]
        new_state = state.replace(params=personal, clients=result.client_state(state.clients),
                                  round=state.round + 1, global_model=server, **fields)  # fmt: skip
        return new_state, round_metrics(ctx, participates, finite=all_finite((server, personal)), **extra)

    return Algorithm(init=init, round=round_fn, evaluate=evaluate_own_models(ctx))


METHODS = (
    Method("Ditto", make_ditto, "personal models regularised toward the global one (Li et al., 2021)",
           DittoHyperparams, Capabilities(personal=True, batch_norm=False, dp=True, dp_adaptive=True,
                                          cohort=True)),
)  # fmt: skip
