"""Small hand-made federated problems for tests."""

from __future__ import annotations

import flax.linen as nn
import numpy as np

from fedem_jax.config import Config, make_config
from fedem_jax.core.tasks import BINARY
from fedem_jax.data import FederatedData, build_split


def tiny_binary_data(sizes=(5, 8, 3), dim=4, seed=0) -> FederatedData:
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, dim)).astype(np.float32) for n in sizes]
    ys = [(rng.random(n) < 0.5).astype(np.int32) for n in sizes]
    test_xs = [rng.normal(size=(4, dim)).astype(np.float32) for _ in sizes]
    test_ys = [(rng.random(4) < 0.5).astype(np.int32) for _ in sizes]
    return FederatedData("tiny", build_split(xs, ys), build_split(test_xs, test_ys), BINARY)


def tiny_config(workdir, **overrides) -> Config:
    values = dict(
        dataset="synthetic",
        model="linear",
        n_learners=2,
        n_rounds=2,
        batch_size=16,
        lr=0.1,
        lr_scheduler="constant",
        local_epochs=2,
        workdir=str(workdir),
        quiet=True,
        log_freq=1,
        client_chunk=0,
        learner_vmap=1,
    )
    values.update(overrides)
    return make_config(**values)


class TinyBatchNormModel(nn.Module):
    """``x -> BatchNorm -> Dense(1)``: the smallest model with BatchNorm layers."""

    output_dim: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        norm = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
        return nn.Dense(self.output_dim)(norm(x, mask=None if mask is None else mask[:, None]))
