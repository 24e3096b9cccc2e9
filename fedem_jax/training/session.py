"""A :class:`Session`: one experiment (a single run, or a sweep of runs as one program) built,
placed, initialised and compiled once, then stepped a round at a time.

    session = Session(cfg)            # nothing is loaded or compiled yet
    for row in session.rounds():      # builds on first use; evaluates every --log_freq rounds
        print(row["round"], row["test_accuracy"])
    session.pi                        # per-client mixture weights, NumPy

A session writes no files, takes no lock and installs no signal handler: :func:`fedem_jax.run`
adds those as callbacks (:mod:`fedem_jax.training.callbacks`), around the same session, so a
session driven by hand gives exactly the rows ``run`` writes.
"""

from __future__ import annotations

import functools
import math
import signal
import time

import jax
import numpy as np

from fedem_jax.algorithms.base import n_sampled_clients, place_state
from fedem_jax.data import FederatedData, load_dataset
from fedem_jax.data.sharding import real_clients, shard_data
from fedem_jax.data.store import HostSplit, on_device, on_host
from fedem_jax.errors import DivergenceError, Interrupted
from fedem_jax.execution import memory
from fedem_jax.execution.host_rounds import HostEvaluation, HostRounds, eval_clients, host_state
from fedem_jax.models import count_params
from fedem_jax.reporting import outputs
from fedem_jax.settings.schema import Config
from fedem_jax.training import accounting
from fedem_jax.training.evaluation import (
    ENGINE_METRICS,
    eval_split,
    evaluate_both,
    evaluation_rows,
    method_metrics,
    run_indices,
    take_run,
    to_host_runs,
)
from fedem_jax.training.experiment import Experiment, build, resolve_devices
from fedem_jax.training.sweep import build_sweep, summarize_runs


def build_experiment(cfg: Config, data: FederatedData, model=None):
    """Build the experiment (a single run, or a sweep when ``cfg`` has lists), lay the data out on
    the devices and initialise the state: ``(experiment, data, state)``; with several devices
    ``data`` is the sharded copy (see :mod:`fedem_jax.data.sharding`) and the state placed to match.
    ``model``: a flax module of your own instead of ``cfg.model``'s (single runs)."""
    if cfg.sweep:
        experiment = build_sweep(cfg, data)
    else:
        experiment = build(cfg, data, resolve_devices(cfg), model=model)
    shapes = jax.eval_shape(experiment.model.init, jax.random.PRNGKey(0), data.train.x[:1])
    experiment.info["n_params"] = count_params(shapes["params"])  # one component, BatchNorm stats excluded
    if isinstance(data.train, HostSplit):  # the client fields live on the host
        memory.check_state(experiment.algorithm.init, data, free=memory.host_free_bytes())
        state = host_state(experiment.algorithm.init(data))  # the shared fields on the mesh, if any
        return experiment, data, place_state(state, experiment.layout, keep=state.CLIENT_FIELDS)
    memory.check_state(experiment.algorithm.init, data, experiment.info.get("devices", 1))
    if experiment.layout.mesh is not None:
        data = shard_data(data, experiment.layout.mesh)
    state = place_state(experiment.algorithm.init(data), experiment.layout)
    return experiment, data, state


class StopFlag:
    """A request to stop at the next safe point, after a round (:meth:`Session.check_stop`)."""

    def __init__(self):
        self.signum: int | None = None

    def request(self, signum: int = signal.SIGINT) -> None:
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


class Session:
    """One experiment, stepped by hand or by :func:`fedem_jax.run` (see the module docstring).

    ``cfg``: a :class:`~fedem_jax.settings.schema.Config` (``fedem_jax.config(...)``); ``data``: a
    :class:`~fedem_jax.data.FederatedData` (default: ``load_dataset(cfg)``, on first use);
    ``model``: a flax module of your own; ``log``: a function given each progress line (default:
    silent). Rows and summaries are those of ``metrics.jsonl`` and ``summary.json``.
    With ``--dp_clip``, :attr:`privacy` (after :meth:`build`) is the run's
    :class:`~fedem_jax.training.accounting.PrivacyPlan`: its mechanism, delta and accountant
    (``privacy.epsilon_after(rounds)``); rows carry ``epsilon_spent``.
    """

    def __init__(self, cfg: Config, data: FederatedData | None = None, model=None, log=None):
        self.cfg, self.federation, self.model = cfg, data, model
        self.log = log if log is not None else (lambda *_: None)
        self.stop = StopFlag()  # a callback may put its own (signal handlers) here
        self.history: list[dict] = []  # every evaluation row so far (a checkpoint keeps them)
        self.round_seconds: list[float] = []
        self.diverged: dict[int, int] = {}  # a sweep's runs masked out: run -> round
        self.final_stats = None  # per run: per-client (train, eval split) stats of the last evaluation
        self.client_records: list[dict] = []  # the last evaluation's per-client values, per run
        self.final_pis: list[np.ndarray] = []  # per run, the clients' pi when the summary was made
        self.timings = {"start": time.perf_counter(), "data_seconds": 0.0, "compile_seconds": 0.0}
        self.experiment: Experiment | None = None
        self.data: FederatedData | None = None  # as placed on the devices
        self.compiled = None
        self._state = None
        self._round_metrics: dict = {}
        self._ending_early = False
        self.privacy: accounting.PrivacyPlan | None = None  # --dp_clip: mechanism and accountant
        self._host_rounds: HostRounds | None = None  # --federation host
        self._host_eval: HostEvaluation | None = None

    # ------------------------------------------------------------------------------ building
    @property
    def built(self) -> bool:
        return self.experiment is not None

    def build(self) -> Session:
        """Load the data (unless given), build the experiment and initialise the state (once)."""
        if self.built:
            return self
        if self.federation is None:
            self.federation = load_dataset(self.cfg)
        host = self.cfg.training.federation == "host"
        self.federation = on_host(self.federation) if host else on_device(self.federation)
        experiment, self.data, self._state = build_experiment(self.cfg, self.federation, self.model)
        self.experiment = experiment
        self.privacy = accounting.plan(self.cfg, self.federation.train.counts)
        self.timings["data_seconds"] = time.perf_counter() - self.timings["start"]
        # One jit returning only statistics (a jitted identity on the state would copy it whole).
        evaluator = experiment.evaluator()
        self._evaluate_fn = lambda state, splits: evaluator(state, self.data.train, splits)
        unseen = experiment.algorithm.evaluate_unseen
        self._unseen_fn = jax.jit(unseen, static_argnums=3) if unseen is not None else None
        self._describe()
        if host:
            self._build_host()
        return self

    def _build_host(self) -> None:
        """``--federation host``: the cohort rounds and the chunked evaluation over the host data."""
        cfg, data, experiment = self.cfg, self.data, self.experiment
        k, layout = n_sampled_clients(data.n_clients, cfg.training.sampling_rate), experiment.layout
        self._host_rounds = HostRounds(
            experiment.algorithm, experiment.ctx, data.train, k, cfg.training.n_rounds, layout
        )
        clients = eval_clients(data.n_clients, cfg.output.eval_clients, cfg.training.seed)
        other = eval_split(cfg, data)[1]
        self._host_eval = HostEvaluation(experiment.evaluate_splits, data, other, clients, k, layout)
        self._host_eval_data = self._host_eval.view(data)
        if self._unseen_fn is not None:  # held-out clients: in chunks too
            self._unseen_fn = functools.partial(self._host_eval.unseen, self._unseen_fn)
        evaluated = "every client"
        if len(clients) < data.n_clients:
            evaluated = f"{len(clients):,} of {data.n_clients:,} clients (fixed at random)"
        self.log(f"federation on the host: {k} clients a round; evaluation on {evaluated}")

    @property
    def evaluated_clients(self) -> np.ndarray | None:
        """The clients evaluated (``--eval_clients``), ``None`` when all are."""
        if self._host_eval is None or len(self._host_eval.clients) == self.federation.n_clients:
            return None
        return self._host_eval.clients

    def _evaluation_inputs(self):
        """``(eval_fn, state, data, n_clients)`` that the evaluation rows are computed from."""
        if self._host_eval is None:
            return self._evaluate_fn, self._state, self.data, self.federation.n_clients
        view = self._host_eval_data
        evaluate = lambda _view, _splits: self._host_eval(self._state)  # noqa: E731 - reads the whole host state
        return evaluate, self._host_eval.state_view(self._state), view, view.n_clients

    def compile(self) -> Session:
        """Compile the round for the state (once), after checking its memory; builds first."""
        self.build()
        if self.compiled is None:
            t0 = time.perf_counter()
            if self._host_rounds is not None:
                compiled = self._host_rounds.compile(self._state)
                self.compiled = self._host_rounds
            else:
                compiled = self.compiled = self.experiment.compile_round(self._state, self.data.train)
            self.timings["compile_seconds"] = time.perf_counter() - t0
            self.log(f"compiled the round in {self.timings['compile_seconds']:.1f}s")
            memory.check_compiled(compiled)  # before the round's buffers are allocated
            if (device_bytes := memory.round_bytes(compiled)) is not None:
                self.experiment.info["round_device_bytes"] = device_bytes  # summary.json's layout
        return self

    def _describe(self) -> None:
        cfg, info, federation = self.cfg, self.experiment.info, self.federation
        if federation.source:
            self.log(federation.source)
        self.log(federation.summary())
        self.log(describe(cfg, info))
        if self.privacy is not None:
            self.log(self.privacy.describe())
        if self.runs is not None:
            self.log(f"sweep: {info['runs_note']}")
        if info["batch_size"] < cfg.training.batch_size:
            self.log(
                f"--batch_size {cfg.training.batch_size} is larger than the largest client "
                f"({info['batch_size']} train samples): using {info['batch_size']}"
            )

    # ------------------------------------------------------------------------------ state
    @property
    def state(self):
        """The training state (a pytree; a sweep's has a leading runs axis)."""
        return self.build()._state

    @property
    def runs(self) -> list[dict] | None:
        """A sweep's settings per run, ``None`` for a single run."""
        return self.build().experiment.runs

    @property
    def round(self) -> int:
        """Rounds completed (a sweep's runs all share the count): one scalar fetched."""
        if self._state is None:
            return 0
        return int(np.asarray(self._state.round).reshape(-1)[0])

    @property
    def pi(self) -> np.ndarray:
        """Per-client mixture weights ``[C, M]`` (``[R, C, M]`` for a sweep), training clients only."""
        pis = self.client_pis()
        return pis[0] if self.runs is None else np.stack(pis)

    def client_pis(self) -> list[np.ndarray]:
        """Per run, the mixture weights ``[C, M]`` of the training clients (in federation order)."""
        pi_all = to_host_runs(self.state.clients.pi, self.runs)
        n_clients = self.federation.n_clients
        return [
            np.asarray(real_clients(take_run(pi_all, i), self.data.train, n_clients))
            for i in run_indices(self.runs)
        ]

    def record(self) -> dict:
        """What a checkpoint keeps beside the state: the config, the rows and timings so far."""
        return {
            "config": self.cfg.to_dict(), "history": self.history, "round_seconds": self.round_seconds,
            "diverged": {str(k): v for k, v in self.diverged.items()},
        }  # fmt: skip

    def restore(self, state, record: dict) -> None:
        """Continue from a checkpoint: its ``state`` (shaped like this session's) and ``record``."""
        self.build()
        self._state = host_state(state) if self._host_rounds is not None else state
        self.history, self.round_seconds = record["history"], record["round_seconds"]
        self.diverged = {int(k): v for k, v in record.get("diverged", {}).items()}

    # ------------------------------------------------------------------------------ rounds
    def end_early(self) -> None:
        """End training after the current round as if it were the last (early stopping, from a
        callback or by hand): it is evaluated, summarised and, under :func:`fedem_jax.run`,
        checkpointed; the same run started again resumes there and trains on to ``--n_rounds``."""
        self._ending_early = True

    @property
    def training_done(self) -> bool:
        """``--n_rounds`` reached, or :meth:`end_early` asked for."""
        return self._ending_early or self.round >= self.cfg.training.n_rounds

    def check_stop(self) -> None:
        """Raise :class:`~fedem_jax.errors.Interrupted` if a stop was requested."""
        if self.stop.requested:
            raise Interrupted(self.stop.signum, self.round)

    def step(self) -> dict:
        """Run one round; returns its metrics: ``round``, ``seconds`` and the method's own
        diagnostics (per run, as lists, in a sweep). Raises :class:`~fedem_jax.errors.DivergenceError`
        if the loss becomes non-finite (in a sweep: once every run has diverged)."""
        self.compile()
        t0 = time.perf_counter()
        self._state, metrics = self.compiled(self._state, self.data.train)
        metrics = jax.block_until_ready(metrics)
        seconds = time.perf_counter() - t0
        self.round_seconds.append(seconds)
        self._round_metrics = metrics
        finite = np.asarray(metrics["params_finite"]) & np.isfinite(metrics["train_nll_start"])
        self._check_finite(bool(finite) if self.runs is None else finite, self.round)
        own = {k: np.asarray(v).tolist() for k, v in metrics.items() if k not in ENGINE_METRICS[1:]}
        return {"round": self.round, "seconds": seconds, **own}

    def evaluation_due(self) -> bool:
        """Whether ``--log_freq`` (or the last round) asks for an evaluation of this round."""
        done = self.round
        return done % self.cfg.output.log_freq == 0 or done == self.cfg.training.n_rounds

    def evaluate(self) -> dict | list[dict]:
        """The metrics row of the current state (a list of rows, one per run still going, for a
        sweep), as ``metrics.jsonl`` has it; also appended to :attr:`history`."""
        cfg = self.build().cfg
        eval_fn, state, data, n_clients = self._evaluation_inputs()
        rows, self.final_stats, records = evaluation_rows(
            eval_fn, self._unseen_fn, state, data, cfg, n_clients,
            self.round, self.round_seconds[-cfg.output.log_freq :], self.runs,
        )  # fmt: skip
        split = eval_split(cfg, self.data)[0]
        for row in rows:
            if n_clients < self.federation.n_clients:  # --eval_clients: a subset, said in every row
                row["eval_clients"] = n_clients
            row.update(method_metrics(self._round_metrics, row.get("run")))
            if self.privacy is not None:  # epsilon spent so far, at --dp_delta
                row.update(self.privacy.record(self.round))
        finite = [math.isfinite(row["train_loss"] + row[f"{split}_loss"]) for row in rows]
        self._check_finite(finite[0] if self.runs is None else np.array(finite), self.round)
        rows = [row for row in rows if row.get("run") not in self.diverged]
        self.client_records = [r for r in records if r.get("run") not in self.diverged]
        self.history.extend(rows)
        return rows[0] if self.runs is None else rows

    def rounds(self, eval_every: int | None = None):
        """Iterate the metrics rows of the rounds to ``--n_rounds``, evaluating every
        ``eval_every`` rounds (default ``--log_freq``) and after the last; round 0 (before
        training) first. A sweep yields one row per run at each evaluation."""
        every = eval_every or self.cfg.output.log_freq
        if self.round == 0 and not self.history:
            yield from as_rows(self.evaluate())
        while not self.training_done:
            self.step()
            if self.round % every == 0 or self.training_done:
                yield from as_rows(self.evaluate())

    def _check_finite(self, finite, round_done: int) -> None:
        """Stop a diverged run. In a sweep (``finite [R]``) a diverged run is named and masked out
        while the others go on; the session stops once all have diverged."""
        if self.runs is not None:
            for run in np.flatnonzero(~np.asarray(finite, bool)):
                if int(run) not in self.diverged:
                    self.diverged[int(run)] = round_done
                    settings = ", ".join(f"{k} {v}" for k, v in self.runs[run].items())
                    self.log(f"run {run} ({settings}) diverged at round {round_done}; masked out")
            finite = len(self.diverged) < len(self.runs)
        if not finite:
            lr = self.cfg.training.lr
            raise DivergenceError(
                f"the loss became non-finite at round {round_done}; try a lower --lr (now {lr})"
            )

    # ------------------------------------------------------------------------------ the end
    def summary(self) -> dict:
        """``summary.json``: the last evaluation (a sweep's mean, spread and best setting), and
        timings; evaluates the current state if it was never evaluated."""
        cfg, federation = self.build().cfg, self.federation
        if self.final_stats is None:  # e.g. resumed from the final checkpoint
            eval_fn, state, data, n_clients = self._evaluation_inputs()
            self.final_stats = evaluate_both(eval_fn, state, data, cfg, n_clients, self.runs)
        # On every process: with --distributed, gathering the clients' pi is a collective.
        self.final_pis = self.client_pis()
        if self.evaluated_clients is not None:  # --eval_clients: the rows of the evaluated ones
            self.final_pis = [pi[self.evaluated_clients] for pi in self.final_pis]
        steady = self.round_seconds[1:] if len(self.round_seconds) > 1 else self.round_seconds
        if self.runs is None:
            final = {k: v for k, v in self.history[-1].items() if k not in ("round", *outputs.TIMING_KEYS)}
        else:
            final = summarize_runs(self.history, self.runs, self.diverged, cfg)
        return {
            "dataset": cfg.data.dataset,
            "method": cfg.method,
            "model": self.experiment.info["model"],
            "n_learners": cfg.model.n_learners,
            "n_clients": federation.n_clients,
            "n_unseen_clients": federation.n_unseen,
            "n_rounds": cfg.training.n_rounds,
            **({"rounds_done": self.round} if self.round < cfg.training.n_rounds else {}),
            **final,
            "seconds_per_round": float(np.mean(steady)) if steady else 0.0,
            "compile_seconds": self.timings["compile_seconds"],
            "data_seconds": self.timings["data_seconds"],
            "total_seconds": time.perf_counter() - self.timings["start"],
            "layout": self.experiment.info,
            **({"privacy": self.privacy.settings()} if self.privacy is not None else {}),
        }


def as_rows(rows: dict | list[dict]) -> list[dict]:
    """One evaluation's rows as a list (a single run's one row, or a sweep's row per run)."""
    return [rows] if isinstance(rows, dict) else rows


def describe(cfg: Config, info: dict) -> str:
    """The start-up line: method, model, devices and layout."""
    chunk = {0: "vmap", 1: "sequential"}.get(info["client_chunk"], f"chunks of {info['client_chunk']}")
    return (
        f"{cfg.method}: model {info['model']} "
        f"({info['n_params']:,} params x {cfg.model.n_learners} learners), "
        f"{jax.device_count()} {jax.default_backend()} device(s), layout: clients {chunk}, "
        f"learners {'vmap' if info['learner_vmap'] else 'sequential'}"
        + (f", convolution {info['conv_impl']}" if info.get("conv_impl") else "")
        + (f" ({info['client_chunk_why']})" if info.get("client_chunk_why") else "")
    )
