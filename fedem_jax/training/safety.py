"""A run's safety: Ctrl-C and SIGTERM end it at a safe point, and a workdir serves one run at a time.

- :class:`StopSignals`: while training, SIGINT and SIGTERM only set a flag (no exception can
  land inside XLA's compiler or a checkpoint write); the loop checks it after each round, saves
  that round and raises :class:`Interrupted`, which ``main`` turns into one line and exit code
  130 (SIGINT) or 143 (SIGTERM). A second signal exits at once with the same code, keeping what
  is on disk.
- :class:`WorkdirLock`: an exclusive ``flock`` on ``WORKDIR/.lock`` (released by the kernel if the
  process dies); a second run on the same workdir is refused, naming the first one's process.
- :class:`ThirdPartyLog`: other libraries' log records (orbax and absl, asyncio) and exceptions
  Python can only report as "unraisable" (orbax's event loop at shutdown) go to
  ``WORKDIR/third_party.log``, not to the terminal, where the run's own one-line messages are.
- :func:`resilient_streams`: a closed pipe (``| head``) or a full disk on stdout/stderr stops the
  printing, not the run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import sys
import threading
import traceback
import warnings

from fedem_jax.errors import EXIT_CODES, ConfigError


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
        try:
            handle = open(self.path, "a+")  # noqa: SIM115 - held until __exit__
        except OSError as err:
            raise ConfigError(
                f"--workdir: cannot open its lock file {self.path} ({err.strerror or err})"
            ) from None
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


THIRD_PARTY_LOGGERS = ("absl", "asyncio", "orbax", "tensorstore")


class ThirdPartyLog(logging.Handler):
    """Once installed (or within ``with ThirdPartyLog(workdir):``), records of
    :data:`THIRD_PARTY_LOGGERS`, unraisable exceptions and "coroutine ... was never awaited"
    warnings (fedem_jax has no coroutines: orbax's event loop leaves them when a restore fails) are
    appended to ``WORKDIR/third_party.log`` (created at the first one) instead of the terminal.
    Writing it never fails the run: if the file cannot be written, the records are dropped."""

    def __init__(self, workdir: str, name: str = "third_party.log"):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        self.path = os.path.join(workdir, name)
        self._file = None
        self._failed = False
        self._saved: list = []
        self._showwarning = warnings.showwarning

    def _append(self, text: str) -> None:
        if self._failed:
            return
        try:
            if self._file is None:
                self._file = open(self.path, "a")  # noqa: SIM115 - closed in __exit__
            self._file.write(text.rstrip("\n") + "\n")
            self._file.flush()
        except (OSError, ValueError):
            self._failed = True  # a full disk or a read-only folder: drop them, keep training

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a record that cannot be formatted: not worth a traceback
            self._append(self.format(record))

    def unraisable(self, unraisable) -> None:
        lines = traceback.format_exception(
            unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback
        )
        self._append(f"unraisable exception ({unraisable.err_msg or 'ignored'}):\n" + "".join(lines))

    def warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, RuntimeWarning) and "was never awaited" in str(message):
            self._append(f"{filename}:{lineno}: {category.__name__}: {message}")
        else:
            self._showwarning(message, category, filename, lineno, file, line)

    def install(self) -> ThirdPartyLog:
        """Route the records, unraisable exceptions and coroutine warnings here until
        :meth:`uninstall` (the command line never uninstalls: orbax's threads can still report
        while the process exits)."""
        self._showwarning = warnings.showwarning
        warnings.showwarning = self.warning
        self._saved = [(sys.unraisablehook, logging.raiseExceptions)]
        for name in THIRD_PARTY_LOGGERS:
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.propagate))
            logger.addHandler(self)
            logger.propagate = False
        sys.unraisablehook = self.unraisable
        logging.raiseExceptions = False  # a failing handler elsewhere prints no "--- Logging error ---"
        return self

    def uninstall(self) -> None:
        (hook, raise_exceptions), *loggers = self._saved
        for logger, propagate in loggers:
            logger.removeHandler(self)
            logger.propagate = propagate
        sys.unraisablehook, logging.raiseExceptions = hook, raise_exceptions
        warnings.showwarning = self._showwarning
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def __enter__(self) -> ThirdPartyLog:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()


class _Resilient:
    """A text stream whose failures (a closed pipe, a full disk) silence it instead of raising:
    the file descriptor is pointed at ``/dev/null``, so Python's own flush at exit succeeds too."""

    def __init__(self, stream):
        self._stream = stream

    def _silence(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as err:
            if err.errno not in (errno.EPIPE, errno.ENOSPC, errno.EIO, errno.EDQUOT):
                raise
            self._silence()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as err:
            if err.errno not in (errno.EPIPE, errno.ENOSPC, errno.EIO, errno.EDQUOT):
                raise
            self._silence()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def resilient_streams() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` resilient (the command line's progress and results
    are not worth losing a run for: everything that matters is in the workdir)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Resilient):
            setattr(sys, name, _Resilient(stream))
