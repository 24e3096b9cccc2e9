"""Two processes on one machine (CPU collectives over localhost), 2 devices each: the same
federation as one process, only process 0 writes, and a resumed distributed run continues; the
same with the federation on the host (each process reading its blocks of the cohort)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from fedem_jax.main import main

FLAGS = ["--n_clients", "12", "--n_test_per_client", "40", "--n_rounds", "2", "--log_freq", "1",
         "--tensorboard", "false", "--quiet", "--plots", "false"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _launch(workdirs, extra=()):
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedem_jax.main",
                *FLAGS,
                *extra,
                "--distributed",
                "--coordinator_address",
                f"localhost:{port}",
                "--num_processes",
                "2",
                "--process_id",
                str(i),
                "--workdir",
                str(workdirs[i]),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(tmp_path):
    workdirs = [tmp_path / "p0", tmp_path / "p1"]
    _launch(workdirs, ["--checkpoint_every", "0"])
    assert main([*FLAGS, "--checkpoint_every", "0", "--workdir", str(tmp_path / "one")]) == 0
    _assert_same_rows(_rows(workdirs[0]), _rows(tmp_path / "one"))
    assert json.loads((workdirs[0] / "summary.json").read_text())["n_clients"] == 12
    assert not workdirs[1].exists() or not any(workdirs[1].iterdir())  # only process 0 writes


def _assert_same_rows(rows, expected):
    assert [row["round"] for row in rows] == [row["round"] for row in expected]
    for a, b in zip(rows, expected, strict=True):
        np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(a["test_loss"], b["test_loss"], rtol=1e-5)
        assert a["test_accuracy"] == b["test_accuracy"] and a["train_accuracy"] == b["train_accuracy"]


def test_distributed_checkpoints_resume(tmp_path):
    shared, constant = tmp_path / "shared", ["--lr_scheduler", "constant"]  # milestones move with n_rounds
    _launch([shared, shared], ["--checkpoint_every", "1", *constant])
    _launch([shared, shared], ["--checkpoint_every", "1", "--n_rounds", "3", *constant])
    # The resumed rows are those of one uninterrupted single-process run of three rounds.
    flags = [
        *FLAGS,
        *constant,
        "--n_rounds",
        "3",
        "--checkpoint_every",
        "0",
        "--workdir",
        str(tmp_path / "one"),
    ]
    assert main(flags) == 0
    _assert_same_rows(_rows(shared), _rows(tmp_path / "one"))


def test_host_cohorts_over_two_processes_resume_to_one_process_rows(tmp_path):
    """``--federation host`` from a store: each process reads only its devices' blocks of the
    cohort; the rows of a distributed run checkpointed after round 2 and resumed to 3 equal one
    process's."""
    import fedem_jax
    from fedem_jax.data.store import write_store

    data = fedem_jax.load_dataset(fedem_jax.config("synthetic", n_clients=12, n_test_per_client=40))
    store = write_store(data, str(tmp_path / "store"))
    shared = tmp_path / "shared"
    host = ["--federation", "host", "--cohort", "--sampling_rate", "0.5", "--lr_scheduler", "constant"]
    host += ["--dataset", "store", "--data_path", store]
    _launch([shared, shared], [*host, "--checkpoint_every", "1"])
    _launch([shared, shared], [*host, "--checkpoint_every", "1", "--n_rounds", "3"])
    one = tmp_path / "one"
    assert main([*FLAGS, *host, "--n_rounds", "3", "--checkpoint_every", "0", "--workdir", str(one)]) == 0
    _assert_same_rows(_rows(shared), _rows(one))
    table = [np.loadtxt(w / "clients.csv", delimiter=",", skiprows=1) for w in (shared, one)]
    np.testing.assert_allclose(table[0], table[1], atol=2e-6)  # ids, counts, accuracies, pi


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--coordinator_address", "notahost"], "--coordinator_address must be host:port"),
        (["--coordinator_address", "localhost:99999"], "--coordinator_address must be host:port"),
        (["--coordinator_address", "no-such-host.invalid:1234"], "cannot resolve 'no-such-host.invalid'"),
        (["--num_processes", "2", "--process_id", "2"], "--process_id 2 must be below --num_processes 2"),
    ],
)
def test_distributed_setup_errors_are_one_line_exit_2(tmp_path, capsys, flags, message):
    assert main([*FLAGS, "--distributed", *flags, "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_peer_that_never_starts_ends_the_wait_with_one_line(tmp_path):
    """Process 1 of 2 whose coordinator never comes: exit 2 after --distributed_timeout, no abort."""
    flags = ["--distributed", "--coordinator_address", f"localhost:{_free_port()}"]
    flags += ["--num_processes", "2", "--process_id", "1", "--distributed_timeout", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "fedem_jax.main", *FLAGS, *flags, "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: --distributed: not every process joined within 2 s")
