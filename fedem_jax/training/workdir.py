"""The workdir, checked before anything is written into it.

A run writes a fixed set of paths (:data:`FILES`, :data:`FOLDERS`). Before the first byte:

- every one of them must be absent or of the kind the run writes (a file where a file goes, a
  folder where a folder goes), and the workdir writable (:func:`check_paths`);
- a workdir holding results (:data:`RESULTS`) must be identifiable as this experiment's, by its
  newest checkpoint's record or its ``config.json`` (see :func:`fedem_jax.training.checkpoint.check_workdir`);
  results that cannot be identified are never overwritten;
- ``--overwrite`` moves every output there into ``WORKDIR/replaced-<time>/`` (never deleted).
"""

from __future__ import annotations

import os
import sys
import time

from fedem_jax.errors import ConfigError

# Written when a run starts: a start that failed early leaves only these, and they are rewritten.
START_FILES = ("config.json", "partition.json", "partition.png")
# A run's results: never overwritten by another experiment, nor when they cannot be identified.
RESULT_FILES = ("metrics.jsonl", "clients.jsonl", "clients.csv", "summary.json", "mixture.png",
                "clients_over_time.png")  # fmt: skip
LOG_FILE = "third_party.log"  # other libraries' log records (orbax, absl, asyncio), kept off the terminal
FILES = (*START_FILES, *RESULT_FILES, LOG_FILE, ".lock")
FOLDERS = ("checkpoints", "tb")
RESULTS = (*RESULT_FILES, *FOLDERS)


def create(workdir: str) -> None:
    """Create ``workdir`` (and its parents) and check that it is writable."""
    if not workdir:
        raise ConfigError("--workdir must not be empty")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--workdir: cannot create {workdir!r} ({err.strerror or err})") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir: {workdir!r} is not writable")


def check_paths(workdir: str) -> None:
    """Refuse a workdir where a path the run writes has the wrong kind or cannot be written."""
    for name in (*FILES, *FOLDERS):
        path = os.path.join(workdir, name)
        if not os.path.lexists(path):
            continue
        folder = name in FOLDERS
        if os.path.islink(path) and not os.path.exists(path):
            problem = "is a broken symbolic link"
        elif folder and not os.path.isdir(path):
            problem = "is a file; the run writes a folder there"
        elif not folder and not os.path.isfile(path):
            problem = "is not a regular file; the run writes a file there"
        elif not os.access(path, os.W_OK | (os.X_OK if folder else 0)):
            problem = "is not writable"
        else:
            continue
        raise ConfigError(
            f"--workdir {workdir!r}: {name} {problem}; move it away or use another --workdir "
            "(nothing was written)"
        )


def results_in(workdir: str) -> list[str]:
    """The names of :data:`RESULTS` present in ``workdir`` (an empty ``checkpoints`` or ``tb``
    folder does not count)."""
    present = []
    for name in RESULTS:
        path = os.path.join(workdir, name)
        if name in FOLDERS:
            if os.path.isdir(path) and os.listdir(path):
                present.append(name)
        elif os.path.lexists(path):
            present.append(name)
    return present


def set_aside_outputs(workdir: str) -> str | None:
    """``--overwrite``: move every output of an earlier run into ``WORKDIR/replaced-<time>/``
    (nothing is deleted); returns that folder, or None if there was nothing to move."""
    names = [n for n in (*FILES, *FOLDERS) if n != ".lock" and os.path.lexists(os.path.join(workdir, n))]
    if not names:
        return None
    target = os.path.join(workdir, f"replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = 1
    while os.path.lexists(target):
        suffix += 1
        target = os.path.join(workdir, f"replaced-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}")
    try:
        os.makedirs(target)
        for name in names:
            os.rename(os.path.join(workdir, name), os.path.join(target, name))
    except OSError as err:
        raise ConfigError(
            f"--overwrite: cannot move the earlier outputs of {workdir!r} into {target} "
            f"({err.strerror or err}); nothing was deleted"
        ) from None
    print(f"--overwrite: the earlier outputs ({', '.join(names)}) are set aside in {target}",
          file=sys.stderr, flush=True)  # fmt: skip
    return target
