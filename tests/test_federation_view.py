"""Seeing the federation: partitioners, partition and mixture plots, per-client history, and how
well the learned mixture weights recover the true ones."""

import itertools
import json
import os

import numpy as np
import pytest

from fedem_jax.data.partition import classes_per_client, iid
from fedem_jax.main import main
from fedem_jax.reporting import federation_plots
from fedem_jax.reporting.plot import main as plot_main
from fedem_jax.training.evaluation import pi_distance_to_truth

FLAGS = ["--n_clients", "12", "--n_test_per_client", "30", "--lr_scheduler", "constant", "--quiet"]
FLAGS += ["--log_freq", "2", "--tensorboard", "false", "--n_learners", "3"]


def _is_png(path) -> bool:
    import matplotlib.image

    return os.path.getsize(path) > 1000 and matplotlib.image.imread(path).ndim == 3


def test_iid_deals_every_sample_once_in_equal_parts():
    parts = iid(103, 10, np.random.default_rng(0))
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(103))


@pytest.mark.parametrize("n_clients,k", [(10, 2), (7, 3), (4, 10)])
def test_classes_per_client_gives_k_distinct_labels_and_shares_each_label(n_clients, k):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 2000)
    parts = classes_per_client(labels, n_clients, k, rng)
    assert all(len(np.unique(labels[p])) == k for p in parts)
    everything = np.concatenate(parts)
    assert len(np.unique(everything)) == len(everything)  # disjoint
    if n_clients * k >= 10:
        np.testing.assert_array_equal(np.sort(everything), np.arange(2000))
    holders = [sum(label in set(labels[p]) for p in parts) for label in range(10)]
    assert max(holders) - min(holders) <= 1
    for label in range(10):  # a label's samples split equally (± 1) among its holders
        shares = [np.sum(labels[p] == label) for p in parts if np.any(labels[p] == label)]
        assert max(shares) - min(shares) <= 1
    with pytest.raises(ValueError, match="only 10 labels"):
        classes_per_client(labels, n_clients, 11, rng)


def test_pi_distance_to_truth_is_the_best_permutation():
    rng = np.random.default_rng(2)
    truth = rng.dirichlet(np.ones(4), size=30)
    learned = rng.dirichlet(np.ones(4), size=30)
    brute = min(
        0.5 * np.abs(learned[:, list(perm)] - truth).sum(axis=1).mean()
        for perm in itertools.permutations(range(4))
    )
    assert pi_distance_to_truth(learned, truth) == pytest.approx(brute, rel=1e-12)
    assert pi_distance_to_truth(truth[:, [2, 0, 3, 1]], truth) == pytest.approx(0.0, abs=1e-12)
    one_hot = np.eye(2)[[0, 1, 0]]
    assert pi_distance_to_truth(one_hot, one_hot[:, ::-1] * 0 + [[0.5, 0.5]]) == pytest.approx(0.5)


def test_label_counts_counts_per_client():
    from tests.helpers import tiny_binary_data

    data = tiny_binary_data()
    counts = federation_plots.label_counts(data.train, 2)
    y, ids = np.asarray(data.train.y), np.asarray(data.train.client_id)
    expected = [[np.sum((ids == c) & (y == k)) for k in range(2)] for c in range(3)]
    np.testing.assert_array_equal(counts, expected)


def test_a_run_writes_partition_mixture_and_per_client_history(tmp_path):
    workdir = tmp_path / "run"
    assert main([*FLAGS, "--n_rounds", "4", "--workdir", str(workdir)]) == 0
    for name in ("partition.png", "mixture.png", "clients_over_time.png"):
        assert _is_png(workdir / name), name
    partition = json.loads((workdir / "partition.json").read_text())
    assert partition["n_classes"] == 2 and len(partition["train"]) == 12
    assert sum(map(sum, partition["test"])) == 12 * 30
    records = [json.loads(line) for line in (workdir / "clients.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 2, 4]
    for record in records:
        assert len(record["test_accuracy"]) == len(record["test_loss"]) == len(record["pi"]) == 12
        np.testing.assert_allclose(np.sum(record["pi"], axis=1), 1.0, atol=1e-5)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    for row, record in zip(rows, records, strict=True):  # the per-client values behind the rows
        assert np.mean(record["test_accuracy"]) == pytest.approx(row["test_accuracy"], abs=1e-5)
        assert 0 <= row["pi_tv_to_truth"] <= 1
    out = tmp_path / "plots"
    assert plot_main(["--partition", "--mixture", str(workdir), "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["clients_over_time.png", "mixture.png", "partition.png"]


def test_per_client_history_resumes_without_duplicates(tmp_path):
    straight = tmp_path / "straight"
    assert main([*FLAGS, "--n_rounds", "4", "--checkpoint_every", "2", "--workdir", str(straight)]) == 0
    resumed = tmp_path / "resumed"
    assert main([*FLAGS, "--n_rounds", "2", "--checkpoint_every", "2", "--workdir", str(resumed)]) == 0
    with open(resumed / "clients.jsonl", "a") as f:  # a crash after this line, before its checkpoint
        f.write(json.dumps({"round": 3, "test_accuracy": [0.0]}) + "\n")
    assert main([*FLAGS, "--n_rounds", "4", "--checkpoint_every", "2", "--workdir", str(resumed)]) == 0
    assert (resumed / "clients.jsonl").read_text() == (straight / "clients.jsonl").read_text()


def test_partition_plot_of_many_labels_is_a_heatmap(tmp_path):
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 9, (15, 40)).tolist()
    (tmp_path / "partition.json").write_text(
        json.dumps({"dataset": "many", "n_classes": 40, "train": counts, "test": counts})
    )
    path = federation_plots.plot_partition(str(tmp_path), str(tmp_path))
    assert _is_png(path)


def test_plot_of_a_folder_without_outputs_is_one_line(tmp_path, capsys):
    assert plot_main(["--mixture", str(tmp_path)]) == 1
    assert "clients.jsonl is missing" in capsys.readouterr().err
