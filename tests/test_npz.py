"""Your own data: the .npz formats, model choice by shape, and every bad-input message."""

import json

import numpy as np
import pytest
from helpers import assert_pinned

from fedem_jax.data.npz_source import load_npz
from fedem_jax.main import main
from fedem_jax.settings.schema import DataConfig, make_config


def _single_file(path, n_clients=6, dim=5, with_split=False):
    rng = np.random.default_rng(0)  # each test its own draws: pinned values do not depend on test order
    sizes = rng.integers(12, 30, n_clients)
    client = np.repeat(np.arange(n_clients), sizes)
    x = rng.normal(size=(len(client), dim)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    extra = {"is_test": rng.random(len(client)) < 0.25} if with_split else {}
    np.savez(path, x=x, y=y, client=client, **extra)
    return x, y, client, extra


def test_single_file_end_to_end(tmp_path):
    _single_file(tmp_path / "data.npz")
    workdir = tmp_path / "w"
    flags = ["--dataset", "npz", "--data_path", str(tmp_path / "data.npz"), "--n_rounds", "2", "--quiet"]
    assert main([*flags, "--workdir", str(workdir)]) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["model"] == "mlp" and summary["n_clients"] == 6
    assert 0 <= summary["test_accuracy"] <= 1
    assert_pinned(summary, test_accuracy=0.5909090909090909, test_loss=0.8993658477609808)


def test_is_test_field_is_respected(tmp_path):
    x, _, client, extra = _single_file(tmp_path / "data.npz", with_split=True)
    cfg = make_config(dataset="npz", data_path=str(tmp_path / "data.npz"), workdir=str(tmp_path / "run"))
    data = load_npz(cfg.data)
    assert data.task.num_classes == 3
    expected_test = [int(extra["is_test"][client == c].sum()) for c in range(6)]
    assert np.asarray(data.test.counts).tolist() == expected_test
    assert int(np.asarray(data.train.counts).sum()) + sum(expected_test) == len(x)


def test_folder_of_image_clients_uses_a_cnn(tmp_path):
    folder = tmp_path / "clients"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for c in range(3):
        n = 20 + c
        np.savez(folder / f"client_{c}.npz", x=rng.random((n, 12, 12)), y=rng.integers(0, 4, n),
                 x_test=rng.random((5, 12, 12)), y_test=rng.integers(0, 4, 5))  # fmt: skip
    workdir = tmp_path / "w"
    flags = [
        "--dataset",
        "npz",
        "--data_path",
        str(folder),
        "--n_rounds",
        "1",
        "--batch_size",
        "8",
        "--quiet",
    ]
    assert main([*flags, "--workdir", str(workdir)]) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["model"] == "cnn" and summary["n_clients"] == 3
    assert_pinned(summary, test_accuracy=0.2, test_loss=1.4320788065592447)


def _bad(tmp_path, capsys, arrays, name="bad.npz"):
    np.savez(tmp_path / name, **arrays)
    rc = main(["--dataset", "npz", "--data_path", str(tmp_path / name), "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def test_missing_field_names_file_and_field(tmp_path, capsys):
    rc, err = _bad(tmp_path, capsys, {"x": np.zeros((4, 2)), "y": np.zeros(4, int)})
    assert rc == 1 and "bad.npz: missing field 'client'" in err


def test_mismatched_rows(tmp_path, capsys):
    rc, err = _bad(
        tmp_path, capsys, {"x": np.zeros((4, 2)), "y": np.zeros(3, int), "client": np.zeros(4, int)}
    )
    assert rc == 1 and "'x' has 4 rows but 'y' has 3" in err


def test_float_labels_are_refused(tmp_path, capsys):
    rc, err = _bad(tmp_path, capsys, {"x": np.zeros((4, 2)), "y": np.zeros(4), "client": np.zeros(4, int)})
    assert rc == 1 and "field 'y' must be a 1-D integer label array" in err


def test_not_an_npz_file(tmp_path, capsys):
    (tmp_path / "junk.npz").write_text("not a zip")
    rc = main(
        ["--dataset", "npz", "--data_path", str(tmp_path / "junk.npz"), "--workdir", str(tmp_path / "w")]
    )
    assert rc == 1 and "not a readable .npz file" in capsys.readouterr().err


def test_missing_path_and_missing_flag(tmp_path, capsys):
    rc = main(
        ["--dataset", "npz", "--data_path", str(tmp_path / "nope.npz"), "--workdir", str(tmp_path / "w")]
    )
    assert rc == 1 and "does not exist" in capsys.readouterr().err
    assert main(["--dataset", "npz", "--workdir", str(tmp_path / "w")]) == 2
    assert "--data_path is required with --dataset npz" in capsys.readouterr().err


def test_tiny_clients_are_dropped_with_a_warning(tmp_path):
    client, rng = np.array([0] * 10 + [1] + [2] * 10), np.random.default_rng(2)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(21, 3)), y=rng.integers(0, 2, 21), client=client)
    with pytest.warns(UserWarning, match="dropped 1 of 3 clients"):
        data = load_npz(DataConfig(dataset="npz", data_path=str(tmp_path / "d.npz")))
    assert data.n_clients == 2


def test_femnist_cnn_parameter_count():
    import jax
    import jax.numpy as jnp

    from fedem_jax.models import build_model, count_params

    params = build_model("femnist_cnn", 62).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    assert count_params(params) == 2_278_334
