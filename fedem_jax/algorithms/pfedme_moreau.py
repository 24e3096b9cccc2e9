"""pFedMe with Moreau envelopes (Dinh, Tran and Nguyen, "Personalized Federated Learning with
Moreau Envelopes", NeurIPS 2020, Algorithm 1): ``--method pFedMe-true``.

Client ``i`` keeps a personalised model ``theta_i`` and, during a round, a local copy ``w_i`` of
the global model. On every local batch it first solves the Moreau-envelope problem
``min_theta f_i(theta; batch) + (lambda / 2) ||theta - w_i||^2`` approximately with ``K`` gradient
steps of size ``personal_lr`` (from its current ``theta_i``), then moves the local model toward it:
``w_i <- w_i - lr * lambda * (w_i - theta_i)``. The server mixes
``w <- (1 - beta) w + beta * sum_{i in S} p_i w_i`` (``p_i = n_i / n_S`` over the participants;
Dinh et al. use the uniform mean). Each client is evaluated with its personalised ``theta_i``.
Under ``--dp_clip`` the server's step is ``w <- w + beta * (noised sum of clipped updates
w_i - w)`` with the mechanism's fixed weights; ``theta_i`` never leaves the client.
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
    client_average,
    evaluate_own_models,
    global_model_step,
    init_with_global,
    with_adaptive_clip,
)  # fmt: skip
from fedem_jax.algorithms.registry import Capabilities, Method, hyperparam
from fedem_jax.data.federated import ClientSplit, FederatedData
from fedem_jax.errors import check


@dataclasses.dataclass(frozen=True)
class MoreauHyperparams:
    pfedme_lambda: float = hyperparam(15.0, "pFedMe-true: Moreau-envelope regularisation lambda")
    pfedme_k: int = hyperparam(5, "pFedMe-true: inner steps K per batch")
    personal_lr: float = hyperparam(0.09, "pFedMe-true: step size of the inner (personalised) steps")
    beta: float = hyperparam(1.0, "pFedMe-true: server mixing beta")

    def validate(self) -> None:
        check(self.pfedme_lambda > 0, f"--pfedme_lambda must be > 0, got {self.pfedme_lambda}")
        check(self.pfedme_k >= 1, f"--pfedme_k must be >= 1, got {self.pfedme_k}")
        check(self.personal_lr > 0, f"--personal_lr must be > 0, got {self.personal_lr}")
        check(self.beta > 0, f"--beta must be > 0, got {self.beta}")


def moreau_step_fn(ctx: Context, hp: MoreauHyperparams):
    """The custom local step: K inner steps on the Moreau envelope, then ``w`` toward ``theta``."""
    update, lam = ctx.update, hp.pfedme_lambda

    def moreau_step(params, opt_state, x, y, _weights, mask, lr):
        w = params["w"]

        def inner(theta, _):
            grads = jax.grad(update.one_model_loss)(theta, x, y, mask)
            step = lambda t, g, a: t - hp.personal_lr * (g + lam * (t - a))  # noqa: E731
            return jax.tree.map(step, theta, grads, w), None

        theta, _ = jax.lax.scan(inner, params["theta"], None, length=hp.pfedme_k)
        w = jax.tree.map(lambda a, t: a - lr * lam * (a - t), w, theta)
        return {"w": w, "theta": theta}, opt_state

    return moreau_step


def make_pfedme_moreau(ctx: Context, hp: MoreauHyperparams) -> Algorithm:
    update = dataclasses.replace(ctx.update, custom_step=moreau_step_fn(ctx, hp), direction=optax.identity())

    def init(data: FederatedData) -> PersonalGlobalState:
        """Personalised models ``params = theta [C, 1, ...]``, the global model ``w [1, ...]``."""
        state = init_with_global(ctx, data, lambda w: update.direction.init({"w": w, "theta": w}))
        return with_adaptive_clip(ctx, state)

    def round_fn(state: PersonalGlobalState, train: ClientSplit):
        key = ctx.round_key(state.round)
        participates = ctx.participants(key, train)
        own = {"w": broadcast_to_clients(state.global_model, participates.shape[0]), "theta": state.params}
        result = update.train(state.clients, train, jax.random.fold_in(key, 1), participates, own=own)
        sent = result.params["w"]
        if ctx.privacy is None:
            server, fields, extra = mix_participants(state.global_model, sent, participates, train), {}, {}
        else:
            server, fields, extra = global_model_step(
                ctx, state, sent, participates, train, key, server_lr=hp.beta
            )
        theta = result.params["theta"]
        new_state = state.replace(
            params=theta,
            clients=result.client_state(state.clients),
            round=state.round + 1,
            global_model=server,
            **fields,
        )
        return new_state, round_metrics(ctx, participates, finite=all_finite((server, theta)), **extra)

    def mix_participants(global_model, sent, participates, train):
        """``(1 - beta) w + beta sum_{i in S} (n_i / n_S) w_i``."""
        counts = jnp.where(participates, train.counts, 0).astype(jnp.float32)
        weights = counts / jnp.maximum(ctx.layout.client_sum(counts.sum()), 1.0)
        mean_local = client_average(ctx, sent, weights)
        return jax.tree.map(lambda g, m: (1 - hp.beta) * g + hp.beta * m, global_model, mean_local)

    return Algorithm(init=init, round=round_fn, evaluate=evaluate_own_models(ctx))


METHODS = (
    Method("pFedMe-true", make_pfedme_moreau, "pFedMe with Moreau envelopes (Dinh et al., 2020)",
           MoreauHyperparams,
           Capabilities(personal=True, batch_norm=False, dp=True, dp_adaptive=True, cohort=True)),
)  # fmt: skip
