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


def test_same_start_and_batches_give_the_same_rounds(tmp_path):
    """Fidelity (issue 27): the baseline and fedem_jax from the same per-component weights and with
    fedem_jax's batch order (several batches a client, partial last ones, momentum across rounds)
    agree on every component and every pi after each of three rounds."""
    import jax
    from torch_reference import fedem_jax_batch_order

    sizes, batch = (21, 34, 9, 16), 8
    data = tiny_binary_data(sizes=sizes, dim=4, seed=3)
    cfg = tiny_config(tmp_path, local_epochs=1, batch_size=batch, n_learners=3, seed=11)
    algo = build(cfg, data).algorithm
    state = algo.init(data)
    x, y = np.asarray(data.train.x), np.asarray(data.train.y)
    counts = np.asarray(data.train.counts)
    datasets = [
        TabularDataset(x[o : o + n], y[o : o + n]) for o, n in zip(data.train.offsets, counts, strict=True)
    ]
    baseline = ReferenceStyleFedEM(
        lambda: TorchLinear(4), datasets, binary=True, n_learners=3, lr=cfg.training.lr, batch_size=batch,
        batch_order=fedem_jax_batch_order(cfg.training.seed, counts, batch),
    )  # fmt: skip
    kernel, bias = (np.asarray(state.params["Dense_0"][k]) for k in ("kernel", "bias"))
    with torch.no_grad():
        for m, learner in enumerate(baseline.global_learners):
            learner.fc.weight.copy_(torch.from_numpy(kernel[m].T))
            learner.fc.bias.copy_(torch.from_numpy(bias[m]))
    round_fn = jax.jit(algo.round)
    for _ in range(3):
        baseline.run_round()
        state, _ = round_fn(state, data.train)
        ours = np.asarray(state.params["Dense_0"]["kernel"])[..., 0]  # [M, 4]
        theirs = np.stack([learner.fc.weight.detach().numpy()[0] for learner in baseline.global_learners])
        np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-6)
        pis = np.stack([c["pi"].numpy() for c in baseline.clients])
        np.testing.assert_allclose(pis, np.asarray(state.clients.pi), rtol=1e-4, atol=1e-6)
    moved = np.abs(ours - kernel[..., 0]).max()
    assert moved > 1e-2  # the rounds did train: agreement is not that of two idle models
