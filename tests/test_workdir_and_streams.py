"""A run never overwrites what it cannot identify, checks every path it writes before the first
byte, keeps other libraries' noise off the terminal and survives a closed or full stdout; bad
values and bad inputs are one line with their exit code."""

import gc
import json
import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from fedem_jax.main import main
from fedem_jax.training import checkpoint
from fedem_jax.training.safety import ThirdPartyLog

FLAGS = ["--n_clients", "5", "--n_test_per_client", "10", "--n_rounds", "2", "--quiet", "--plots", "false",
         "--tensorboard", "false", "--lr_scheduler", "constant"]  # fmt: skip


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _files(workdir) -> dict[str, bytes]:
    return {
        name: open(os.path.join(workdir, name), "rb").read()
        for name in sorted(os.listdir(workdir))
        if os.path.isfile(os.path.join(workdir, name)) and name != ".lock"
    }


def test_results_that_cannot_be_identified_are_never_overwritten(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    no_checkpoints = [*FLAGS, "--checkpoint_every", "0", "--workdir", workdir]
    assert main(no_checkpoints) == 0
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write("{ not json")
    before = _files(workdir)
    assert main([*no_checkpoints, "--lr", "0.5"]) == 2
    line = _one_error(capsys)
    assert "holds results (metrics.jsonl" in line and "config.json is missing or unreadable" in line
    assert _files(workdir) == before  # nothing rewritten
    assert main([*no_checkpoints, "--lr", "0.5", "--overwrite"]) == 0
    aside = [d for d in os.listdir(workdir) if d.startswith("replaced-")]
    assert len(aside) == 1  # the old outputs, moved whole, never deleted
    assert _files(os.path.join(workdir, aside[0])) == before
    assert json.load(open(os.path.join(workdir, "config.json")))["lr"] == 0.5


@pytest.mark.parametrize("name,kind", [("checkpoints", "file"), ("metrics.jsonl", "folder"),
                                       ("summary.json", "folder"), (".lock", "folder")])  # fmt: skip
def test_a_path_of_the_wrong_kind_is_refused_before_anything_is_written(tmp_path, capsys, name, kind):
    workdir = str(tmp_path / "run")
    assert main([*FLAGS, "--workdir", workdir]) == 0
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
        import shutil

        shutil.rmtree(path)
    else:
        os.remove(path)
    if kind == "file":
        open(path, "w").close()
    else:
        os.makedirs(path)
    before = _files(workdir)
    assert main([*FLAGS, "--workdir", workdir]) == 2
    line = _one_error(capsys)
    assert f"{name} is" in line and "nothing was written" in line
    assert _files(workdir) == before


def _reference_rows(tmp_path, rounds, *flags):
    workdir = str(tmp_path / f"reference{rounds}")
    assert main([*FLAGS, *flags, "--n_rounds", str(rounds), "--workdir", workdir]) == 0
    return _rows(workdir)


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if "seconds" not in k} for line in f]


BAD_RECORDS = [
    [1, 2],
    {"config": {}},
    {"history": [], "config": {}, "round_seconds": "x"},
    {"config": {}, "history": [{"no": "round"}], "round_seconds": []},
]


@pytest.mark.parametrize("record", BAD_RECORDS)
def test_checkpoint_records_of_another_structure_are_set_aside(tmp_path, capsys, record):
    """Valid JSON that is not what a run saves: the checkpoint is set aside like a damaged one and
    the older one is used; the resumed run ends with the metrics of an uninterrupted one."""
    workdir = str(tmp_path / "run")
    flags = [*FLAGS, "--checkpoint_every", "1", "--workdir", workdir]
    assert main(flags) == 0  # checkpoints 1 and 2
    record_dir = os.path.join(workdir, "checkpoints", "2", "record")
    for name in os.listdir(record_dir):
        if not name.startswith("_"):
            with open(os.path.join(record_dir, name), "w") as f:
                json.dump(record, f)
    capsys.readouterr()
    assert main([*flags[:-2], "--n_rounds", "3", "--workdir", workdir]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "checkpoint 2 is damaged (its record" in err
    assert _rows(workdir) == _reference_rows(tmp_path, 3)


def test_a_checkpoint_of_other_shapes_is_one_line_and_orbax_noise_goes_to_the_log(tmp_path):
    """The state saved by a 4-client federation, under the record of a 5-client one: orbax fails
    while reading and its event loop reports from other threads; none of that reaches the terminal."""
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*FLAGS, "--checkpoint_every", "2", "--workdir", str(a)]) == 0
    assert main([*FLAGS, "--n_clients", "4", "--checkpoint_every", "2", "--workdir", str(b)]) == 0
    shutil.rmtree(a / "checkpoints" / "2" / "state")
    shutil.copytree(b / "checkpoints" / "2" / "state", a / "checkpoints" / "2" / "state")
    done = subprocess.run(
        [sys.executable, "-m", "fedem_jax.main", *FLAGS, "--n_rounds", "3", "--workdir", str(a)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Event loop" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert (
        len(lines) == 2
        and "checkpoint 2 is damaged" in lines[0]
        and lines[1].startswith("error: no checkpoint")
    )


def test_third_party_records_and_unraisable_exceptions_go_to_the_log(tmp_path, capsys):
    class Broken:
        def __del__(self):
            raise RuntimeError("Event loop is closed")

    async def device_put():  # what orbax's event loop leaves behind when a restore fails
        pass

    with ThirdPartyLog(str(tmp_path)), warnings.catch_warnings():
        warnings.simplefilter("default")  # as outside pytest
        logging.getLogger("absl").error("orbax failed", exc_info=ValueError("RESOURCE_EXHAUSTED"))
        logging.getLogger("asyncio").error("Task exception was never retrieved")
        Broken()
        device_put()  # never awaited: a RuntimeWarning once the coroutine is collected
        gc.collect()
        warnings.warn("a warning of ours", UserWarning, stacklevel=1)  # left to the usual route
    err = capsys.readouterr().err
    assert err == ""
    text = open(tmp_path / "third_party.log").read()
    assert "orbax failed" in text and "RESOURCE_EXHAUSTED" in text and "never retrieved" in text
    assert "Event loop is closed" in text and "device_put' was never awaited" in text
    assert "a warning of ours" not in text
    logging.getLogger("absl").error("after the context")  # handlers restored
    assert "after the context" not in open(tmp_path / "third_party.log").read()


def test_a_log_that_cannot_be_written_costs_nothing(tmp_path, capsys):
    with ThirdPartyLog(str(tmp_path / "missing" / "folder")):
        logging.getLogger("absl").error("dropped")
    assert "Logging error" not in capsys.readouterr().err


def test_an_old_checkpoint_that_cannot_be_removed_is_kept_and_named_once(tmp_path, capsys, monkeypatch):
    """Removing checkpoint 1 fails (an immutable folder): the run goes on, saying so once; the
    newer checkpoints are written and the resumed run is exact."""
    real_rename = os.rename

    def immutable(src, dst):
        if os.path.basename(src) == "1" and dst.endswith(".removing"):
            raise PermissionError(1, "Operation not permitted")
        return real_rename(src, dst)

    monkeypatch.setattr(checkpoint.os, "rename", immutable)
    workdir, every = str(tmp_path / "run"), ["--checkpoint_every", "1", "--log_freq", "1"]
    assert main([*FLAGS, *every, "--n_rounds", "4", "--workdir", workdir]) == 0
    err = capsys.readouterr().err
    assert err.count("cannot remove the old checkpoint") == 1 and err.rstrip().endswith("it is kept")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "3", "4"]
    monkeypatch.setattr(checkpoint.os, "rename", real_rename)
    assert main([*FLAGS, *every, "--n_rounds", "5", "--workdir", workdir]) == 0
    assert _rows(workdir) == _reference_rows(tmp_path, 5, *every)


def _cli(args, tmp_path, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "fedem_jax.main", *FLAGS, "--log_freq", "1", *args],
                            cwd=tmp_path, **kwargs)  # fmt: skip


def test_a_closed_stdout_does_not_stop_the_run(tmp_path):
    """``python -m fedem_jax.main | head -1``: the run trains to the end and writes its outputs."""
    process = _cli(["--workdir", "w"], tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.readline()
    process.stdout.close()  # what `head -1` does after its line
    err = process.communicate(timeout=300)[1].decode()
    assert first and process.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert json.load(open(tmp_path / "w" / "summary.json"))["n_rounds"] == 2


def test_a_full_disk_on_stdout_does_not_stop_the_run(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        process = _cli(["--workdir", "w"], tmp_path, stdout=full, stderr=subprocess.PIPE)
        err = process.communicate(timeout=300)[1].decode()
    assert process.returncode == 0 and "Traceback" not in err, err
    assert os.path.exists(tmp_path / "w" / "summary.json")


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--seed", "99999999999999999999"], "--seed must be an integer in [0, 2147483647]"),
        (["--seeds", "1,3000000000"], "--seed must be an integer in [0, 2147483647], got 3000000000"),
        (["--data_seed", "-1"], "--data_seed must be an integer in [0, 2147483647], got -1"),
        (["--dim", "2000000000"], "not enough memory: the synthetic data"),
        (["--n_clients", "2000000000"], "not enough memory: the synthetic data"),
        (["--dim", "1000000000000"], "--dim must be at most 2147483647"),
        (["--n_learners", "2147483647"], "not enough memory: the method's state"),  # no loop over M
        (["--local_epochs", "1099511627776"], "--local_epochs must be at most 2147483647"),
        (["--n_rounds", "200000", "--local_epochs", "20000"], "--n_rounds x --local_epochs must be at most"),
    ],
)
def test_values_that_cannot_work_are_one_line_exit_2(tmp_path, capsys, flags, message):
    assert main([*FLAGS, *flags, "--workdir", str(tmp_path / "w")]) == 2
    assert message in _one_error(capsys)


def test_a_backend_that_is_not_there_is_one_line(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "no_such_backend"}
    done = subprocess.run([sys.executable, "-m", "fedem_jax.main", *FLAGS, "--workdir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: JAX_PLATFORMS=no_such_backend: JAX cannot start a backend here")


@pytest.mark.parametrize(
    "arrays,message",
    [
        ({"x": np.ones((24, 3)) * (1 + 1j)}, "field 'x' must be numeric .* got complex128"),
        ({"is_test": np.zeros((24, 2), bool)}, "field 'is_test' must be a 1-D array of booleans"),
        ({"is_test": np.array(["True", "False"] * 12)}, "field 'is_test' must be a 1-D array of booleans"),
        ({"x": np.ones((24, 0))}, r"field 'x' has shape \(24, 0\): a sample has no features"),
        ({"y": np.zeros(24, "m8[s]")}, "field 'y' must be a 1-D integer label array, got timedelta64"),
    ],
)
def test_npz_inputs_are_never_cast_silently(tmp_path, capsys, arrays, message):
    data = {"x": np.ones((24, 3)), "y": np.zeros(24, int), "client": np.repeat(np.arange(4), 6), **arrays}
    np.savez(tmp_path / "d.npz", **data)
    flags = [
        *FLAGS,
        "--dataset",
        "npz",
        "--data_path",
        str(tmp_path / "d.npz"),
        "--workdir",
        str(tmp_path / "w"),
    ]
    assert main(flags) == 1
    import re

    assert re.search(message, _one_error(capsys))


def _fake_run(folder, rows, config=None):
    """A workdir with the files the plotter reads, written by hand (no training)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
    if config is not None:
        with open(os.path.join(folder, "config.json"), "w") as f:
            f.write(config if isinstance(config, str) else json.dumps(config))
    return str(folder)


ROWS = [{"round": r, "test_accuracy": 0.5 + r / 10, "test_accuracy_bottom10": 0.4, "test_loss": 1.0 - r / 10}
        for r in (0, 2, 4)]  # fmt: skip


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda d: os.makedirs(os.path.join(d, "metrics.jsonl")), "metrics.jsonl is not a file"),
        (lambda d: _fake_run(d, [{"round": 1, "accuracy": 0.5}]), "no row has 'val_accuracy'"),
        (lambda d: _fake_run(d, [{"round": 1, "test_accuracy": 0.5}]), "no row has 'test_accuracy_bottom10'"),
        (lambda d: open(_fake_run(d, ROWS) + "/metrics.jsonl", "a").write('[1]\n{"round": 6}\n'),
         "metrics.jsonl, line 4: not a metrics row"),
    ],
)  # fmt: skip
def test_plot_errors_are_one_line_naming_the_file(tmp_path, capsys, setup, message):
    from fedem_jax.reporting.plot import main as plot_main

    setup(str(tmp_path / "run"))
    assert plot_main([str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 1
    assert message in _one_error(capsys)


def test_plot_skips_a_half_written_last_line_and_odd_configs(tmp_path, capsys):
    from fedem_jax.reporting.plot import load_run
    from fedem_jax.reporting.plot import main as plot_main

    run = _fake_run(tmp_path / "run", ROWS, config="[1, 2]")
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write('{"round": 6, "test_acc')  # a crash mid-line
    assert [row["round"] for row in load_run(run)["rows"]] == [0, 2, 4]
    assert load_run(run)["label"] == "run"  # config.json unreadable as a config: no method in the label
    _fake_run(tmp_path / "other", ROWS, config={"lr": 0.1})  # no method
    assert plot_main([run, str(tmp_path / "other"), "--out", str(tmp_path / "out")]) == 0
    assert os.path.getsize(tmp_path / "out" / "curves.png") > 5000


def test_plot_out_must_be_a_folder(tmp_path, capsys):
    from fedem_jax.reporting.plot import main as plot_main

    run = _fake_run(tmp_path / "run", ROWS)
    (tmp_path / "taken").write_text("x")
    assert plot_main([run, "--out", str(tmp_path / "taken")]) == 1
    assert "--out" in _one_error(capsys) and (tmp_path / "taken").read_text() == "x"
    for flag, message in (
        ("--mixture", "clients.jsonl is missing or empty"),
        ("--partition", "partition.json not found"),
    ):
        assert plot_main([run, flag]) == 1
        assert message in _one_error(capsys)


def test_integer_inputs_float32_cannot_hold_are_refused(tmp_path, capsys):
    x = np.full((24, 3), 2**24 + 1, np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(24, int), client=np.repeat(np.arange(4), 6))
    flags = [*FLAGS, "--dataset", "npz", "--data_path", str(tmp_path / "d.npz")]
    assert main([*flags, "--workdir", str(tmp_path / "w")]) == 1
    assert "field 'x' holds integers beyond 16777216" in _one_error(capsys)
