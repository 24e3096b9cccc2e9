"""Validation splits and unseen clients (pi fitted by EM with frozen components)."""

import json

import chex
import jax
import numpy as np
import numpy_reference as ref
import pytest
from helpers import tiny_binary_data, tiny_config

from fedem_jax.core.tasks import BINARY
from fedem_jax.data.federated import assemble
from fedem_jax.main import main
from fedem_jax.training.experiment import build


def _client_arrays(sizes, rng):
    xs = [rng.normal(size=(n, 3)).astype(np.float32) for n in sizes]
    ys = [rng.integers(0, 2, n).astype(np.int32) for n in sizes]
    return xs, ys


def test_assemble_val_and_unseen_parts():
    rng = np.random.default_rng(0)
    train = _client_arrays([40, 20, 60, 8, 12], rng)
    test = _client_arrays([10, 5, 15, 2, 3], rng)
    data = assemble("t", BINARY, train, test, val_frac=0.25, unseen_frac=0.4, rng=np.random.default_rng(1))
    assert data.n_clients == 3 and data.n_unseen == 2
    # Each training client: 75 % train, 25 % val, all its samples kept exactly once.
    seen_sizes = np.asarray(data.train.counts) + np.asarray(data.val.counts)
    unseen_sizes = np.asarray(data.unseen_train.counts)
    assert sorted([*seen_sizes.tolist(), *unseen_sizes.tolist()]) == [8, 12, 20, 40, 60]
    np.testing.assert_array_equal(np.asarray(data.val.counts), np.round(0.25 * seen_sizes).astype(int))
    # Unseen clients keep all their training samples (they never train) and their test split.
    assert int(np.asarray(data.unseen_test.counts).sum()) + int(np.asarray(data.test.counts).sum()) == 35
    all_rows = np.concatenate([np.asarray(s.x) for s in (data.train, data.val, data.unseen_train)])
    assert len(np.unique(all_rows, axis=0)) == 140


def test_unseen_pi_is_em_to_convergence(tmp_path):
    data = tiny_binary_data(sizes=(30, 25), dim=4)
    algo = build(tiny_config(tmp_path, n_learners=3), data).algorithm
    state = algo.init(data)
    _, pi = jax.jit(algo.evaluate_unseen, static_argnums=3)(state, data.train, data.test, 500)
    W = np.asarray(state.params["Dense_0"]["kernel"][..., 0], np.float64)
    b = np.asarray(state.params["Dense_0"]["bias"][..., 0], np.float64)
    for c, (o, n) in enumerate(zip(data.train.offsets, data.train.counts, strict=True)):
        x = np.asarray(data.train.x[o : o + n], np.float64)
        y = np.asarray(data.train.y[o : o + n], np.float64)
        losses = np.stack([ref.bce_with_logits(x @ W[m] + b[m], y) for m in range(3)])
        expected = np.full(3, 1 / 3)
        for _ in range(500):
            expected = ref.e_step(expected, losses).mean(axis=1)
        chex.assert_trees_all_close(pi[c], expected, atol=2e-4)
        # A fixed point: one more EM step changes nothing.
        chex.assert_trees_all_close(
            ref.e_step(np.asarray(pi[c], np.float64), losses).mean(1), pi[c], atol=2e-5
        )


def test_run_with_unseen_clients_and_validation(tmp_path):
    workdir = tmp_path / "w"
    flags = ["--n_clients", "30", "--dim", "20", "--n_test_per_client", "200", "--quiet"]
    flags += ["--n_rounds", "60", "--lr_scheduler", "constant", "--log_freq", "60"]
    flags += ["--test_clients_frac", "0.2", "--val_frac", "0.25", "--validation", "--workdir", str(workdir)]
    assert main(flags) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["n_clients"] == 24 and summary["n_unseen_clients"] == 6
    assert "val_accuracy" in summary and "test_accuracy" not in summary
    # Unseen clients, with only their pi fitted, do about as well as the training clients.
    assert summary["unseen_test_accuracy"] > 0.7
    assert summary["unseen_test_accuracy"] > summary["val_accuracy"] - 0.08


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--val_frac", "1"], "--val_frac must be in [0, 1)"),
        (["--val_frac", "-0.1"], "--val_frac must be in [0, 1)"),
        (["--test_clients_frac", "1"], "--test_clients_frac must be in [0, 1)"),
        (["--validation"], "--validation needs --val_frac"),
    ],
)
def test_holdout_flag_validation(tmp_path, capsys, flags, message):
    assert main([*flags, "--workdir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
