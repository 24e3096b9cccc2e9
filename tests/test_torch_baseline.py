"""The reference-style PyTorch baseline computes the same round as fedem_jax (when torch is installed)."""

import os
import sys

import numpy as np
import pytest
from helpers import tiny_binary_data, tiny_config

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

from torch_reference import ReferenceStyleFedEM, TabularDataset, TorchLinear  # noqa: E402

from fedem_jax.training.experiment import build  # noqa: E402


def test_one_full_batch_round_matches_fedem_jax(tmp_path):
    import jax

    data = tiny_binary_data(sizes=(6, 9, 4), dim=4)
    cfg = tiny_config(tmp_path, local_epochs=1, batch_size=16)
    algo = build(cfg, data).algorithm
    state = algo.init(data)
    x, y = np.asarray(data.train.x), np.asarray(data.train.y)
    datasets = [
        TabularDataset(x[o : o + n], y[o : o + n])
        for o, n in zip(np.asarray(data.train.offsets), np.asarray(data.train.counts), strict=True)
    ]
    baseline = ReferenceStyleFedEM(
        lambda: TorchLinear(4), datasets, binary=True, n_learners=2, lr=cfg.training.lr, batch_size=16
    )
    kernel = np.asarray(state.params["Dense_0"]["kernel"])  # [M, 4, 1]
    bias = np.asarray(state.params["Dense_0"]["bias"])  # [M, 1]
    with torch.no_grad():
        for m, learner in enumerate(baseline.global_learners):
            learner.fc.weight.copy_(torch.from_numpy(kernel[m].T))
            learner.fc.bias.copy_(torch.from_numpy(bias[m]))
    baseline.run_round()
    state, _ = jax.jit(algo.round)(state, data.train)
    for m, learner in enumerate(baseline.global_learners):
        np.testing.assert_allclose(
            learner.fc.weight.detach().numpy(),
            np.asarray(state.params["Dense_0"]["kernel"][m]).T,
            rtol=1e-4,
            atol=1e-6,
        )
    pis = np.stack([c["pi"].numpy() for c in baseline.clients])
    np.testing.assert_allclose(pis, np.asarray(state.clients.pi), rtol=1e-4, atol=1e-6)
