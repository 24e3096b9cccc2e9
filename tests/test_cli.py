"""The command line end to end: outputs, validation errors, and FedEM learning on synthetic data."""

import json

import numpy as np
import pytest

from fedem_jax.algorithms import registry
from fedem_jax.errors import ConfigError
from fedem_jax.main import main
from fedem_jax.settings.cli import resolve
from fedem_jax.settings.schema import flag_name, make_config, section_fields

SMALL = ["--n_clients", "24", "--dim", "20", "--n_test_per_client", "200", "--quiet", "--plots", "false"]


def _run(tmp_path, name, *flags):
    workdir = tmp_path / name
    rc = main([*SMALL, "--workdir", str(workdir), *flags])
    assert rc == 0
    return workdir, json.loads((workdir / "summary.json").read_text())


def test_outputs_and_exact_round_count(tmp_path):
    workdir, summary = _run(tmp_path, "run", "--n_rounds", "3", "--log_freq", "2")
    for key in ("dataset", "method", "n_rounds", "test_accuracy", "test_accuracy_bottom10", "train_accuracy"):
        assert key in summary
    assert summary["n_rounds"] == 3
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["seconds_per_round"] > 0
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 2, 3]  # round 0, every log_freq, the last
    assert json.loads((workdir / "config.json").read_text())["n_rounds"] == 3


def test_same_seed_gives_identical_metrics(tmp_path):
    def metrics(name):
        workdir, _ = _run(tmp_path, name, "--n_rounds", "4", "--log_freq", "2", "--sampling_rate", "0.5")
        rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]

    assert metrics("a") == metrics("b")


def test_fedem_learns_and_beats_fedavg(tmp_path):
    flags = ["--n_rounds", "150", "--log_freq", "150", "--lr_scheduler", "constant"]
    _, fedem = _run(tmp_path, "fedem", *flags)
    _, fedavg = _run(tmp_path, "fedavg", "--method", "FedAvg", *flags)
    assert fedavg["n_learners"] == 1
    assert fedem["test_accuracy"] > 0.75
    assert fedem["test_accuracy"] > fedavg["test_accuracy"] + 0.05


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--n_learners", "0"], "--n_learners must be >= 1"),
        (["--sampling_rate", "0"], "--sampling_rate must be in (0, 1]"),
        (["--sampling_rate", "1.5"], "--sampling_rate must be in (0, 1]"),
        (["--lr", "-1"], "--lr must be > 0"),
        (["--batch_size", "0"], "--batch_size must be >= 1"),
        (["--method", "FedFoo"], "--method: unknown value 'FedFoo'; valid: FedEM, FedAvg"),
        (["--dataset", "mnist"], "--dataset: unknown dataset 'mnist'; valid: synthetic, cifar10"),
        (["--model", "resnet"], "--model: unknown value 'resnet'"),
        (["--optimizer", "rmsprop"], "--optimizer: unknown value 'rmsprop'"),
        (["--lr_scheduler", "step"], "--lr_scheduler: unknown value 'step'"),
        (["--method", "FedAvg", "--n_learners", "3"], "--n_learners must be 1 for FedAvg"),
        (["--n_rounds", "x"], "argument --n_rounds: invalid int value: 'x'"),
        (["--test_frac", "1"], "--test_frac must be in (0, 1)"),
    ],
)
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, flags, message):
    rc = main([*flags, "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unwritable_workdir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = main(["--workdir", str(blocker / "sub")])
    assert rc == 2
    assert "--workdir: cannot create" in capsys.readouterr().err


def test_divergence_is_reported_with_round(tmp_path, capsys):
    rc = main(
        [*SMALL, "--workdir", str(tmp_path / "w"), "--lr", "1e30", "--n_rounds", "5", "--log_freq", "1"]
    )
    err = capsys.readouterr().err
    assert rc == 3
    assert "at round" in err and "lower --lr" in err


def test_fedavg_defaults_to_one_learner(tmp_path):
    _, summary = _run(tmp_path, "avg", "--method", "FedAvg", "--n_rounds", "1")
    assert summary["n_learners"] == 1 and np.isfinite(summary["test_loss"])


def test_config_sections_round_trip_through_flat_flags(tmp_path):
    """Every flag is one field of one section (or one method hyperparameter); the flat dict of
    ``config.json`` rebuilds the same sectioned config, and ``replace`` changes only what it names."""
    cfg = resolve(
        ["--method", "FedProx", "--lr", "0.2", "--model", "mlp", "--mu", "0.3", "--workdir", str(tmp_path)]
    )
    assert (cfg.training.lr, cfg.model.name, cfg.hyperparams.mu) == (0.2, "mlp", 0.3)
    flat = cfg.to_dict()
    assert make_config(**flat) == cfg
    flags = [flag_name(f) for _, f in section_fields()]
    assert len(flags) == len(set(flags)) and not set(flags) & set(registry.hyperparam_fields())
    changed = cfg.replace(n_rounds=7, momentum=0.5)
    assert (changed.training.n_rounds, changed.training.momentum, changed.training.lr) == (7, 0.5, 0.2)
    assert changed.to_dict().keys() == flat.keys()
    with pytest.raises(ConfigError, match="--lr must be > 0"):
        cfg.replace(lr=0.0)
    with pytest.raises(TypeError, match="unknown settings: not_a_flag"):
        make_config(**flat, not_a_flag=1)
