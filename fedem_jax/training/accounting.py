"""The privacy spent by a run with ``--dp_clip``: Google's ``dp-accounting`` composes the round's
sampled Gaussian mechanism (:mod:`fedem_jax.core.privacy`) over the rounds done.

A round with Poisson sampling of rate ``q`` and noise multiplier ``z`` is
``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` (add/remove-one-client adjacency: user-level
DP); ``T`` rounds are that event self-composed ``T`` times. ``--dp_accountant rdp`` (Rényi DP,
Mironov 2017; the DP-FedAvg paper's moments accountant) or ``pld`` (privacy loss distributions,
tighter). With ``--dp_epsilon`` the noise multiplier is the smallest that keeps ``epsilon`` at
``--n_rounds`` within the target (``dp_accounting.calibrate_dp_mechanism``), fixed before
training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math

import numpy as np

from fedem_jax.algorithms.base import n_sampled_clients
from fedem_jax.core.privacy import Mechanism
from fedem_jax.errors import ConfigError


def _dp():
    try:
        import dp_accounting
    except ImportError:  # a dependency; only a broken install lacks it
        raise ConfigError("--dp_clip needs the dp-accounting package: pip install dp-accounting") from None
    return dp_accounting


class _ExcludedOrder(logging.Filter):
    """Drops the RDP accountant's "failed to converge ... Excluding this order" warning: at low
    sampling rates its series for small Renyi orders does not converge and it leaves those orders
    out, which keeps epsilon a valid upper bound (from the other orders). One line per order and
    call, dozens for one calibration, on a library caller's terminal otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


@contextlib.contextmanager
def _without_excluded_order_warnings():
    logger, quiet = logging.getLogger("absl"), _ExcludedOrder()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def round_event(rate: float, noise_multiplier: float, rounds: int):
    """The DpEvent of ``rounds`` rounds (Poisson-sampled Gaussian, self-composed)."""
    dp = _dp()
    one = dp.GaussianDpEvent(noise_multiplier)
    if rate < 1:
        one = dp.PoissonSampledDpEvent(rate, one)
    return dp.SelfComposedDpEvent(one, rounds)


def new_accountant(kind: str):
    dp = _dp()
    if kind == "rdp":
        return dp.rdp.RdpAccountant()
    return dp.pld.PLDAccountant()


def epsilon(kind: str, rate: float, noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``rounds`` rounds (inf without noise; 0 before the first round)."""
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    accountant = new_accountant(kind)
    with _without_excluded_order_warnings():
        accountant.compose(round_event(rate, noise_multiplier, rounds))
        return float(accountant.get_epsilon(delta))


@functools.lru_cache(maxsize=64)
def calibrate(kind: str, rate: float, rounds: int, target_epsilon: float, delta: float) -> float:
    """The smallest noise multiplier (to 1e-3 relative) whose epsilon after ``rounds`` is at most
    ``target_epsilon``."""
    dp = _dp()
    with _without_excluded_order_warnings():
        z = dp.calibrate_dp_mechanism(
            functools.partial(new_accountant, kind),
            lambda z: round_event(rate, z, rounds),
            target_epsilon,
            delta,
            bracket_interval=dp.LowerEndpointAndGuess(0.0, 1.0),
            tol=1e-3 * max(target_epsilon, 1e-6),
        )
    return float(z)


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
    """A run's mechanism and how its privacy is counted."""

    mechanism: Mechanism
    delta: float
    accountant: str
    target_epsilon: float  # 0: the noise multiplier was given

    def epsilon_after(self, rounds: int) -> float:
        m = self.mechanism
        return _cached_epsilon(self.accountant, m.rate, m.noise_multiplier, int(rounds), self.delta)

    def describe(self) -> str:
        m = self.mechanism
        how = f"calibrated to epsilon {self.target_epsilon:g}" if self.target_epsilon else "given"
        clip = "per component" if m.per_component else "all components jointly"
        if m.adaptive:
            clip += (
                f"; adaptive from there to the {m.quantile:g} quantile of update norms, step "
                f"{m.clip_lr:g}, count noise {m.count_noise:.4g}, update noise multiplier "
                f"{m.update_noise_multiplier:.4g}"
            )
        return (
            f"DP: clip {m.clip:g} ({clip}), {m.weighting} weights, noise multiplier "
            f"{m.noise_multiplier:.4g} ({how}), Poisson rate {m.rate:g}, delta {self.delta:.3g}, "
            f"{self.accountant} accountant"
        )

    def record(self, rounds: int) -> dict:
        """What the rows and ``summary.json`` report after ``rounds`` rounds."""
        return {"epsilon_spent": self.epsilon_after(rounds)}

    def settings(self) -> dict:
        m = self.mechanism
        return {
            "dp_noise_multiplier": m.noise_multiplier, "dp_delta": self.delta, "dp_clip": m.clip,
            "dp_rate": m.rate, "dp_accountant": self.accountant, "dp_weighting": m.weighting,
            **({"dp_clip_quantile": m.quantile, "dp_clip_count_noise": m.count_noise,
                "dp_update_noise_multiplier": m.update_noise_multiplier} if m.adaptive else {}),
        }  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _cached_epsilon(kind, rate, noise_multiplier, rounds, delta) -> float:
    return epsilon(kind, rate, noise_multiplier, rounds, delta)


def default_delta(n_clients: int) -> float:
    """``1 / N^1.1``: below ``1 / N``, so that releasing one client's data whole is not within it."""
    return 1.0 / n_clients**1.1


def plan(cfg, counts) -> PrivacyPlan | None:
    """The privacy plan of ``cfg`` on training clients of sizes ``counts`` (None without DP)."""
    p = cfg.privacy
    if p.dp_clip <= 0:
        return None
    counts = np.asarray(counts, np.float64)
    n_clients = len(counts)
    delta = p.dp_delta or default_delta(n_clients)
    rate, rounds = cfg.training.sampling_rate, cfg.training.n_rounds
    if p.dp_epsilon > 0:
        z = calibrate(p.dp_accountant, rate, rounds, p.dp_epsilon, delta)
    else:
        z = p.noise_multiplier
    weight = 1.0 / n_clients if p.dp_weighting == "uniform" else float(counts.max() / counts.sum())
    fixed = cfg.training.sampling == "fixed"
    cohort = n_sampled_clients(n_clients, rate) if fixed else rate * n_clients  # the count's denominator
    count_noise = cohort / 20 if p.dp_clip_count_noise == -1 else p.dp_clip_count_noise
    mechanism = Mechanism(
        clip=p.dp_clip, noise_multiplier=z, sensitivity_weight=weight, rate=rate,
        per_component=p.dp_per_component, weighting=p.dp_weighting, quantile=p.dp_clip_quantile,
        clip_lr=p.dp_clip_lr, count_noise=count_noise, expected_cohort=cohort,
    )  # fmt: skip
    if mechanism.adaptive and 0 < z and 2 * count_noise <= z:
        raise ConfigError(
            f"--dp_clip_quantile: the count's noise {count_noise:.4g} must exceed half the noise "
            f"multiplier ({z:.4g} / 2) to leave noise for the update (Andrew et al., 2021); raise "
            "--dp_clip_count_noise or the clients per round"
        )
    return PrivacyPlan(mechanism, delta, p.dp_accountant, p.dp_epsilon)
