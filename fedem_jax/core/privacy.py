"""User-level differential privacy of the server's average: the Gaussian mechanism of DP-FedAvg
(McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018,
Algorithm 1 with the fixed-denominator estimator).

Each sampled client's update ``Delta_t = theta^t - theta`` (all M components of FedEM together)
is clipped to L2 norm ``C``; the server computes

    Delta = ( sum_{t in S} w_t clip(Delta_t) + N(0, (z C max_t w_t)^2 I) ) / q

with ``w_t`` fixed weights summing to 1 over the whole federation (``uniform``: ``1 / N``;
``samples``: ``n_t / n``, the non-private rule, taking the clients' sizes as public), ``q`` the
Poisson sampling probability and ``z`` the noise multiplier. One client changes the weighted sum
by at most ``C max_t w_t`` (its sensitivity), so with Poisson sampling each round is the sampled
Gaussian mechanism the accountant composes (:mod:`fedem_jax.training.accounting`). Dividing by
``q`` makes the estimator unbiased for the average over all clients. Only what leaves a client is
protected: FedEM's ``pi`` and E-step stay on the client (Marfoq et al., 2021, section 3.2).

**Adaptive clipping** (Andrew et al., "Differentially Private Learning with Adaptive Clipping",
NeurIPS 2021, Algorithm 1 with geometric updates): the clip ``C_t`` follows the ``gamma``
quantile of the clients' update norms. Each sampled client also sends ``b_t = 1[||Delta_t|| <=
C_t]``; the server forms ``b = (sum b_t + N(0, sigma_b^2)) / m`` (``m`` the expected cohort
size) and sets ``C_{t+1} = C_t exp(-eta (b - gamma))``. The two releases together are one
Gaussian mechanism of noise multiplier ``z`` when the update's is ``z_Delta = (z^-2 - (2
sigma_b)^-2)^(-1/2)`` (their Theorem 1; the count's sensitivity is 1/2 once centred), so the
accountant is unchanged and the update pays for the count with a little more noise.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

WEIGHTINGS = ("uniform", "samples")
ACCOUNTANTS = ("rdp", "pld")  # dp-accounting's (fedem_jax/training/accounting.py)


@dataclasses.dataclass(frozen=True)
class Mechanism:
    """The settings of the mechanism, fixed before training (static in the compiled round)."""

    clip: float  # C: the L2 bound of one client's update
    noise_multiplier: float  # z: noise standard deviation / sensitivity
    sensitivity_weight: float  # max_t w_t: the largest weight a client's clipped update gets
    rate: float  # q: Poisson sampling probability of a client in a round
    per_component: bool = False  # clip each component to C / sqrt(M) instead of all jointly
    weighting: str = "uniform"
    quantile: float = 0.0  # gamma: adaptive clipping's target quantile of update norms (0: C fixed)
    clip_lr: float = 0.2  # eta: the clip's geometric step per round
    count_noise: float = 0.0  # sigma_b: noise on the count of unclipped clients
    expected_cohort: float = 1.0  # m: clients expected in a round (q N), the count's denominator

    @property
    def adaptive(self) -> bool:
        return self.quantile > 0

    @property
    def update_noise_multiplier(self) -> float:
        """``z_Delta``: ``z`` itself with a fixed clip; with adaptive clipping, what is left of
        ``z`` once the count's noise is paid for (Andrew et al., 2021, Theorem 1)."""
        if not self.adaptive or self.noise_multiplier == 0:
            return self.noise_multiplier
        return (self.noise_multiplier**-2 - (2 * self.count_noise) ** -2) ** -0.5

    def noise_std(self, clip=None):
        """Standard deviation of the noise added to the weighted sum: ``z_Delta C max_t w_t``
        (``clip``: this round's ``C``, default the fixed one)."""
        return self.update_noise_multiplier * (self.clip if clip is None else clip) * self.sensitivity_weight

    def next_clip(self, clip, unclipped, key):
        """``C_{t+1} = C_t exp(-eta (b - gamma))``, ``b`` the noised fraction of the round's
        clients whose update was within ``C_t`` (``unclipped``: their number, summed over blocks)."""
        fraction = (unclipped + self.count_noise * jax.random.normal(key, ())) / self.expected_cohort
        return clip * jnp.exp(-self.clip_lr * (fraction - self.quantile))

    def clip_update(self, start, params, clip=None):
        """``params`` whose update from ``start`` (leaves ``[M, ...]``) is clipped to norm ``C``
        (``clip``: this round's, default the fixed one; per component to ``C / sqrt(M)``: the
        joint norm is then at most ``C`` too). An update within the bound is returned as it is,
        bit for bit."""
        return self.clip_and_norm(start, params, clip)[0]

    def clip_and_norm(self, start, params, clip=None):
        """``(clip_update(start, params, clip), ||params - start||^2)``: the update clipped, and
        its squared norm before clipping (all components), from one pass over the update."""
        clip = self.clip if clip is None else clip
        deltas = jax.tree.map(jnp.subtract, params, start)
        squares = [jnp.sum(jnp.square(d).reshape(d.shape[0], -1), axis=1) for d in jax.tree.leaves(deltas)]
        per_component = sum(squares)  # [M]
        if self.per_component:
            norm, bound = jnp.sqrt(per_component), clip / math.sqrt(per_component.shape[0])
        else:
            norm, bound = jnp.sqrt(per_component.sum()), clip
        over = norm > bound
        scale = jnp.where(over, bound / jnp.where(over, norm, 1.0), 1.0)

        def leaf(s, d, p):
            factor = jnp.reshape(scale, scale.shape + (1,) * (d.ndim - scale.ndim)).astype(d.dtype)
            return jnp.where(jnp.reshape(over, factor.shape), s + factor * d, p)

        return jax.tree.map(leaf, start, deltas, params), per_component.sum()

    def privatize(self, delta_sum, key, clip=None):
        """The estimator above from the clipped weighted sum: Gaussian noise from ``key`` (the
        same on every device: the sum is already all-reduced), then ``/ q``."""
        leaves, treedef = jax.tree.flatten(delta_sum)
        keys = jax.random.split(key, len(leaves))
        std = self.noise_std(clip)
        noisy = [
            (d + std * jax.random.normal(k, d.shape, d.dtype)) / self.rate
            for d, k in zip(leaves, keys, strict=True)
        ]
        return jax.tree.unflatten(treedef, noisy)


def uniform_weights(train, n_clients: int) -> jax.Array:
    """``w_t = 1 / N`` for this block's real clients (0 for a mesh's padding)."""
    return (train.global_ids < n_clients).astype(jnp.float32) / n_clients
