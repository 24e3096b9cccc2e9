"""The experiment loop: rounds, evaluation cadence, checkpoints and outputs; it knows no method.

A library, not a script: ``run(config)`` returns the summary dict and writes into
``config.workdir``: ``config.json``, ``metrics.jsonl``, TensorBoard events, ``clients.csv``,
``summary.json`` (see :mod:`fedem_jax.outputs`) and ``checkpoints/`` (see
:mod:`fedem_jax.checkpoint`).
"""

from __future__ import annotations

import contextlib
import math
import time

import jax
import numpy as np

from fedem_jax import federation_plots, memory, outputs, workdir
from fedem_jax.checkpoint import Checkpointer, check_workdir
from fedem_jax.config import Config, ConfigError
from fedem_jax.data import FederatedData, load_dataset
from fedem_jax.data.sharding import real_clients
from fedem_jax.distributed import is_main_process
from fedem_jax.evaluation import (
    eval_split,
    evaluate_both,
    evaluation_rows,
    method_metrics,
    run_indices,
    take_run,
    to_host_runs,
)
from fedem_jax.experiment import Experiment, setup
from fedem_jax.safety import Interrupted, StopSignals, WorkdirLock
from fedem_jax.sweep import summarize_runs


class DivergenceError(RuntimeError):
    """Training loss became NaN or Inf."""


class _Run:
    """One run's mutable bookkeeping: history, timings, the last good checkpoint, writers."""

    def __init__(self, cfg: Config, experiment: Experiment, data: FederatedData, n_clients: int):
        self.cfg, self.experiment, self.data, self.n_clients = cfg, experiment, data, n_clients
        self.history: list[dict] = []
        self.round_seconds: list[float] = []
        self.checkpointer = Checkpointer(cfg.output.workdir) if cfg.output.checkpoint_every > 0 else None
        self.last_good: int | None = None
        self.final_stats = None  # per run: per-client (train, eval-split) stats of the last evaluation
        self.runs = experiment.runs  # a sweep's settings per run (None: a single run)
        self.diverged: dict[int, int] = {}  # a sweep's runs masked out: run -> round
        self.client_records: list[dict] = []  # the last evaluation's per-client values, per run
        algorithm = experiment.algorithm
        # One jit returning only statistics: a jitted identity on the state would copy it whole.
        self.evaluate_jit = experiment.evaluator()
        self.unseen_jit = None
        if algorithm.evaluate_unseen is not None:
            self.unseen_jit = jax.jit(algorithm.evaluate_unseen, static_argnums=3)

    def eval_fn(self, state, splits):
        return self.evaluate_jit(state, self.data.train, splits)

    def resume(self, state, log):
        """The newest checkpoint that restores (damaged ones are set aside), else ``state``."""
        had_checkpoints = bool(self.checkpointer and self.checkpointer.manager.all_steps())
        restored = self.checkpointer.restore_newest(state, log) if had_checkpoints else None
        if restored is None:
            if had_checkpoints:
                raise ConfigError(
                    f"no checkpoint in {self.checkpointer.directory} could be restored (each was set "
                    "aside, as named above); rerun the same command to start from round 0"
                )
            return state
        round_done, state, record = restored
        self.history, self.round_seconds = record["history"], record["round_seconds"]
        self.diverged = {int(k): v for k, v in record.get("diverged", {}).items()}
        self.last_good = round_done
        log(f"resumed from round {round_done} ({self.checkpointer.directory})")
        return state

    def check_finite(self, finite, round_done: int, log=print) -> None:
        """Stop a diverged run; the checkpoints on disk were all saved from finite states. In a
        sweep (``finite [R]``) a diverged run is named and masked out while the others go on."""
        if self.runs is not None:
            for run in np.flatnonzero(~np.asarray(finite, bool)):
                if int(run) not in self.diverged:
                    self.diverged[int(run)] = round_done
                    log(f"run {run} ({_settings(self.runs[run])}) diverged at round {round_done}; masked out")
            finite = len(self.diverged) < len(self.runs)
        if finite:
            return
        kept = (
            f"; the last good checkpoint (round {self.last_good}) is kept in {self.checkpointer.directory}"
            if self.checkpointer and self.last_good
            else ""
        )
        raise DivergenceError(
            f"the loss became non-finite at round {round_done}; "
            f"try a lower --lr (now {self.cfg.training.lr}){kept}"
        )

    def evaluate(self, state, done: int, round_metrics: dict, log=print) -> list[dict]:
        """Metrics rows of this evaluation: one, or one per run still going in a sweep."""
        cfg = self.cfg
        rows, self.final_stats, records = evaluation_rows(
            self.eval_fn, self.unseen_jit, state, self.data, cfg, self.n_clients, done,
            self.round_seconds[-cfg.output.log_freq :], self.runs,
        )  # fmt: skip
        split = eval_split(cfg, self.data)[0]
        for row in rows:
            row.update(method_metrics(round_metrics, row.get("run")))
        finite = [math.isfinite(row["train_loss"] + row[f"{split}_loss"]) for row in rows]
        self.check_finite(finite[0] if self.runs is None else np.array(finite), done, log)
        rows = [row for row in rows if row.get("run") not in self.diverged]
        self.client_records = [r for r in records if r.get("run") not in self.diverged]
        self.history.extend(rows)
        return rows

    def write_evaluation(self, state, done: int, round_metrics: dict, writer, log=print) -> None:
        """Evaluate, then append the rows to ``metrics.jsonl`` and per-client values to ``clients.jsonl``."""
        for row in self.evaluate(state, done, round_metrics, log):
            writer.write(row)
        writer.write_clients(self.client_records)

    def save(self, state, done: int) -> None:
        cfg = self.cfg
        if self.checkpointer and (done % cfg.output.checkpoint_every == 0 or done == cfg.training.n_rounds):
            self.save_now(state, done)

    def save_now(self, state, done: int) -> str | None:
        """Checkpoint round ``done`` unless it is saved already (a stop between checkpoints);
        returns the checkpoint folder, or None when checkpoints are off."""
        if not self.checkpointer:
            return None
        if done and self.last_good != done:
            record = {
                "config": self.cfg.to_dict(), "history": self.history, "round_seconds": self.round_seconds,
                "diverged": {str(k): v for k, v in self.diverged.items()},
            }  # fmt: skip
            self.checkpointer.save(done, state, record)
            self.last_good = done
        return self.checkpointer.directory if self.last_good == done else None

    def close(self) -> None:
        if self.checkpointer:
            self.checkpointer.close()


def train_rounds(run: _Run, state, compiled, writer, progress, log=print, stop=None):
    """Rounds from the state's round to ``n_rounds``: evaluate every ``log_freq``, checkpoint; on
    a stop signal, save the last round and raise :class:`~fedem_jax.safety.Interrupted`."""
    cfg, split_name = run.cfg, eval_split(run.cfg, run.data)[0]
    if _rounds_done(state) == 0:  # round 0: the model before training, as the reference logs
        run.write_evaluation(state, 0, {}, writer, log)
    for r in range(_rounds_done(state), cfg.training.n_rounds):
        if stop is not None and stop.requested:
            raise Interrupted(stop.signum, r, run.save_now(state, r), run.checkpointer is not None)
        t0 = time.perf_counter()
        state, round_metrics = compiled(state, run.data.train)
        round_metrics = jax.block_until_ready(round_metrics)
        run.round_seconds.append(time.perf_counter() - t0)
        finite = np.asarray(round_metrics["params_finite"]) & np.isfinite(round_metrics["train_nll_start"])
        run.check_finite(bool(finite) if run.runs is None else finite, r + 1, log)
        done = r + 1
        if done % cfg.output.log_freq == 0 or done == cfg.training.n_rounds:
            run.write_evaluation(state, done, round_metrics, writer, log)
        run.save(state, done)
        if progress is not None:
            latest = run.history[-len(run.runs or [0]) :]  # the last evaluation's rows (one per run)
            recent = (
                [r[split_name + "_accuracy"] for r in latest if r["round"] == latest[-1]["round"]]
                if latest
                else []
            )
            progress.set_postfix(
                acc=f"{np.mean(recent):.4f}" if recent else "-",
                s_per_round=f"{run.round_seconds[-1]:.3f}",
                refresh=False,  # update() below redraws, at most every mininterval
            )
            progress.update(1)
    return state


def run(cfg: Config, data: FederatedData | None = None, log=print, stop: StopSignals | None = None) -> dict:
    """Train ``cfg`` end to end, resuming from ``workdir/checkpoints`` if a checkpoint is there.

    Returns the summary (also written to ``summary.json``). Holds the workdir's lock for the whole
    run; SIGINT/SIGTERM stop it after a round, saved (:class:`~fedem_jax.safety.Interrupted`).
    """
    main_process = is_main_process()  # with --distributed only process 0 writes outputs
    signals = contextlib.nullcontext(stop) if stop is not None else StopSignals()
    if main_process:
        workdir.create(cfg.output.workdir)
        workdir.check_paths(cfg.output.workdir)  # the lock file included, before it is opened
    with contextlib.ExitStack() as stack:
        if main_process:
            stack.enter_context(WorkdirLock(cfg.output.workdir))
        stop = stack.enter_context(signals)
        return _run_locked(cfg, data, log, stop, main_process)


def _run_locked(cfg: Config, data, log, stop: StopSignals, main_process: bool) -> dict:
    start = time.perf_counter()
    check_workdir(cfg, log)  # before anything is written there
    if main_process:
        outputs.write_config(cfg.output.workdir, cfg)
    federation = data if data is not None else load_dataset(cfg)  # its client order is the outputs'
    if main_process:
        federation_plots.write_partition(cfg.output.workdir, federation)  # OutputError if it fails
        if cfg.output.plots:
            _draw(cfg, federation_plots.plot_partition, cfg.output.workdir)
    experiment, data, state = setup(cfg, federation)
    data_seconds = time.perf_counter() - start
    if federation.source:
        log(federation.source)
    log(federation.summary())
    log(_describe(cfg, experiment.info))
    if experiment.runs is not None:
        log(f"sweep: {experiment.info['runs_note']}")
    if experiment.info["batch_size"] < cfg.training.batch_size:
        log(
            f"--batch_size {cfg.training.batch_size} is larger than the largest client "
            f"({experiment.info['batch_size']} train samples): using {experiment.info['batch_size']}"
        )
    bookkeeping = _Run(cfg, experiment, data, federation.n_clients)
    try:
        state = bookkeeping.resume(state, log)
        first_round = _rounds_done(state)
        _stop_if_asked(stop, bookkeeping, first_round)  # a signal while the data was loading
        t0 = time.perf_counter()
        compiled = experiment.compile_round(state, data.train)
        compile_seconds = time.perf_counter() - t0
        log(f"compiled the round in {compile_seconds:.1f}s")
        memory.check_compiled(compiled)  # before the round's buffers are allocated
        _stop_if_asked(stop, bookkeeping, first_round)
        writer = _writer(cfg, bookkeeping.history, first_round, main_process)
        progress = _progress(cfg, first_round) if main_process else None
        try:
            state = train_rounds(bookkeeping, state, compiled, writer, progress, log, stop)
        finally:
            writer.close()
            if progress is not None:
                progress.close()
    finally:
        bookkeeping.close()
    timings = {"compile_seconds": compile_seconds, "data_seconds": data_seconds, "start": start}
    return _finish(bookkeeping, state, federation, timings, main_process)


def _finish(run: _Run, state, federation: FederatedData, timings: dict, main_process: bool) -> dict:
    """``clients.csv`` and ``summary.json`` from the last evaluation."""
    cfg, data = run.cfg, run.data
    if run.final_stats is None:  # resumed from the final checkpoint: nothing was evaluated this time
        run.final_stats = evaluate_both(run.eval_fn, state, data, cfg, federation.n_clients, run.runs)
    pi_all = to_host_runs(state.clients.pi, run.runs)
    pis = [real_clients(take_run(pi_all, i), data.train, federation.n_clients) for i in run_indices(run.runs)]
    if main_process:
        outputs.write_clients_csv(cfg.output.workdir, run.final_stats, pis, run.runs)
    steady = run.round_seconds[1:] if len(run.round_seconds) > 1 else run.round_seconds
    if run.runs is None:
        final = {k: v for k, v in run.history[-1].items() if k not in ("round", *outputs.TIMING_KEYS)}
    else:
        final = summarize_runs(run.history, run.runs, run.diverged, cfg)
    summary = {
        "dataset": cfg.data.dataset,
        "method": cfg.method,
        "model": run.experiment.info["model"],
        "n_learners": cfg.model.n_learners,
        "n_clients": federation.n_clients,
        "n_unseen_clients": federation.n_unseen,
        "n_rounds": cfg.training.n_rounds,
        **final,
        "seconds_per_round": float(np.mean(steady)) if steady else 0.0,
        "compile_seconds": timings["compile_seconds"],
        "data_seconds": timings["data_seconds"],
        "total_seconds": time.perf_counter() - timings["start"],
        "layout": run.experiment.info,
    }
    if main_process:
        outputs.write_json(cfg.output.workdir, "summary.json", summary)
        if cfg.output.plots and cfg.model.n_learners > 1:
            _draw(cfg, federation_plots.plot_mixture, cfg.output.workdir)
            _draw(cfg, federation_plots.plot_clients_over_time, cfg.output.workdir)
    return summary


def _draw(cfg: Config, draw, *args) -> None:
    """A plot ``draw(workdir, *args)``; a failed write is one line (``OutputError``)."""
    try:
        draw(cfg.output.workdir, *args)
    except OSError as err:
        raise outputs.OutputError(f"cannot write into {cfg.output.workdir} ({err.strerror or err})") from None


def _stop_if_asked(stop: StopSignals, run: _Run, round_done: int) -> None:
    """Before training: a stop signal ends the run here (nothing new to save)."""
    if stop.requested:
        saved = run.checkpointer.directory if run.checkpointer and run.last_good == round_done else None
        raise Interrupted(stop.signum, round_done, saved, run.checkpointer is not None)


def _rounds_done(state) -> int:
    """Rounds completed (a sweep's runs all share the count): one scalar fetched, not the state."""
    return int(np.asarray(state.round).reshape(-1)[0])


def _settings(settings: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def _describe(cfg: Config, info: dict) -> str:
    chunk = {0: "vmap", 1: "sequential"}.get(info["client_chunk"], f"chunks of {info['client_chunk']}")
    return (
        f"{cfg.method}: model {info['model']} "
        f"({info['n_params']:,} params x {cfg.model.n_learners} learners), "
        f"{jax.device_count()} {jax.default_backend()} device(s), layout: clients {chunk}, "
        f"learners {'vmap' if info['learner_vmap'] else 'sequential'}"
        + (f", convolution {info['conv_impl']}" if info.get("conv_impl") else "")
        + (f" ({info['client_chunk_why']})" if info.get("client_chunk_why") else "")
    )


def _writer(cfg: Config, history: list[dict], first_round: int, main_process: bool):
    if main_process:
        return outputs.MetricsWriter(
            cfg.output.workdir, history, first_round, tensorboard=cfg.output.tensorboard
        )
    return outputs.NullWriter()


def _progress(cfg: Config, first_round: int):
    if cfg.output.quiet:
        return None
    import sys

    from tqdm import tqdm

    # In a log file (not a terminal) redraw at most every 30 s instead of on every update.
    interval = 0.1 if sys.stderr.isatty() else 30.0
    return tqdm(
        total=cfg.training.n_rounds,
        initial=first_round,
        desc="rounds",
        unit="round",
        dynamic_ncols=True,
        mininterval=interval,
    )
