"""Every error a user can meet, in one hierarchy: each is printed as one line, without a traceback,
and ends the command line with its own exit code (``main`` maps them in one place).

- :class:`ConfigError` (2): a setting, a workdir or a resource that cannot work;
- :class:`DataError` (1): data or weight files that cannot be read as they are;
- :class:`OutputError` (1): a result that could not be written (disk full, no permission);
- :class:`DivergenceError` (3): the training loss became NaN or Inf;
- :class:`Interrupted` (130 / 143): SIGINT or SIGTERM stopped the run after a round;
- :class:`PlotError` (1): workdirs that cannot be plotted.
"""

from __future__ import annotations

import signal


class FedemError(Exception):
    """The base of fedem_jax's errors: :meth:`message` is the line shown, :attr:`exit_code` the
    command line's exit status. ``hints`` are clauses added by whoever knows more (a checkpoint
    callback adds where the last good checkpoint is)."""

    exit_code = 1

    def __init__(self, *args):
        super().__init__(*args)
        self.hints: list[str] = []

    def message(self) -> str:
        return "; ".join([f"error: {self}", *self.hints])


class ConfigError(FedemError, ValueError):
    """A configuration problem."""

    exit_code = 2


class DataError(FedemError, RuntimeError):
    """A user-facing data problem (missing files, bad shapes, untrusted content refused)."""


class OutputError(FedemError, RuntimeError):
    """A result could not be written (disk full, no permission)."""


class DivergenceError(FedemError, RuntimeError):
    """Training loss became NaN or Inf."""

    exit_code = 3


class PlotError(FedemError):
    """Something in the workdirs cannot be plotted."""


EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(FedemError):  # noqa: N818 - a stop the user asked for, not an error
    """The run stopped on a signal after ``round_done`` rounds; ``saved``: the checkpoint folder
    holding that round (set by the checkpointing callback), ``checkpoints_on``: whether any is kept."""

    def __init__(self, signum: int, round_done: int, saved: str | None = None, checkpoints_on: bool = False):
        super().__init__(f"interrupted after round {round_done}")
        self.signum, self.round_done, self.saved = signum, round_done, saved
        self.checkpoints_on = checkpoints_on

    @property
    def exit_code(self) -> int:  # type: ignore[override]
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


def check(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)
