"""FEMNIST and Shakespeare from tiny LEAF JSON files that the tests write; the LSTM model; every
malformed-input case names the file and the field."""

import json
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_pinned

from fedem_jax.data import load_dataset
from fedem_jax.main import main
from fedem_jax.models import build_model, count_params
from fedem_jax.settings.cli import resolve


def _write(path, users, user_data):
    payload = {"users": users, "num_samples": [len(user_data[u]["y"]) for u in users], "user_data": user_data}
    path.write_text(json.dumps(payload))
    return path


def femnist_dir(tmp_path, n_users=20, per_user=10, seed=0):
    rng = np.random.default_rng(seed)
    folder = tmp_path / "femnist"
    folder.mkdir()
    users = [f"f{i:04d}" for i in range(n_users)]
    data = {
        u: {"x": rng.random((per_user, 784)).round(3).tolist(), "y": rng.integers(0, 62, per_user).tolist()}
        for u in users
    }
    half = n_users // 2
    _write(folder / "all_data_0.json", users[:half], {u: data[u] for u in users[:half]})
    _write(folder / "all_data_1.json", users[half:], {u: data[u] for u in users[half:]})
    return folder


TEXT = "From fairest creatures we desire increase, That thereby beauty's rose might never die. " * 3


def shakespeare_file(tmp_path, n_users=3, n_samples=10):
    users = [f"PLAY_ROLE{i}" for i in range(n_users)]
    data = {}
    for i, u in enumerate(users):
        starts = range(i, i + n_samples)
        data[u] = {"x": [TEXT[s : s + 80] for s in starts], "y": [TEXT[s + 80] for s in starts]}
    return _write(tmp_path / "shakespeare.json", users, data)


def _cfg(tmp_path, *flags):
    return resolve([*flags, "--workdir", str(tmp_path / "w")])


def test_femnist_keeps_a_fraction_of_writers_and_splits_each(tmp_path):
    folder = femnist_dir(tmp_path)
    data = load_dataset(
        _cfg(tmp_path, "--dataset", "femnist", "--data_path", str(folder), "--data_frac", "0.5")
    )
    assert data.n_clients == 10  # 50 % of the 20 writers, read from two files
    assert data.train.x.shape[1:] == (28, 28, 1)
    np.testing.assert_array_equal(np.asarray(data.train.counts), 8)
    np.testing.assert_array_equal(np.asarray(data.test.counts), 2)
    again = load_dataset(
        _cfg(tmp_path, "--dataset", "femnist", "--data_path", str(folder), "--data_frac", "0.5")
    )
    np.testing.assert_array_equal(np.asarray(data.train.x), np.asarray(again.train.x))  # seeded


def test_shakespeare_windows_targets_and_time_ordered_split(tmp_path):
    path = shakespeare_file(tmp_path)
    data = load_dataset(_cfg(tmp_path, "--dataset", "shakespeare", "--data_path", str(path)))
    assert data.task.sequence and data.task.num_classes == 100 == len(string.printable)
    x, y = np.asarray(data.train.x), np.asarray(data.train.y)
    assert x.shape[1:] == (80,) and y.shape[1:] == (80,)
    np.testing.assert_array_equal(x[0, 1:], y[0, :-1])  # the target is the next character
    decoded = "".join(string.printable[i] for i in x[0])
    assert decoded == TEXT[:80]
    # Time order: client 0's train windows start at 0..7, its test windows at 8, 9.
    np.testing.assert_array_equal(np.asarray(data.train.counts), 8)
    test_first = "".join(string.printable[i] for i in np.asarray(data.test.x)[0])
    assert test_first == TEXT[8:88]


def test_lstm_has_spec_parameter_count():
    model = build_model("lstm", 100)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 80), jnp.int32))["params"]
    assert count_params(params) == 825_220


@pytest.mark.parametrize("dataset", ["femnist", "shakespeare"])
def test_leaf_datasets_end_to_end(tmp_path, dataset):
    path = femnist_dir(tmp_path) if dataset == "femnist" else shakespeare_file(tmp_path)
    workdir = tmp_path / "run"
    rc = main(
        ["--dataset", dataset, "--data_path", str(path), "--n_rounds", "2", "--batch_size", "4",
         "--n_learners", "2", "--data_frac", "1.0", "--workdir", str(workdir), "--quiet",
         "--checkpoint_every", "0"]
    )  # fmt: skip
    assert rc == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert np.isfinite(summary["test_loss"]) and 0 <= summary["test_accuracy"] <= 1
    pinned = {"femnist": (0.0, 4.130271363258362), "shakespeare": (0.0, 4.59500519434611)}[dataset]
    assert_pinned(summary, *pinned)


def _bad(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    return path


def _user(x, y):
    return json.dumps({"users": ["a"], "user_data": {"a": {"x": x, "y": y}}})


@pytest.mark.parametrize(
    "dataset,content,message",
    [
        ("femnist", "{not json", "not readable as JSON"),
        ("femnist", json.dumps({"users": ["a"]}), "missing field 'user_data'"),
        ("femnist", json.dumps({"users": ["a"], "user_data": {"a": {"x": []}}}), "fields 'x' and 'y'"),
        ("femnist", _user([[0.0] * 784], [1, 2]), "1 x but 2 y"),
        ("femnist", _user([[0.0] * 5] * 2, [1, 2]), "784 numbers"),
        ("femnist", _user([[0.0] * 784] * 2, [1, 99]), "[0, 62)"),
        ("shakespeare", _user(["abc", "abd"], ["d", "e"]), "80-character"),
    ],
)  # fmt: skip
def test_malformed_leaf_files_name_the_file_and_field(tmp_path, capsys, dataset, content, message):
    path = _bad(tmp_path, "bad.json", content)
    rc = main(
        [
            "--dataset",
            dataset,
            "--data_path",
            str(path),
            "--data_frac",
            "1.0",
            "--workdir",
            str(tmp_path / "w"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and message in err and "Traceback" not in err
    if "JSON" in message or "field" in message:
        assert "bad.json" in err


def test_missing_leaf_data_says_how_to_prepare(tmp_path, capsys):
    rc = main(
        [
            "--dataset",
            "shakespeare",
            "--data_path",
            str(tmp_path / "nowhere"),
            "--workdir",
            str(tmp_path / "w"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "preprocess.sh" in err and "nowhere" in err
    assert main(["--dataset", "femnist", "--workdir", str(tmp_path / "w")]) == 2
    assert "--data_path is required with --dataset femnist" in capsys.readouterr().err


def test_small_clients_are_dropped_with_a_count(tmp_path):
    path = shakespeare_file(tmp_path, n_users=3)
    content = json.loads(path.read_text())
    content["users"].append("tiny")
    content["user_data"]["tiny"] = {"x": [TEXT[:80]], "y": [TEXT[80]]}
    path.write_text(json.dumps(content))
    with pytest.warns(UserWarning, match="dropped 1 of 4 clients"):
        data = load_dataset(_cfg(tmp_path, "--dataset", "shakespeare", "--data_path", str(path)))
    assert data.n_clients == 3
