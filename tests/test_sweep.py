"""Sweeps: runs stacked on a leading axis and compiled once give, run by run, the metrics of the
same runs made one at a time; lists are refused where they would change shapes."""

import dataclasses
import json

import numpy as np
import pytest
from helpers import tiny_binary_data, tiny_config

from fedem_jax.algorithms import registry
from fedem_jax.errors import ConfigError
from fedem_jax.main import main
from fedem_jax.reporting.plot import load_run, mean_curves
from fedem_jax.reporting.plot import main as plot_main
from fedem_jax.settings.cli import resolve
from fedem_jax.training.loop import run

TIMING = ("seconds_per_round", "eval_seconds")
SWEPT_BY_EVERY_METHOD = ("seed",)


def _rows(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def _metrics(row):
    return {k: v for k, v in row.items() if k not in (*TIMING, "run") and not isinstance(v, list)}


def _second_value(default: float) -> float:
    return 0.5 * default if default > 0 else 0.5


def _method_lists(name: str) -> dict:
    """Two values of every float hyperparameter of the method that may be swept."""
    fields = dataclasses.fields(registry.get(name).hyperparams)
    floats = [f for f in fields if f.type in (float, "float") and f.metadata.get("sweep", True)]
    return {f.name: [f.default, _second_value(f.default)] for f in floats}


def _check_runs_match_single_runs(tmp_path, data, picks, **settings):
    sweep_cfg = tiny_config(tmp_path / "sweep", checkpoint_every=0, tensorboard=False, **settings)
    run(sweep_cfg, data=data, log=lambda *_: None)
    rows = _rows(tmp_path / "sweep")
    runs = sweep_cfg.runs()
    for i in picks(len(runs)):
        single = sweep_cfg.for_run(runs[i])
        single = single.replace(workdir=str(tmp_path / f"single{i}"))
        run(single, data=data, log=lambda *_: None)
        want = [_metrics(r) for r in _rows(tmp_path / f"single{i}")]
        got = [_metrics(r) for r in rows if r["run"] == i]
        assert [r["round"] for r in got] == [r["round"] for r in want]
        for g, w in zip(got, want, strict=True):
            assert {k: g[k] for k in runs[i]} == runs[i]
            for key, value in w.items():
                np.testing.assert_allclose(g[key], value, rtol=2e-5, atol=1e-6, err_msg=f"run {i} {key}")
    return rows, runs


@pytest.mark.parametrize("method", [m for m in registry.methods() if m != "FedBN"])
def test_each_run_of_a_sweep_matches_its_single_run(tmp_path, method):
    """Seeds and every float hyperparameter of the method as lists: the first and the last run of
    the grid (all first values, all second values) against single runs of the same settings."""
    caps = registry.get(method).capabilities
    rows, runs = _check_runs_match_single_runs(
        tmp_path, tiny_binary_data(), lambda n: (0, n - 1), method=method, parallel_runs=2,
        n_learners=2 if caps.components else 1, seed=[1, 2], **_method_lists(method),
        **({"head": "Dense_0/bias"} if method in ("FedPer", "FedRep") else {}),
    )  # fmt: skip
    assert len(runs) == 2 ** (1 + len(_method_lists(method)))
    last = [r for r in rows if r["run"] == len(runs) - 1]
    first = [r for r in rows if r["run"] == 0]
    assert last[-1]["train_loss"] != first[-1]["train_loss"]  # the runs differ


def test_training_settings_sweep(tmp_path):
    """lr, momentum and weight decay traced per run, chunked three runs at a time, as one program."""
    _check_runs_match_single_runs(
        tmp_path, tiny_binary_data(), lambda n: range(n), method="FedAvg", n_learners=1,
        lr=[0.1, 0.05], momentum=[0.0, 0.9], weight_decay=[5e-4, 0.0], runs_per_chunk=3, parallel_runs=1,
    )  # fmt: skip


def test_a_sampled_sweep_with_clients_one_at_a_time_loops_its_runs(tmp_path):
    """Half the clients a round, clients one at a time: the runs are looped, not vmapped (each
    skips the clients it did not sample), and every run gives its single run's rows."""
    data = tiny_binary_data(sizes=(9, 14, 6, 11, 8, 12))
    _check_runs_match_single_runs(
        tmp_path, data, lambda n: range(n), seed=[1, 2, 3], sampling_rate=0.5, client_chunk=1,
        parallel_runs=1, n_rounds=3,
    )  # fmt: skip
    with open(tmp_path / "sweep" / "summary.json") as f:
        assert json.load(f)["layout"]["runs_per_chunk"] == 1


def test_groups_of_runs_at_once_give_the_one_program_metrics(tmp_path):
    """Three runs in two groups at once (sizes 2 and 1: two compiled programs, two threads) and
    the same sweep as one program write the same rows, to float rounding."""
    rows = {}
    for groups in (2, 1):
        cfg = tiny_config(tmp_path / str(groups), seed=[1, 2, 3], parallel_runs=groups, n_rounds=3)
        summary = run(cfg, data=tiny_binary_data(), log=lambda *_: None)
        assert summary["layout"]["parallel_runs"] == groups
        rows[groups] = _rows(tmp_path / str(groups))
    assert len(rows[2]) == len(rows[1]) == 3 * 4
    for grouped, whole in zip(rows[2], rows[1], strict=True):
        assert (grouped["run"], grouped["round"]) == (whole["run"], whole["round"])
        for key, value in _metrics(whole).items():
            np.testing.assert_allclose(grouped[key], value, rtol=2e-5, atol=1e-6, err_msg=key)
    assert rows[2][-1]["train_loss"] != rows[2][-2]["train_loss"]  # the runs differ


def test_sweep_summary_has_mean_std_runs_and_best(tmp_path):
    small = ["--n_clients", "8", "--dim", "6", "--n_test_per_client", "20", "--n_rounds", "2", "--quiet"]
    workdir = tmp_path / "run"
    flags = ["--seeds", "1,2", "--lr", "0.03,0.1", "--val_frac", "0.25", "--validation"]
    assert main([*small, *flags, "--log_freq", "1", "--workdir", str(workdir)]) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    finals = [r for r in _rows(workdir) if r["round"] == 2]
    assert len(finals) == 4 and summary["n_runs"] == 4
    accs = [r["val_accuracy"] for r in finals]
    assert summary["val_accuracy"] == pytest.approx(np.mean(accs))
    assert summary["val_accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
    by_lr = {lr: np.mean([r["val_accuracy"] for r in finals if r["lr"] == lr]) for lr in (0.03, 0.1)}
    best_lr = max(by_lr, key=by_lr.get)
    assert summary["best"] == {"by": "val_accuracy", "value": pytest.approx(by_lr[best_lr]), "lr": best_lr}
    assert [r["seed"] for r in summary["runs"]] == [1, 2, 1, 2]
    csv_runs = {line.split(",")[0] for line in (workdir / "clients.csv").read_text().splitlines()[1:]}
    assert csv_runs == {"0", "1", "2", "3"}
    lines = mean_curves(load_run(str(workdir)), "val_accuracy")
    assert [label.split(") ")[-1] for label, *_ in lines] == ["lr 0.03 (mean of 2)", "lr 0.1 (mean of 2)"]
    label, rounds, mean, std = lines[1]
    at_2 = [r["val_accuracy"] for r in finals if r["lr"] == 0.1]
    assert (
        rounds == [0, 1, 2]
        and mean[-1] == pytest.approx(np.mean(at_2))
        and std[-1] == pytest.approx(np.std(at_2, ddof=1))
    )
    assert plot_main([str(workdir), "--out", str(tmp_path / "plots")]) == 0


def test_one_seed_is_exactly_a_single_run(tmp_path):
    small = ["--n_clients", "8", "--dim", "6", "--n_test_per_client", "20", "--n_rounds", "2", "--quiet"]
    assert main([*small, "--seeds", "7", "--workdir", str(tmp_path / "a")]) == 0
    assert main([*small, "--seed", "7", "--workdir", str(tmp_path / "b")]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(_rows(tmp_path / "a")) == strip(_rows(tmp_path / "b"))


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--n_learners", "2,3"], "--n_learners takes one value, got 2: it changes the program's shapes"),
        (["--model", "linear,mlp"], "--model: unknown value 'linear,mlp'"),
        (["--lr", "0.1,0.1"], "--lr lists a value twice"),
        (["--lr", "0.1,-1"], "--lr must be > 0, got -1.0"),
        (["--seed", "1", "--seeds", "1,2"], "give --seed or --seeds, not both"),
        (["--method", "D-FedEM", "--graph_p", "0.3,0.5"], "--graph_p takes one value"),
    ],
)
def test_bad_lists_are_refused(tmp_path, flags, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve([*flags, "--workdir", str(tmp_path)])


SMALL = ["--plots", "false", "--n_clients", "8", "--dim", "6", "--n_test_per_client", "20"]
SMALL += ["--quiet", "--log_freq", "1"]


def test_a_diverging_run_is_masked_out_while_the_others_go_on(tmp_path, capsys):
    workdir = tmp_path / "run"
    flags = ["--n_rounds", "3", "--lr", "0.03,1e30", "--seeds", "1,2", "--workdir", str(workdir)]
    assert main([*SMALL[:-3], *flags, "--log_freq", "1"]) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["n_diverged"] == 2
    assert {r["run"]: "diverged_at" in r for r in summary["runs"]} == {0: False, 1: False, 2: True, 3: True}
    assert all(np.isfinite(r["train_loss"]) for r in _rows(workdir))
    assert {r["run"] for r in _rows(workdir) if r["round"] == 3} == {0, 1}
    assert summary["test_accuracy"] == pytest.approx(
        np.mean([summary["runs"][i]["test_accuracy"] for i in (0, 1)])
    )
    assert main([*SMALL, "--n_rounds", "2", "--lr", "1e30,2e30", "--workdir", str(tmp_path / "all")]) == 3
    assert "non-finite" in capsys.readouterr().err


def test_a_sweep_resumes_as_a_whole(tmp_path):
    flags = ["--seeds", "1,2", "--mu", "0.01,0.1", "--method", "FedProx", "--checkpoint_every", "1"]
    flags += ["--lr_scheduler", "constant"]  # multi_step's milestones depend on --n_rounds
    assert main([*SMALL, *flags, "--n_rounds", "4", "--workdir", str(tmp_path / "whole")]) == 0
    assert main([*SMALL, *flags, "--n_rounds", "2", "--workdir", str(tmp_path / "parts")]) == 0
    assert main([*SMALL, *flags, "--n_rounds", "4", "--workdir", str(tmp_path / "parts")]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(_rows(tmp_path / "parts")) == strip(_rows(tmp_path / "whole"))


def test_sweep_with_unseen_clients(tmp_path):
    workdir = tmp_path / "run"
    flags = ["--n_rounds", "2", "--seeds", "1,2", "--test_clients_frac", "0.25", "--workdir", str(workdir)]
    assert main([*SMALL, *flags]) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    per_run = [r["unseen_test_accuracy"] for r in summary["runs"]]
    assert summary["unseen_test_accuracy"] == pytest.approx(np.mean(per_run))


@pytest.mark.parametrize("metric,pick", [("loss", min), ("accuracy", max), ("accuracy_bottom10", max)])
def test_best_setting_minimises_loss_and_maximises_accuracy(tmp_path, metric, pick):
    """``--select_metric loss`` names the setting of the lowest mean loss over seeds, the
    accuracies the highest (hand-made final rows: no training)."""
    from fedem_jax.training.sweep import best_setting

    cfg = tiny_config(tmp_path, lr=[0.1, 0.2, 0.3], seeds=[1, 2], select_metric=metric)
    runs = cfg.runs()
    values = {0.1: (0.30, 0.50), 0.2: (0.10, 0.20), 0.3: (0.60, 0.70)}  # per lr: one value per seed
    finals = {
        i: {
            f"test_{m}": values[run["lr"]][run["seed"] - 1] for m in ("loss", "accuracy", "accuracy_bottom10")
        }
        for i, run in enumerate(runs)
    }
    means = {lr: np.mean(v) for lr, v in values.items()}
    best = best_setting(finals, runs, list(range(len(runs))), cfg)
    assert best["lr"] == pick(means, key=means.get) and best["by"] == f"test_{metric}"
    assert best["value"] == pytest.approx(means[best["lr"]])
