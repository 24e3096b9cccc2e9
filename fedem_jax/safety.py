"""A run's safety: Ctrl-C and SIGTERM end it at a safe point, and a workdir serves one run at a time.

- :class:`StopSignals`: while training, SIGINT and SIGTERM only set a flag (no exception can
  land inside XLA's compiler or a checkpoint write); the loop checks it after each round, saves
  that round and raises :class:`Interrupted`, which ``main`` turns into one line and exit code
  130 (SIGINT) or 143 (SIGTERM). A second signal exits at once with the same code, keeping what
  is on disk.
- :class:`WorkdirLock`: an exclusive ``flock`` on ``WORKDIR/.lock`` (released by the kernel if the
  process dies); a second run on the same workdir is refused, naming the first one's process.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading

from fedem_jax.errors import ConfigError

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(Exception):  # noqa: N818 - a stop the user asked for, not an error
    """The run stopped on a signal after ``round_done`` rounds (``saved``: its checkpoint)."""

    def __init__(self, signum: int, round_done: int, saved: str | None, checkpoints_on: bool = True):
        self.signum, self.round_done, self.saved = signum, round_done, saved
        self.checkpoints_on = checkpoints_on
        super().__init__(f"interrupted after round {round_done}")

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130)

    def message(self) -> str:
        name = signal.Signals(self.signum).name
        if self.saved:
            where = f"round {self.round_done} is saved in {self.saved}; rerun the same command to resume"
        elif self.checkpoints_on:
            where = "no round was completed: rerun the same command to start again"
        else:
            where = "checkpoints are off (--checkpoint_every 0): nothing to resume from"
        return f"interrupted ({name}) after round {self.round_done}; {where}"


class StopSignals:
    """Within ``with StopSignals() as stop:``, SIGINT/SIGTERM set ``stop.signum`` instead of
    raising; a second one exits immediately. Outside the main thread it does nothing."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):  # noqa: ARG002 - signal handler signature
        if self.signum is not None:
            print(f"\nsecond {signal.Signals(signum).name}: stopping now", file=sys.stderr, flush=True)
            os._exit(EXIT_CODES.get(signum, 130))
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping at the next safe point (again to stop now)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def requested(self) -> bool:
        return self.signum is not None


class WorkdirLock:
    """An exclusive lock on ``WORKDIR/.lock`` for the life of a run."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self._file = None

    def __enter__(self) -> WorkdirLock:
        handle = open(self.path, "a+")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ConfigError(
                f"--workdir {os.path.dirname(self.path)!r} is in use by another run (process {holder}); "
                "wait for it to finish or use another --workdir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
