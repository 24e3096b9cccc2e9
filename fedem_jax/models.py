"""Flax models of the FedEM paper (spec section 5) and their registry."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class LinearModel(nn.Module):
    """``x -> W x + b``; the synthetic task's model (150 -> 1 with BCE on the logit)."""

    output_dim: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.output_dim)(x.reshape((x.shape[0], -1)))


class CIFAR10CNN(nn.Module):
    """conv 3->32 k5, maxpool 2, conv 32->64 k5, maxpool 2, FC 1600->2048, FC 2048->10.

    3,353,034 parameters for 10 classes (spec section 5). Inputs are NHWC 32x32x3.
    """

    output_dim: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(32, (5, 5), padding="VALID")(x)
        x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = nn.Conv(64, (5, 5), padding="VALID")(x)
        x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(2048)(x))
        return nn.Dense(self.output_dim)(x)


MODELS = {"linear": LinearModel, "cifar10_cnn": CIFAR10CNN}


def build_model(name: str, output_dim: int) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    return MODELS[name](output_dim=output_dim)


def init_stacked_params(model: nn.Module, key: jax.Array, sample_input: jax.Array, n_learners: int):
    """Independent initialisations of ``n_learners`` components, stacked on a leading ``[M]`` axis.

    Learner ``m`` is initialised from ``fold_in(key, m)``.
    """
    keys = jnp.stack([jax.random.fold_in(key, m) for m in range(n_learners)])
    return jax.vmap(lambda k: model.init(k, sample_input)["params"])(keys)


def count_params(params) -> int:
    return int(sum(leaf.size for leaf in jax.tree.leaves(params)))
