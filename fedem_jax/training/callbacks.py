"""Callbacks: what :func:`fedem_jax.run` does around a :class:`~fedem_jax.training.session.Session`.

One small protocol (every hook optional; a subclass of :class:`Callback` overrides what it needs):

- ``on_start(session)``: before the data are loaded and anything is built (checks, locks, files
  that record the configuration);
- ``on_build(session)``: built and initialised, before the round is compiled (resume from a
  checkpoint, files about the federation);
- ``after_evaluation(session, rows)``: the metrics rows of an evaluation (one per run in a sweep);
- ``after_round(session, metrics)``: the round is complete, its evaluation included;
- ``on_end(session, summary)``: training finished; ``summary`` is ``summary.json``'s content;
- ``close(session, error)``: always, last, in reverse order; ``error`` is what ended the run (None
  when it finished; :class:`~fedem_jax.errors.Interrupted` on a stop).

A callback may end training early with ``session.end_early()`` (the round reached is evaluated,
summarised and checkpointed as the last; run again, the run resumes there) or stop it with
``session.stop.request()`` (:class:`~fedem_jax.errors.Interrupted`, as on Ctrl-C).

The command line's set is :func:`default_callbacks`: the workdir's guard and lock, signals,
checkpoints and resume, the run's record files, metrics files, TensorBoard, plots and progress.
"""

from __future__ import annotations

import sys

from fedem_jax.errors import ConfigError, DivergenceError, Interrupted, OutputError
from fedem_jax.reporting import federation_plots, outputs
from fedem_jax.settings.schema import Config
from fedem_jax.training import workdir
from fedem_jax.training.checkpoint import Checkpointer, check_workdir
from fedem_jax.training.safety import StopSignals, WorkdirLock


class Callback:
    """The hooks of a run; each does nothing unless overridden (see the module docstring)."""

    def on_start(self, session) -> None:
        pass

    def on_build(self, session) -> None:
        pass

    def after_evaluation(self, session, rows: list[dict]) -> None:
        pass

    def after_round(self, session, metrics: dict) -> None:
        pass

    def on_end(self, session, summary: dict) -> None:
        pass

    def close(self, session, error: BaseException | None) -> None:
        pass


class WorkdirGuard(Callback):
    """Create the workdir, check every path the run writes, hold ``WORKDIR/.lock`` for the run,
    and refuse results of another experiment (or that cannot be identified) before anything is
    written; damaged checkpoints found on the way are set aside (:func:`check_workdir`).
    With ``--distributed`` every process checks (orbax reads checkpoints collectively); only the
    main one creates, locks and sets aside (``main_process``)."""

    def __init__(self, main_process: bool = True):
        self.main_process = main_process
        self._lock: WorkdirLock | None = None

    def on_start(self, session) -> None:
        path = session.cfg.output.workdir
        if self.main_process:
            workdir.create(path)
            workdir.check_paths(path)  # the lock file included, before it is opened
            self._lock = WorkdirLock(path).__enter__()
        check_workdir(session.cfg, session.log, main_process=self.main_process)

    def close(self, session, error) -> None:
        if self._lock is not None:
            self._lock.__exit__(None, None, None)


class StopOnSignals(Callback):
    """SIGINT and SIGTERM request a stop after the current round (a second one exits at once).
    ``signals``: handlers installed already (the command line installs them before JAX loads)."""

    def __init__(self, signals: StopSignals | None = None):
        self._given = signals is not None
        self.signals = signals if signals is not None else StopSignals()

    def on_start(self, session) -> None:
        if not self._given:
            self.signals.__enter__()
        session.stop = self.signals

    def close(self, session, error) -> None:
        if not self._given:
            self.signals.__exit__(None, None, None)


class Checkpoints(Callback):
    """Resume from the newest checkpoint that restores, save every ``--checkpoint_every`` rounds,
    after the last, and on a stop; say where the last good one is when the loss diverges."""

    def __init__(self):
        self.checkpointer: Checkpointer | None = None
        self.last_good: int | None = None

    def on_build(self, session) -> None:
        self.checkpointer = Checkpointer(session.cfg.output.workdir)
        manager = self.checkpointer.manager
        if not manager.all_steps():
            return
        restored = self.checkpointer.restore_newest(session.state, session.log)
        if restored is None:
            raise _no_checkpoint(self.checkpointer.directory)
        round_done, state, record = restored
        session.restore(state, record)
        self.last_good = round_done
        session.log(f"resumed from round {round_done} ({self.checkpointer.directory})")

    def after_round(self, session, metrics) -> None:
        done, cfg = session.round, session.cfg
        if done % cfg.output.checkpoint_every == 0 or done == cfg.training.n_rounds:
            self._save(session)

    def on_end(self, session, summary) -> None:
        self._save(session)  # a run ended early (Session.end_early); otherwise saved already

    def _save(self, session) -> str | None:
        """Checkpoint the session's round unless saved already; returns its folder."""
        done = session.round
        if self.checkpointer is not None and done and self.last_good != done:
            self.checkpointer.save(done, session.state, session.record())
            self.last_good = done
        return self.checkpointer.directory if self.checkpointer and self.last_good == done else None

    def close(self, session, error) -> None:
        try:
            if isinstance(error, Interrupted):
                error.checkpoints_on = True
                error.saved = self._save(session) if session.built else None
            elif isinstance(error, DivergenceError) and self.last_good:
                where = self.checkpointer.directory
                error.hints.append(f"the last good checkpoint (round {self.last_good}) is kept in {where}")
        finally:
            if self.checkpointer is not None:
                self.checkpointer.close()


def _no_checkpoint(directory: str) -> ConfigError:
    return ConfigError(
        f"no checkpoint in {directory} could be restored (each was set aside, as named above); "
        "rerun the same command to start from round 0"
    )


class RunRecord(Callback):
    """``config.json`` (at the start), ``partition.json`` (once the data are loaded), and at the
    end ``clients.csv`` and ``summary.json`` (see :mod:`fedem_jax.reporting.outputs`)."""

    def on_start(self, session) -> None:
        outputs.write_config(session.cfg.output.workdir, session.cfg)

    def on_build(self, session) -> None:
        federation_plots.write_partition(session.cfg.output.workdir, session.federation)

    def on_end(self, session, summary) -> None:
        path = session.cfg.output.workdir
        outputs.write_clients_csv(
            path, session.final_stats, session.final_pis, session.runs, session.evaluated_clients
        )
        outputs.write_json(path, "summary.json", summary)


class MetricsLog(Callback):
    """``metrics.jsonl`` and ``clients.jsonl``, a line per evaluation (rewritten up to the round a
    resumed run starts from)."""

    def __init__(self):
        self.writer: outputs.MetricsWriter | None = None

    def on_build(self, session) -> None:
        self.writer = outputs.MetricsWriter(session.cfg.output.workdir, session.history, session.round)

    def after_evaluation(self, session, rows) -> None:
        for row in rows:
            self.writer.write(row)
        self.writer.write_clients(session.client_records)

    def close(self, session, error) -> None:
        if self.writer is not None:
            self.writer.close()


class TensorBoard(Callback):
    """The metrics rows' scalars as TensorBoard events in ``WORKDIR/tb``."""

    def __init__(self):
        self.writer: outputs.TensorBoardWriter | None = None

    def on_build(self, session) -> None:
        self.writer = outputs.TensorBoardWriter(session.cfg.output.workdir, session.round)

    def after_evaluation(self, session, rows) -> None:
        for row in rows:
            self.writer.write(row)

    def close(self, session, error) -> None:
        if self.writer is not None:
            self.writer.close()


class Plots(Callback):
    """``partition.png`` once the data are loaded; ``mixture.png`` and ``clients_over_time.png``
    at the end, for methods with several components."""

    def on_build(self, session) -> None:
        _draw(session.cfg, federation_plots.plot_partition)

    def on_end(self, session, summary) -> None:
        if session.cfg.model.n_learners > 1:
            _draw(session.cfg, federation_plots.plot_mixture)
            _draw(session.cfg, federation_plots.plot_clients_over_time)


def _draw(cfg: Config, draw) -> None:
    """A plot ``draw(workdir, workdir)``; a failed write is one line (``OutputError``)."""
    try:
        draw(cfg.output.workdir, cfg.output.workdir)
    except OSError as err:
        raise OutputError(f"cannot write into {cfg.output.workdir} ({err.strerror or err})") from None


class Progress(Callback):
    """A tqdm bar of rounds with the last evaluation's accuracy and the round's seconds (in a log
    file rather than a terminal, redrawn at most every 30 s)."""

    def __init__(self):
        self.bar = None
        self.accuracy = "-"

    def after_evaluation(self, session, rows) -> None:
        split = "val" if session.cfg.output.validation else "test"
        values = [row[f"{split}_accuracy"] for row in rows]
        self.accuracy = f"{sum(values) / len(values):.4f}" if values else "-"

    def after_round(self, session, metrics) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=session.cfg.training.n_rounds, initial=session.round - 1, desc="rounds", unit="round",
                dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0,
            )  # fmt: skip
        self.bar.set_postfix(acc=self.accuracy, s_per_round=f"{metrics['seconds']:.3f}", refresh=False)
        self.bar.update(1)

    def close(self, session, error) -> None:
        if self.bar is not None:
            self.bar.close()


def default_callbacks(cfg: Config, signals: StopSignals | None = None, main_process: bool = True) -> list:
    """What the command line runs with: everything that writes only on the main process (with
    ``--distributed``, process 0), checkpoints on every process (orbax coordinates them)."""
    callbacks: list[Callback] = [WorkdirGuard(main_process), StopOnSignals(signals)]
    if cfg.output.checkpoint_every > 0:
        callbacks.append(Checkpoints())
    if main_process:
        callbacks += [RunRecord(), MetricsLog()]
        callbacks += [TensorBoard()] if cfg.output.tensorboard else []
        callbacks += [Plots()] if cfg.output.plots else []
        callbacks += [Progress()] if not cfg.output.quiet else []
    return callbacks


__all__ = [
    "Callback",
    "Checkpoints",
    "MetricsLog",
    "Plots",
    "Progress",
    "RunRecord",
    "StopOnSignals",
    "TensorBoard",
    "WorkdirGuard",
    "default_callbacks",
]
