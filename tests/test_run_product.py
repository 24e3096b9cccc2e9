"""Checkpoints, kill-and-resume, refusal of incompatible resumes, outputs and plots."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fedem_jax.main import main
from fedem_jax.reporting.outputs import TIMING_KEYS

# Big enough (about 0.05-0.1 s per round) to be killed mid-run after its first checkpoint.
KILLABLE = [
    "--n_test_per_client",
    "50",
    "--n_clients",
    "100",
    "--n_rounds",
    "40",
    "--log_freq",
    "4",
    "--checkpoint_every",
    "4",
    "--quiet",
    "--plots",
    "false",
]


def _without_timing(payload: dict) -> dict:
    return {
        k: v
        for k, v in payload.items()
        if k not in (*TIMING_KEYS, "compile_seconds", "data_seconds", "total_seconds")
    }


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [_without_timing(json.loads(line)) for line in f]


def _summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        return _without_timing(json.load(f))


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    assert main([*KILLABLE, "--workdir", reference]) == 0

    process = subprocess.Popen(
        [sys.executable, "-m", "fedem_jax.main", *KILLABLE, "--workdir", killed],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = os.path.join(killed, "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline:
        done = [d for d in os.listdir(checkpoints) if d.isdigit()] if os.path.isdir(checkpoints) else []
        if done or process.poll() is not None:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(killed, "summary.json"))

    assert main([*KILLABLE, "--workdir", killed]) == 0
    assert _metrics(killed) == _metrics(reference)
    assert _summary(killed) == _summary(reference)


def test_extending_a_finished_run_equals_a_longer_run(tmp_path):
    flags = ["--n_test_per_client", "20", "--n_clients", "20", "--lr_scheduler", "constant", "--quiet"]
    flags += ["--plots", "false", "--tensorboard", "false"]
    short, longer = str(tmp_path / "short"), str(tmp_path / "long")
    assert (
        main([*flags, "--n_rounds", "4", "--checkpoint_every", "2", "--log_freq", "2", "--workdir", short])
        == 0
    )
    assert (
        main([*flags, "--n_rounds", "6", "--checkpoint_every", "2", "--log_freq", "2", "--workdir", short])
        == 0
    )
    assert (
        main([*flags, "--n_rounds", "6", "--checkpoint_every", "2", "--log_freq", "2", "--workdir", longer])
        == 0
    )
    assert _metrics(short) == _metrics(longer)


def test_resume_with_a_different_experiment_is_refused(tmp_path, capsys):
    flags = ["--n_test_per_client", "20", "--n_clients", "10", "--n_rounds", "2", "--quiet"]
    flags += ["--plots", "false"]
    workdir = str(tmp_path / "w")
    assert main([*flags, "--workdir", workdir]) == 0
    capsys.readouterr()
    assert main([*flags, "--workdir", workdir, "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "holds a checkpoint of a different experiment" in err and "--lr 0.1 -> 0.5" in err


def test_divergence_keeps_last_good_checkpoint(tmp_path, capsys):
    import re

    import numpy as np

    from fedem_jax.training.checkpoint import Checkpointer

    workdir = str(tmp_path / "w")
    flags = ["--n_test_per_client", "20", "--n_clients", "10", "--quiet", "--workdir", workdir]
    # With lr * weight_decay >> 2 the weights grow geometrically and overflow after a few rounds.
    rc = main(
        [*flags, "--lr", "1e6", "--lr_scheduler", "constant", "--n_rounds", "40", "--checkpoint_every", "1"]
    )
    err = capsys.readouterr().err
    assert rc == 3, err
    match = re.search(
        r"non-finite at round (\d+); try a lower --lr .*last good checkpoint \(round (\d+)\)", err
    )
    assert match, err
    bad, good = int(match.group(1)), int(match.group(2))
    assert good == bad - 1 >= 1
    checkpointer = Checkpointer(workdir)
    assert checkpointer.latest_round() == good
    record = checkpointer.restore_record(good)
    assert record["config"]["lr"] == 1e6
    import jax
    import orbax.checkpoint as ocp

    saved = checkpointer.manager.restore(good, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    leaves = jax.tree.leaves(saved["state"])
    assert leaves and all(np.isfinite(np.asarray(leaf)).all() for leaf in leaves)


def test_outputs_clients_csv_tensorboard_and_entropy(tmp_path):
    workdir = str(tmp_path / "w")
    assert (
        main(
            [
                "--n_test_per_client",
                "20",
                "--n_clients",
                "12",
                "--n_rounds",
                "3",
                "--quiet",
                "--workdir",
                workdir,
            ]
        )
        == 0
    )
    with open(os.path.join(workdir, "clients.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {"pi_0", "pi_1", "pi_2", "test_accuracy"} <= set(rows[0])
    assert all(abs(sum(float(r[f"pi_{m}"]) for m in range(3)) - 1) < 1e-4 for r in rows)
    assert any(name.startswith("events") for name in os.listdir(os.path.join(workdir, "tb")))
    row = json.loads(open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()[-1])
    assert 0 <= row["pi_entropy"] <= 1.0987


def test_plot_writes_pngs(tmp_path):
    from fedem_jax.reporting.plot import main as plot_main

    runs = []
    for method in ("FedEM", "FedAvg"):
        workdir = str(tmp_path / method)
        flags = ["--n_test_per_client", "20", "--n_clients", "10", "--n_rounds", "4", "--log_freq", "2"]
        assert main([*flags, "--method", method, "--quiet", "--workdir", workdir]) == 0
        runs.append(workdir)
    out = str(tmp_path / "plots")
    assert plot_main([*runs, "--out", out]) == 0
    for name in ("curves.png", "clients.png"):
        path = os.path.join(out, name)
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(path) > 5000


def test_plot_of_a_non_run_folder_fails_cleanly(tmp_path, capsys):
    from fedem_jax.reporting.plot import main as plot_main

    assert plot_main([str(tmp_path)]) == 1
    assert "metrics.jsonl not found" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--checkpoint_every", "-1"]])
def test_checkpoint_flag_validation(tmp_path, capsys, flags):
    assert main([*flags, "--workdir", str(tmp_path)]) == 2
    assert "--checkpoint_every must be >= 0" in capsys.readouterr().err
