"""Faults: signals at several moments, damaged checkpoints, a workdir in use or of another
experiment, failed writes. Each gives one line, its exit code, no traceback, and loses nothing: a
resumed run ends with the metrics of an uninterrupted one."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fedem_jax.main import main
from fedem_jax.reporting import outputs
from fedem_jax.reporting.outputs import TIMING_KEYS
from fedem_jax.training.safety import WorkdirLock

FLAGS = ["--n_clients", "24", "--n_test_per_client", "50", "--lr_scheduler", "constant", "--quiet"]
FLAGS += ["--log_freq", "2", "--checkpoint_every", "2", "--tensorboard", "false", "--plots", "false"]


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f]


def _reference(tmp_path, rounds):
    workdir = str(tmp_path / f"reference{rounds}")
    assert main([*FLAGS, "--n_rounds", str(rounds), "--workdir", workdir]) == 0
    return _rows(workdir)


def _start(workdir, rounds):
    return subprocess.Popen(
        [sys.executable, "-m", "fedem_jax.main", *FLAGS, "--n_rounds", str(rounds), "--workdir", workdir],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for(predicate, process, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None and not predicate():
        time.sleep(0.01)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_saves_the_round_and_resumes_exactly(tmp_path, signum, code):
    workdir = str(tmp_path / "run")
    process = _start(workdir, 400)
    metrics = os.path.join(workdir, "metrics.jsonl")
    _wait_for(lambda: os.path.exists(metrics) and len(open(metrics).readlines()) >= 2, process)
    assert process.poll() is None, "the run finished before the signal"
    process.send_signal(signum)
    _, err = process.communicate(timeout=300)
    assert process.returncode == code, err
    assert "Traceback" not in err
    line = [x for x in err.splitlines() if x.startswith("interrupted")]
    assert len(line) == 1 and "rerun the same command to resume" in line[0], err
    stopped_at = int(line[0].split("after round ")[1].split(";")[0])
    assert 2 <= stopped_at < 400
    # Resume to a short total: the rows must be those of an uninterrupted run of that length.
    rounds = stopped_at + 2
    assert main([*FLAGS, "--n_rounds", str(rounds), "--workdir", workdir]) == 0
    assert _rows(workdir) == _reference(tmp_path, rounds)


def test_signal_before_training_exits_cleanly(tmp_path):
    """SIGINT while the process starts, loads data or compiles: exit 130, one line, no traceback
    and no crash, whatever the moment."""
    for delay in (0.5, 2.0, 4.0):  # earlier, under load, can land in Python's own start-up
        process = _start(str(tmp_path / f"early{delay}"), 400)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=300)
        assert process.returncode == 130, (delay, err)
        assert "Traceback" not in err and "interrupted" in err, (delay, err)


def _checkpoint_dir(workdir, step):
    return os.path.join(workdir, "checkpoints", str(step))


def _largest_file(folder):
    files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]
    return max(files, key=os.path.getsize)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", ["array", "record", "empty_newer"])
def test_damaged_checkpoint_is_set_aside_and_the_next_one_used(tmp_path, capsys, damage):
    workdir = str(tmp_path / "run")
    assert main([*FLAGS, "--n_rounds", "4", "--workdir", workdir]) == 0  # checkpoints 2 and 4
    if damage == "array":
        _truncate(_largest_file(os.path.join(_checkpoint_dir(workdir, 4), "state")))
    elif damage == "record":
        record = os.path.join(_checkpoint_dir(workdir, 4), "record")
        for name in os.listdir(record):
            _truncate(os.path.join(record, name))
    else:
        os.makedirs(_checkpoint_dir(workdir, 6))
    capsys.readouterr()
    assert main([*FLAGS, "--n_rounds", "6", "--workdir", workdir]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    aside = [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if ".damaged-" in d]
    if damage != "empty_newer":  # orbax itself skips an empty step folder
        assert "checkpoint 4 is damaged" in err and "set aside as" in err, err
        assert len(aside) == 1  # renamed, not deleted
    assert _rows(workdir) == _reference(tmp_path, 6)


def test_a_second_run_on_the_same_workdir_is_refused(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with WorkdirLock(str(workdir)):
        assert main([*FLAGS, "--n_rounds", "2", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert f"in use by another run (process {os.getpid()})" in err
    assert not (workdir / "config.json").exists()  # nothing written
    assert main([*FLAGS, "--n_rounds", "2", "--workdir", str(workdir)]) == 0  # lock released


def test_another_experiment_is_refused_without_checkpoints_and_overwrite_starts_over(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    no_checkpoints = [*FLAGS, "--n_rounds", "2", "--checkpoint_every", "0", "--workdir", workdir]
    assert main([*no_checkpoints, "--lr", "0.1"]) == 0
    before = open(os.path.join(workdir, "config.json")).read()
    assert main([*no_checkpoints, "--lr", "0.2"]) == 2
    assert "holds the outputs of a different experiment (--lr 0.1 -> 0.2)" in capsys.readouterr().err
    assert open(os.path.join(workdir, "config.json")).read() == before
    assert main([*no_checkpoints, "--lr", "0.2", "--overwrite"]) == 0
    assert json.load(open(os.path.join(workdir, "config.json")))["lr"] == 0.2


def test_refused_resume_writes_nothing(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    assert main([*FLAGS, "--n_rounds", "4", "--workdir", workdir]) == 0
    before = {name: open(os.path.join(workdir, name)).read() for name in ("config.json", "metrics.jsonl")}
    assert main([*FLAGS, "--n_rounds", "2", "--workdir", workdir]) == 2
    assert "--n_rounds 2 is below the checkpoint's round 4" in capsys.readouterr().err
    assert before == {name: open(os.path.join(workdir, name)).read() for name in before}


def test_a_failed_write_is_one_line_and_the_rerun_is_exact(tmp_path, capsys, monkeypatch):
    workdir = str(tmp_path / "run")
    real_replace = os.replace

    def no_space(src, dst):
        if dst.endswith("summary.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", no_space)
    assert main([*FLAGS, "--n_rounds", "4", "--workdir", workdir]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "summary.json (No space left on device)" in err and "is kept" in err
    assert not os.path.exists(os.path.join(workdir, "summary.json.tmp"))
    monkeypatch.setattr(outputs.os, "replace", real_replace)
    assert main([*FLAGS, "--n_rounds", "4", "--workdir", workdir]) == 0
    assert _rows(workdir) == _reference(tmp_path, 4)


def test_an_unwritable_checkpoint_folder_is_one_line(tmp_path, capsys, monkeypatch):
    from fedem_jax.training import checkpoint

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    workdir = str(tmp_path / "run")
    monkeypatch.setattr(checkpoint.Checkpointer, "_write", refuse, raising=False)
    real_save = checkpoint.Checkpointer.save

    def save(self, *args, **kwargs):
        monkeypatch.setattr(self.manager, "save", refuse)
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
    assert main([*FLAGS, "--n_rounds", "2", "--workdir", workdir]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write the checkpoint of round 2" in err
    assert "Permission denied" in err
    shutil.rmtree(workdir)
