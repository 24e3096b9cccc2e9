"""APFL: adaptive personalized federated learning (Deng, Kamani and Mahdavi, 2020, Algorithm 1).

Client ``t`` keeps a local model ``v_t`` and a mixing weight ``alpha_t``; its personalised model is
the parameter interpolation ``v_bar_t = alpha_t v_t + (1 - alpha_t) w``. On every local batch it
takes one step on the objective

    f(w_t) + f(alpha_t v_t + (1 - alpha_t) stop_grad(w_t)),

which is Deng et al.'s three updates in one gradient: ``w_t`` descends ``grad f(w_t)``; ``v_t``
descends ``alpha_t grad f(v_bar_t)``; ``alpha_t`` (if learned, ``--learn_alpha``) descends
``<v_t - w_t, grad f(v_bar_t)>`` and is clipped to ``[0, 1]``. The server averages the ``w_t``
(``n_t / n`` weights). Weight decay and momentum apply to ``w`` and ``v``, not to ``alpha``.
The reference's interpolation was a no-op and the method unreachable from its CLI.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
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
    evaluate_personal,
    global_model_step,
    init_with_global,
    with_adaptive_clip,
)  # fmt: skip
from fedem_jax.algorithms.registry import Capabilities, Method, hyperparam
from fedem_jax.data.federated import ClientSplit, FederatedData
from fedem_jax.errors import check


@dataclasses.dataclass(frozen=True)
class APFLHyperparams:
    apfl_alpha: float = hyperparam(0.5, "APFL: initial interpolation weight of the local model, in [0, 1]")
    learn_alpha: bool = hyperparam(True, "APFL: learn alpha per client")

    def validate(self) -> None:
        check(0 <= self.apfl_alpha <= 1, f"--apfl_alpha must be in [0, 1], got {self.apfl_alpha}")


def interpolate(v, w, alpha):
    """``alpha v + (1 - alpha) w``; ``alpha`` broadcast over the leading axes of ``v``."""

    def leaf(vv, ww):
        a = alpha.reshape(alpha.shape + (1,) * (vv.ndim - alpha.ndim)).astype(vv.dtype)
        return a * vv + (1 - a) * ww

    return jax.tree.map(leaf, v, w)


def apfl_update(ctx: Context, learn_alpha: bool):
    """The local update on ``{"w", "v", "alpha"}``: one gradient of ``f(w) + f(v_bar)``."""
    update = ctx.update

    def batch_loss(params, x, y, _weights, mask):
        mix = params["alpha"] if learn_alpha else jax.lax.stop_gradient(params["alpha"])
        personal = interpolate(params["v"], jax.lax.stop_gradient(params["w"]), mix)
        return update.one_model_loss(params["w"], x, y, mask) + update.one_model_loss(personal, x, y, mask)

    def clip_alpha(params):
        return {**params, "alpha": jnp.clip(params["alpha"], 0.0, 1.0)}

    not_alpha = lambda params: {"w": True, "v": True, "alpha": False}  # noqa: E731
    return dataclasses.replace(
        update,
        batch_loss=batch_loss,
        post_step=clip_alpha,
        direction=optax.masked(update.direction, not_alpha),
    )


def make_apfl(ctx: Context, hp: APFLHyperparams) -> Algorithm:
    """Under ``--dp_clip`` only ``w``'s update leaves a client: it is clipped, and the server's sum
    noised (:func:`fedem_jax.algorithms.common.global_model_step`); ``v`` and ``alpha`` stay local."""
    update = apfl_update(ctx, hp.learn_alpha)

    def init(data: FederatedData) -> PersonalGlobalState:
        """``params = {"v": local models [C, 1, ...], "alpha": [C]}``; ``global_model = w [1, ...]``."""
        alpha = jnp.asarray(hp.apfl_alpha, jnp.float32)
        state = init_with_global(ctx, data, lambda w: update.direction.init({"w": w, "v": w, "alpha": alpha}))
        personal = {"v": state.params, "alpha": jnp.full((data.n_clients,), hp.apfl_alpha, jnp.float32)}
        return with_adaptive_clip(ctx, state.replace(params=personal))

    def round_fn(state: PersonalGlobalState, train: ClientSplit):
        key = ctx.round_key(state.round)
        participates = ctx.participants(key, train)
        own = {"w": broadcast_to_clients(state.global_model, participates.shape[0]), **state.params}
        result = update.train(state.clients, train, jax.random.fold_in(key, 1), participates, own=own)
        server, fields, extra = global_model_step(ctx, state, result.params["w"], participates, train, key)
        personal = {"v": result.params["v"], "alpha": result.params["alpha"]}
        real = ctx.real(train)
        mean_alpha = ctx.layout.client_sum(jnp.where(real, personal["alpha"], 0.0).sum()) / ctx.n_clients
        new_state = state.replace(
            params=personal,
            clients=result.client_state(state.clients),
            round=state.round + 1,
            global_model=server,
            **fields,
        )
        finite = all_finite((server, personal))
        return new_state, round_metrics(ctx, participates, finite=finite, mean_alpha=mean_alpha, **extra)

    def evaluate(state: PersonalGlobalState, split: ClientSplit):
        n_clients = state.params["alpha"].shape[0]
        models = interpolate(
            state.params["v"], broadcast_to_clients(state.global_model, n_clients), state.params["alpha"]
        )
        return evaluate_personal(ctx, models, state.clients.pi, split)

    return Algorithm(init=init, round=round_fn, evaluate=evaluate)


METHODS = (
    Method("APFL", make_apfl, "adaptive personalized FL (Deng et al., 2020)", APFLHyperparams,
           Capabilities(personal=True, batch_norm=False, dp=True, dp_adaptive=True, cohort=True)),
)  # fmt: skip
