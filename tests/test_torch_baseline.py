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


class _Images(torch.utils.data.Dataset):
    """NHWC float images as NCHW tensors with integer labels (and the index, as the baseline reads)."""

    def __init__(self, x, y):
        self.x, self.y = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        return self.x[index], int(self.y[index]), index


class _TorchSmallCNN(torch.nn.Module):
    """fedem_jax's ``cnn`` (SmallCNN) in PyTorch: VALID 3x3 convolutions, 2x2 max-pools, features
    flattened in NHWC order so that the dense kernels are fedem_jax's, transposed."""

    def __init__(self, channels, classes):
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(channels, 32, 3), torch.nn.Conv2d(32, 64, 3)
        self.fc1, self.fc2 = torch.nn.Linear(64, 128), torch.nn.Linear(128, classes)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.permute(0, 2, 3, 1).flatten(1))))


def _torch_layout(name, kernel):
    """A flax kernel as the matching torch weight (conv HWIO -> OIHW, dense [in, out] -> [out, in])."""
    return kernel.transpose(3, 2, 0, 1) if name.startswith("Conv") else kernel.T


def test_same_start_and_batches_give_the_same_rounds_with_a_small_cnn(tmp_path):
    """The same check with convolutions, max-pools and a 3-class softmax: every weight of every
    component within 1e-3 (relative) after each of three rounds."""
    import jax
    from torch_reference import fedem_jax_batch_order

    from fedem_jax.core.tasks import Task
    from fedem_jax.data import FederatedData, build_split

    rng = np.random.default_rng(5)
    sizes, batch = (13, 22, 7), 8
    xs = [rng.normal(size=(n, 12, 12, 1)).astype(np.float32) for n in sizes]
    ys = [rng.integers(0, 3, n).astype(np.int32) for n in sizes]
    data = FederatedData("images", build_split(xs, ys), build_split(xs, ys), Task(num_classes=3))
    cfg = tiny_config(tmp_path, model="cnn", local_epochs=1, batch_size=batch, n_learners=2, lr=0.05)
    algo = build(cfg, data).algorithm
    state = algo.init(data)
    counts = [len(y) for y in ys]
    baseline = ReferenceStyleFedEM(
        lambda: _TorchSmallCNN(1, 3), [_Images(x, y) for x, y in zip(xs, ys, strict=True)], binary=False,
        n_learners=2, lr=cfg.training.lr, batch_size=batch,
        batch_order=fedem_jax_batch_order(cfg.training.seed, counts, batch),
    )  # fmt: skip
    names = {"Conv_0": "conv1", "Conv_1": "conv2", "Dense_0": "fc1", "Dense_1": "fc2"}

    def load(params):
        with torch.no_grad():
            for m, learner in enumerate(baseline.global_learners):
                for ours, theirs in names.items():
                    layer = getattr(learner, theirs)
                    layer.weight.copy_(
                        torch.from_numpy(_torch_layout(ours, np.array(params[ours]["kernel"][m])))
                    )
                    layer.bias.copy_(torch.from_numpy(np.array(params[ours]["bias"][m])))

    load(state.params)
    start = np.asarray(state.params["Dense_1"]["kernel"])
    round_fn = jax.jit(algo.round)
    for _ in range(3):
        baseline.run_round()
        state, _ = round_fn(state, data.train)
        for m, learner in enumerate(baseline.global_learners):
            for ours, theirs in names.items():
                expected = _torch_layout(ours, np.asarray(state.params[ours]["kernel"][m]))
                got = getattr(learner, theirs).weight.detach().numpy()
                np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5 * np.abs(expected).max())
        pis = np.stack([c["pi"].numpy() for c in baseline.clients])
        np.testing.assert_allclose(pis, np.asarray(state.clients.pi), rtol=1e-3, atol=1e-6)
    assert np.abs(np.asarray(state.params["Dense_1"]["kernel"]) - start).max() > 1e-2  # it trained
