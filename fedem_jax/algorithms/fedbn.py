"""FedBN: federated learning on non-IID features via local batch normalization (Li, Jiang, Zhang,
Kamp and Dou, ICLR 2021, Algorithm 1).

FedAvg in which every BatchNorm layer stays with its client: its scale and bias, and its running
mean and variance, are trained and kept locally and never averaged; the server averages every
other parameter with ``n_t / n`` weights. Clients are evaluated with the shared layers and their
own BatchNorm layers. It is FedPer (:mod:`fedem_jax.algorithms.fedrep`) with the BatchNorm layers
as the local part, and needs a model with BatchNorm (``--model mobilenet_v2``).
"""

from __future__ import annotations

from flax import traverse_util

from fedem_jax.algorithms.base import Algorithm, Context
from fedem_jax.algorithms.fedrep import make_split_method
from fedem_jax.algorithms.registry import Capabilities, Method, NoHyperparams
from fedem_jax.errors import ConfigError


def batch_norm_mask(variables):
    """True on the leaves of every BatchNorm layer: its statistics in ``batch_stats`` and the
    ``params`` of the same modules (their scale and bias)."""
    if not isinstance(variables, dict) or "batch_stats" not in variables:
        raise ConfigError(
            "FedBN keeps BatchNorm layers local: use a model with BatchNorm (--model mobilenet_v2)"
        )
    flat = traverse_util.flatten_dict(variables)
    norm_layers = {path[1:-1] for path in flat if path[0] == "batch_stats"}
    mask = {path: path[0] == "batch_stats" or path[1:-1] in norm_layers for path in flat}
    return traverse_util.unflatten_dict(mask)


def make_fedbn(ctx: Context, hp: NoHyperparams) -> Algorithm:
    return make_split_method(ctx, batch_norm_mask)


METHODS = (
    Method("FedBN", make_fedbn, "FedAvg with every BatchNorm layer kept local (Li et al., 2021)",
           NoHyperparams, Capabilities(personal=True, dp=True, dp_adaptive=True, cohort=True)),
)  # fmt: skip
