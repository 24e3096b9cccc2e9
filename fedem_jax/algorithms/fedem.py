"""Centralized FedEM (Marfoq et al., "Federated Multi-Task Learning under a Mixture of
Distributions", NeurIPS 2021, Algorithm 1), and the methods that are its special cases:

- ``FedEM``: M components, E-step, ``pi`` update, M-step of every component on every client, and
  the server's ``n_t``-weighted average;
- ``FedAvg`` (McMahan et al., 2017): ``n_learners = 1``;
- ``FedProx`` (Li et al., MLSys 2020): FedAvg with ``mu (theta - theta_global)`` added to every
  local gradient (prox-SGD: momentum 0 unless set);
- ``FedAdam`` / ``FedYogi`` (Reddi et al., ICLR 2021): FedAvg whose server applies an adaptive
  optimizer to the averaged update; ``--server_optimizer`` gives FedEM and FedAvg the same option.

Randomness: the round key is ``fold_in(fold_in(seed, 1), round)``; client sampling uses
``fold_in(round_key, 0)`` and client ``c``'s shuffles ``fold_in(fold_in(round_key, 1), c)`` with
``c`` the global client index, so results do not depend on the client layout, chunk size or
number of devices. All learners of a client see the same batches.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp

from fedem_jax.algorithms.base import (
    Algorithm,
    Context,
    GlobalState,
    Params,
    all_finite,
    next_dp_clip,
    round_metrics,
)
from fedem_jax.algorithms.common import shared_sample_losses
from fedem_jax.algorithms.registry import Capabilities, Method, hyperparam
from fedem_jax.core import mixture
from fedem_jax.core.optim import is_zero, or_default
from fedem_jax.core.server_opt import DEFAULT_SERVER_LR, SERVER_OPTIMIZERS, server_direction
from fedem_jax.data.federated import ClientSplit, FederatedData
from fedem_jax.errors import check
from fedem_jax.execution.sample_map import map_samples


class ServerOptState(GlobalState):
    """FedEM state with an adaptive server optimizer: its moments ``(m, v)``, leaves ``[M, ...]``."""

    server_opt: Params

    CLIENT_FIELDS: ClassVar[tuple[str, ...]] = ("clients",)


class ClipState(GlobalState):
    """FedEM state with adaptive DP clipping (``--dp_clip_quantile``): the next round's clip."""

    dp_clip: jax.Array  # scalar float32


class ServerOptClipState(ServerOptState):
    """An adaptive server optimizer and adaptive DP clipping."""

    dp_clip: jax.Array


STATES = {(False, False): GlobalState, (True, False): ServerOptState,
          (False, True): ClipState, (True, True): ServerOptClipState}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ServerHyperparams:
    server_optimizer: str = hyperparam("avg", "server step on the averaged update: avg, adam or yogi")
    server_lr: float = hyperparam(0.0, "server learning rate (0: 1.0 for avg, 0.01 for adam/yogi)")
    server_beta1: float = hyperparam(0.9, "adam/yogi server: first-moment decay")
    server_beta2: float = hyperparam(0.99, "adam/yogi server: second-moment decay")
    server_tau: float = hyperparam(1e-3, "adam/yogi server: adaptivity tau")

    def validate(self) -> None:
        check(
            self.server_optimizer in SERVER_OPTIMIZERS,
            f"--server_optimizer: unknown value {self.server_optimizer!r}; "
            f"valid: {', '.join(SERVER_OPTIMIZERS)}",
        )
        check(self.server_lr >= 0, f"--server_lr must be >= 0, got {self.server_lr}")
        check(0 <= self.server_beta1 < 1, f"--server_beta1 must be in [0, 1), got {self.server_beta1}")
        check(0 <= self.server_beta2 < 1, f"--server_beta2 must be in [0, 1), got {self.server_beta2}")
        check(self.server_tau > 0, f"--server_tau must be > 0, got {self.server_tau}")

    @property
    def lr(self) -> float:
        return or_default(self.server_lr, DEFAULT_SERVER_LR[self.server_optimizer])


@dataclasses.dataclass(frozen=True)
class FedProxHyperparams(ServerHyperparams):
    mu: float = hyperparam(0.01, "FedProx, pFedMe: proximal coefficient")

    def validate(self) -> None:
        super().validate()
        check(self.mu >= 0, f"--mu must be >= 0, got {self.mu}")


def e_step(ctx: Context, params, pi, train: ClientSplit):
    """Responsibilities ``q [M, N]``, the new ``pi [C, M]`` (paper eqs. (4)-(5)), and the
    mixture NLL summed over this block's samples with the parameters the round started from."""
    # All clients share the broadcast parameters: one large batched forward pass.
    losses = shared_sample_losses(ctx.update, params, train, ctx.eval_chunk)
    log_pi = jnp.log(pi)[train.client_id].T  # [M, N]
    q = mixture.e_step(log_pi, losses)
    new_pi = mixture.update_pi_all_clients(q, train.client_id, train.counts)
    valid = train.client_id < train.counts.shape[0]  # padded samples of a device block
    nll = jnp.where(valid, mixture.mixture_nll_from_losses(log_pi, losses), 0.0)
    return q, new_pi, nll.sum(), valid.sum()


def evaluate_mixture(ctx: Context, params, pi, split: ClientSplit) -> dict:
    """Per-client ``(correct, loss_sum, count)`` of ``p = sum_m pi_m p_theta_m`` (eq. (2))."""
    task = ctx.task

    def one_sample(args):
        x, y, client = args
        logits = ctx.update.learner_logits(params, x[None])  # [M, 1, out]
        probs = mixture.mixture_probs(pi[client], task.class_probs(logits))
        return task.sample_correct(probs, y[None])[0], task.sample_nll(probs, y[None])[0]

    correct, nll = map_samples(one_sample, (split.x, split.y, split.client_id), ctx.eval_chunk)
    n_clients = split.counts.shape[0]
    return {
        "correct": jax.ops.segment_sum(correct, split.client_id, n_clients),
        "loss_sum": jax.ops.segment_sum(nll, split.client_id, n_clients),
        "count": split.counts,
    }


def fit_pi(ctx: Context, params, split: ClientSplit, max_iters: int, tol: float = 1e-6) -> jax.Array:
    """EM on ``pi`` alone, components frozen, iterated to convergence (``max |dpi| < tol``).

    The paper's adaptation of FedEM to clients unseen at training time (section 3.3); the
    reference does a single EM step per evaluation.
    """
    losses = shared_sample_losses(ctx.update, params, split, ctx.eval_chunk)
    n_clients = split.counts.shape[0]

    def keep_going(carry):
        it, _, change = carry
        return (it < max_iters) & (change > tol)

    def em_step(carry):
        it, pi, _ = carry
        q = mixture.e_step(jnp.log(pi)[split.client_id].T, losses)
        new_pi = mixture.update_pi_all_clients(q, split.client_id, split.counts)
        return it + 1, new_pi, jnp.max(jnp.abs(new_pi - pi))

    start = jnp.full((n_clients, ctx.n_learners), 1.0 / ctx.n_learners, jnp.float32)
    _, pi, _ = jax.lax.while_loop(keep_going, em_step, (0, start, jnp.inf))
    return pi


def make_fedem(ctx: Context, hp: ServerHyperparams) -> Algorithm:
    """FedEM's pure functions; FedAvg, FedProx and the server optimizers are settings of it."""
    if isinstance(hp, FedProxHyperparams) and not is_zero(hp.mu):
        ctx = dataclasses.replace(ctx, update=dataclasses.replace(ctx.update, prox_mu=hp.mu))
    adaptive = hp.server_optimizer != "avg"
    if adaptive:
        server = server_direction(hp.server_optimizer, hp.server_beta1, hp.server_beta2, hp.server_tau)

    dp = ctx.privacy
    adaptive_clip = dp is not None and dp.adaptive

    def init(data: FederatedData) -> GlobalState:
        params = ctx.init_components(data)
        fields = dict(params=params, clients=ctx.init_clients(data, params), round=jnp.zeros((), jnp.int32))
        if adaptive:
            fields["server_opt"] = server.init(params)
        if adaptive_clip:
            fields["dp_clip"] = jnp.asarray(dp.clip, jnp.float32)
        return STATES[adaptive, adaptive_clip](**fields)

    def server_step(state, delta_sum):
        """``theta + lr * Delta`` (avg: FedAvg at lr 1, exactly), or ``+ lr * m / (sqrt(v) + tau)``."""
        if not adaptive:
            return jax.tree.map(lambda p, d: p + hp.lr * d, state.params, delta_sum), {}
        step, opt = server.update(delta_sum, state.server_opt)
        return jax.tree.map(lambda p, s: p + hp.lr * s, state.params, step), {"server_opt": opt}

    def round_fn(state: GlobalState, train: ClientSplit):
        key = ctx.round_key(state.round)
        participates = ctx.participants(key, train)
        q, pi, nll_sum, n_samples = e_step(ctx, state.params, state.clients.pi, train)
        clip = state.dp_clip if adaptive_clip else None  # None: the mechanism's fixed clip
        result = ctx.update.train(
            state.clients, train, jax.random.fold_in(key, 1), participates,
            start=state.params, weights=q, agg_weights=ctx.aggregation_weights(train),
            clip=None if dp is None else functools.partial(dp.clip_update, clip=clip),
        )  # fmt: skip
        delta = ctx.layout.client_sum(result.delta_sum)
        if dp is not None:  # noise from the round's key: the same on every device
            delta = dp.privatize(delta, jax.random.fold_in(key, 2), clip)
        params, server_fields = server_step(state, delta)
        extra = {}
        if adaptive_clip:  # the noised share of updates within the clip moves it (Andrew et al., 2021)
            key_clip = jax.random.fold_in(key, 3)
            server_fields["dp_clip"] = next_dp_clip(ctx, clip, participates, result.delta_sq_norm, key_clip)
            extra["dp_clip"] = clip
        clients = result.client_state(
            state.clients, pi=jnp.where(participates[:, None], pi, state.clients.pi)
        )
        new_state = state.replace(params=params, clients=clients, round=state.round + 1, **server_fields)
        metrics = round_metrics(
            ctx, participates, finite=all_finite(params), nll_sum=nll_sum, n_samples=n_samples, **extra
        )
        return new_state, metrics

    evaluate, evaluate_unseen = shared_model_evaluation(ctx)
    return Algorithm(init=init, round=round_fn, evaluate=evaluate, evaluate_unseen=evaluate_unseen)


def shared_model_evaluation(ctx: Context):
    """``evaluate`` and ``evaluate_unseen`` of a state with shared components ``params`` and the
    clients' ``pi`` (FedEM, FedAvg and the methods built like them)."""

    def evaluate(state: GlobalState, split: ClientSplit):
        """Training clients, each with its own ``pi`` (per client, in the split's layout)."""
        return evaluate_mixture(ctx, state.params, state.clients.pi, split)

    def evaluate_unseen(state: GlobalState, train: ClientSplit, test: ClientSplit, max_iters: int = 500):
        """Clients held out of training: fit ``pi`` on their train split, evaluate on test."""
        pi = fit_pi(ctx, state.params, train, max_iters)
        return evaluate_mixture(ctx, state.params, pi, test), pi

    return evaluate, evaluate_unseen


def _preset_server(kind: str):
    def factory(ctx: Context, hp: ServerHyperparams) -> Algorithm:
        return make_fedem(ctx, dataclasses.replace(hp, server_optimizer=kind))

    return factory


_SHARED = dict(unseen=True, multi_process=True, dp=True, dp_adaptive=True, cohort=True)
METHODS = (
    Method("FedEM", make_fedem, "mixture of M shared components (Marfoq et al., 2021)", ServerHyperparams,
           Capabilities(components=True, **_SHARED)),
    Method("FedAvg", make_fedem, "one shared model, n_t-weighted averaging (McMahan et al., 2017)",
           ServerHyperparams, Capabilities(**_SHARED)),
    Method("FedProx", make_fedem, "FedAvg with a proximal term mu (Li et al., 2020)", FedProxHyperparams,
           Capabilities(plain_sgd=True, **_SHARED)),
    Method("FedAdam", _preset_server("adam"), "FedAvg with an Adam server step (Reddi et al., 2021)",
           ServerHyperparams, Capabilities(**_SHARED)),
    Method("FedYogi", _preset_server("yogi"), "FedAvg with a Yogi server step (Reddi et al., 2021)",
           ServerHyperparams, Capabilities(**_SHARED)),
)  # fmt: skip
