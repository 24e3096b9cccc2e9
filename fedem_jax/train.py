"""The experiment loop: data -> model -> jitted round, evaluation cadence, metrics and summary.

A library, not a script: ``run(config)`` returns the summary dict and writes into
``config.workdir``:

``config.json``, ``metrics.jsonl``, TensorBoard events, ``clients.csv``, ``summary.json`` (see
:mod:`fedem_jax.outputs`) and ``checkpoints/`` (see :mod:`fedem_jax.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import numpy as np
import optax
from jax.sharding import PartitionSpec

from fedem_jax import outputs
from fedem_jax.algorithms.afl import make_afl
from fedem_jax.algorithms.apfl import make_apfl
from fedem_jax.algorithms.clustered import make_clustered
from fedem_jax.algorithms.decentralized import make_dfedem, mixing_matrix
from fedem_jax.algorithms.fedem import make_fedem
from fedem_jax.algorithms.l2sgd import make_l2sgd
from fedem_jax.algorithms.personalized import make_fedavg_plus, make_local
from fedem_jax.algorithms.pfedme import make_pfedme
from fedem_jax.algorithms.pfedme_moreau import make_pfedme_moreau
from fedem_jax.algorithms.qffl import make_qffl
from fedem_jax.checkpoint import Checkpointer, check_compatible
from fedem_jax.config import MESH_METHODS, PROX_METHODS, Config, ConfigError
from fedem_jax.core.local import LocalTrainer
from fedem_jax.core.optim import lr_schedule, make_direction
from fedem_jax.data import FederatedData, load_dataset
from fedem_jax.data.sharding import CLIENTS_AXIS, client_mesh, place, real_clients, shard_data
from fedem_jax.distributed import is_main_process
from fedem_jax.models import STATEFUL_MODELS, build_model, count_params
from fedem_jax.pretrained import load_weights


class DivergenceError(RuntimeError):
    """Training loss became NaN or Inf."""


def resolve_layout(cfg: Config, model_name: str) -> tuple[int, bool]:
    """``(client_chunk, learner_vmap)``; ``-1`` picks the measured per-backend default.

    Measured on CPU (``benchmarks/layouts.py``, README): a sequential client loop wins for every
    model, because it really skips the masked steps of small clients; learners are vmapped for
    the linear model and looped for conv nets. On GPU/TPU everything is vmapped.
    """
    on_cpu = jax.default_backend() == "cpu"
    small_model = model_name in ("linear", "mlp")
    client_chunk = cfg.client_chunk
    if client_chunk == -1:
        client_chunk = 1 if on_cpu else 0
    learner_vmap = cfg.learner_vmap
    if learner_vmap == -1:
        learner_vmap = 0 if (on_cpu and not small_model) else 1
    return client_chunk, bool(learner_vmap)


AUTO_MICRO_BATCH = 32


def resolve_micro_batch(cfg: Config, client_chunk: int) -> int:
    """``--micro_batch``; auto (-1): 32 when clients run sequentially (only that layout skips the
    unused sub-batches), else off. See ``benchmarks/efficiency.py``."""
    if cfg.micro_batch >= 0:
        return cfg.micro_batch
    return AUTO_MICRO_BATCH if client_chunk == 1 and cfg.batch_size > AUTO_MICRO_BATCH else 0


def default_model(dataset: str, data: FederatedData) -> str:
    """Per dataset; for your own data by input shape: ``mlp`` for vectors, ``cnn`` for images."""
    if dataset == "npz":
        return "mlp" if data.train.x.ndim == 2 else "cnn"
    return {
        "synthetic": "linear",
        "cifar10": "cifar10_cnn",
        "cifar100": "cifar10_cnn",
        "emnist": "femnist_cnn",
    }[dataset]


def resolve_devices(cfg: Config) -> int:
    """Devices to shard the client axis over: ``--n_devices`` (0: all), at most the clients."""
    available = jax.device_count()
    wanted = available if cfg.n_devices == 0 else cfg.n_devices
    if cfg.method not in MESH_METHODS:
        wanted = 1
    if wanted > available:
        raise ConfigError(
            f"--n_devices {wanted}: only {available} {jax.default_backend()} device(s) available"
        )
    return wanted


def make_trainer(cfg: Config, data: FederatedData, model_name: str) -> LocalTrainer:
    """The local-training settings of ``cfg`` (see :class:`fedem_jax.core.local.LocalTrainer`)."""
    model = build_model(model_name, data.task.output_dim, cfg.conv_impl)
    # Forward-only passes (E-step, evaluation) use XLA's convolution, the fastest there on
    # every backend; the parameters of both implementations are the same pytree.
    forward_model = build_model(model_name, data.task.output_dim, "xla")
    client_chunk, learner_vmap = resolve_layout(cfg, model_name)
    direction = make_direction(cfg.optimizer, cfg.momentum, cfg.weight_decay)
    stateful = model_name in STATEFUL_MODELS
    if stateful:  # BatchNorm statistics: no gradient step, no decay; replaced after each step

        def apply_fn(variables, x):
            return model.apply(variables, x, train=True, mutable=["batch_stats"])

        def forward_fn(variables, x):
            return model.apply(variables, x, train=False)

        direction = optax.masked(direction, lambda v: {"params": True, "batch_stats": False})
    else:

        def apply_fn(params, x):
            return model.apply({"params": params}, x)

        def forward_fn(params, x):
            return forward_model.apply({"params": params}, x)

    return LocalTrainer(
        apply_fn=apply_fn,
        forward_fn=forward_fn,
        stateful=stateful,
        per_sample_loss=data.task.per_sample_loss,
        direction=direction,
        schedule=lr_schedule(cfg.lr_scheduler, cfg.lr, cfg.n_rounds),
        batch_size=cfg.batch_size,
        local_epochs=cfg.local_epochs,
        drop_last=cfg.drop_last,
        learner_vmap=learner_vmap,
        client_chunk=client_chunk,
        prox_mu=cfg.mu if cfg.method in PROX_METHODS else 0.0,
        micro_batch=resolve_micro_batch(cfg, client_chunk),
    )


def build(cfg: Config, data: FederatedData, n_devices: int = 1):
    """Model and algorithm for ``cfg`` on ``data``: ``(model, algorithm, layout)``.

    With ``n_devices > 1`` the algorithm expects data laid out by ``shard_data(data, mesh)``,
    with ``mesh = layout["mesh"]``.
    """
    model_name = cfg.model or default_model(cfg.dataset, data)
    model = build_model(model_name, data.task.output_dim, cfg.conv_impl)
    client_chunk, learner_vmap = resolve_layout(cfg, model_name)
    mesh = client_mesh(n_devices) if n_devices > 1 else None
    trainer = make_trainer(cfg, data, model_name)
    algorithm = make_fedem(
        model,
        data.task,
        trainer,
        n_learners=cfg.n_learners,
        sampling_rate=cfg.sampling_rate,
        eval_chunk=cfg.eval_chunk,
        seed=cfg.seed,
        mesh=mesh,
        n_real_clients=data.n_clients,
        init_weights=load_weights(cfg.init_from) if cfg.init_from else None,
    )
    algorithm = wrap_method(cfg, model, data, trainer, algorithm)
    layout = {
        "devices": n_devices,
        "model": model_name,
        "conv_impl": getattr(model, "conv_impl", None),
        "client_chunk": client_chunk,
        "learner_vmap": learner_vmap,
    }
    return model, algorithm, {**layout, "mesh": mesh}


def wrap_method(cfg: Config, model, data: FederatedData, trainer: LocalTrainer, fedem):
    """The ``cfg.method`` algorithm, built on the FedEM engine ``fedem`` (M components, or 1)."""
    method, seed = cfg.method, cfg.seed
    if method in ("FedEM", "FedAvg", "FedProx"):
        return fedem
    if method == "FedAvg+":
        return make_fedavg_plus(data.task, trainer, fedem, cfg.tune_epochs, seed)
    if method == "AFL":
        return make_afl(trainer, fedem, seed=seed, sampling_rate=cfg.sampling_rate, lr_lambda=cfg.lr_lambda,
                        eval_chunk=cfg.eval_chunk)  # fmt: skip
    if method == "q-FFL":
        return make_qffl(trainer, fedem, seed=seed, sampling_rate=cfg.sampling_rate, q=cfg.q,
                         eval_chunk=cfg.eval_chunk)  # fmt: skip
    local = make_local(model, data.task, trainer, fedem, seed)
    if method == "local":
        return local
    if method == "pFedMe":
        return make_pfedme(trainer, local, seed=seed, sampling_rate=cfg.sampling_rate)
    if method == "clustered":
        return make_clustered(trainer, local, seed=seed, tol_1=cfg.tol_1, tol_2=cfg.tol_2)
    if method == "APFL":
        return make_apfl(data.task, trainer, local, seed=seed, sampling_rate=cfg.sampling_rate,
                         alpha=cfg.apfl_alpha, learn_alpha=cfg.learn_alpha)  # fmt: skip
    if method == "L2SGD":
        return make_l2sgd(trainer, local, seed=seed, sampling_rate=cfg.sampling_rate, penalty=cfg.penalty,
                          comm_prob=cfg.comm_prob)  # fmt: skip
    if method == "pFedMe-true":
        moreau = dict(
            lam=cfg.pfedme_lambda, inner_steps=cfg.pfedme_k, personal_lr=cfg.personal_lr, beta=cfg.beta
        )
        return make_pfedme_moreau(
            data.task, trainer, local, seed=seed, sampling_rate=cfg.sampling_rate, **moreau
        )
    if method == "D-FedEM":
        mixing = mixing_matrix(data.n_clients, cfg.graph_p, cfg.data_seed)
        return make_dfedem(trainer, local, seed=seed, mixing=mixing)
    raise ConfigError(f"--method: unknown method {method!r}")


def summarize_eval(stats: dict) -> dict:
    """Weighted accuracy / loss over clients and the 10th percentile of per-client accuracy."""
    correct = np.asarray(stats["correct"], np.float64)
    loss_sum = np.asarray(stats["loss_sum"], np.float64)
    count = np.asarray(stats["count"], np.float64)
    per_client = correct / np.maximum(count, 1)
    return {
        "accuracy": float(correct.sum() / count.sum()),
        "loss": float(loss_sum.sum() / count.sum()),
        "accuracy_bottom10": float(np.percentile(per_client, 10)),
    }


def eval_split(cfg: Config, data: FederatedData):
    """``(name, split)`` that evaluation reports on: the test split, or val with --validation."""
    return ("val", data.val) if cfg.validation else ("test", data.test)


def setup(cfg: Config, data: FederatedData):
    """Build the algorithm, lay the data out on the devices and initialise the state.

    Returns ``(algorithm, layout, data, state)``; with several devices ``data`` is the sharded
    copy (see :mod:`fedem_jax.data.sharding`) and the state is placed to match.
    """
    model, algorithm, layout = build(cfg, data, resolve_devices(cfg))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), data.train.x[:1])
    layout["n_params"] = count_params(shapes["params"])  # of one component (BatchNorm statistics excluded)
    mesh = layout.pop("mesh")
    if mesh is not None:
        data = shard_data(data, mesh)
    state = algorithm.init(data)
    if mesh is not None:
        state = state.replace(
            params=place(state.params, mesh, PartitionSpec()),
            clients=place(state.clients, mesh, PartitionSpec(CLIENTS_AXIS)),
            round=place(state.round, mesh, PartitionSpec()),
        )
    return algorithm, layout, data, state


def evaluate_both(eval_fn, state, data: FederatedData, cfg: Config, n_clients: int) -> tuple[dict, dict]:
    """Per-client stats on train and on the evaluation split, in federation order (host numpy).

    ``eval_fn(state, splits)`` evaluates a tuple of splits (so that FedAvg+ fine-tunes once)."""
    train, other = data.train, eval_split(cfg, data)[1]
    train_stats, other_stats = eval_fn(state, (train, other))
    return real_clients(train_stats, train, n_clients), real_clients(other_stats, other, n_clients)


def run(cfg: Config, data: FederatedData | None = None, log=print) -> dict:
    """Train ``cfg`` end to end, resuming from ``workdir/checkpoints`` if a checkpoint is there.

    Returns the summary (also written to ``summary.json``).
    """
    start = time.perf_counter()
    os.makedirs(cfg.workdir, exist_ok=True)
    checkpointer = Checkpointer(cfg.workdir) if cfg.checkpoint_every > 0 else None
    resume_round = checkpointer.latest_round() if checkpointer else None
    if resume_round is not None:
        check_compatible(checkpointer.restore_record(resume_round)["config"], cfg)
    main_process = is_main_process()  # with --distributed only process 0 writes outputs
    if main_process:
        outputs.write_config(cfg.workdir, cfg)

    data = data if data is not None else load_dataset(cfg)
    federation = data  # as loaded: summaries and outputs are in its client order
    algorithm, layout, data, state = setup(cfg, federation)
    data_seconds = time.perf_counter() - start
    n_params = layout["n_params"]
    log(federation.summary())
    log(
        f"{cfg.method}: model {layout['model']} ({n_params:,} params x {cfg.n_learners} learners), "
        f"{jax.device_count()} {jax.default_backend()} device(s), layout: clients "
        f"{_layout_name(layout['client_chunk'])}, learners "
        f"{'vmap' if layout['learner_vmap'] else 'sequential'}"
    )

    history: list[dict] = []
    round_seconds: list[float] = []
    if resume_round is not None:
        if resume_round > cfg.n_rounds:
            raise ConfigError(
                f"--n_rounds {cfg.n_rounds} is below the checkpoint's round {resume_round} in "
                f"{checkpointer.directory}"
            )
        state, record = checkpointer.restore(resume_round, state)
        history, round_seconds = record["history"], record["round_seconds"]
        log(f"resumed from round {resume_round} ({checkpointer.directory})")

    round_jit = jax.jit(algorithm.round, donate_argnums=0)

    @jax.jit
    def evaluate_splits(state, train, splits):
        """One jit returning only the statistics: a jitted identity ``prepare_eval`` would return
        a copy of the whole state (3.2 GB of momentum on full CIFAR-10)."""
        view = algorithm.prepare_eval(state, train)
        return [algorithm.evaluate(view, split) for split in splits]

    def eval_jit(state, splits):
        """Evaluate ``splits``; methods that adapt models first (FedAvg+) do it once, on train."""
        return evaluate_splits(state, data.train, splits)

    unseen_jit = jax.jit(algorithm.evaluate_unseen, static_argnums=3)
    t0 = time.perf_counter()
    round_compiled = round_jit.lower(state, data.train).compile()
    compile_seconds = time.perf_counter() - t0
    log(f"compiled the round in {compile_seconds:.1f}s")

    first_round = int(state.round)
    if main_process:
        writer = outputs.MetricsWriter(cfg.workdir, history, first_round, tensorboard=cfg.tensorboard)
    else:
        writer = outputs.NullWriter()
    progress = _progress(cfg, first_round) if main_process else None
    last_good = resume_round
    final_stats = None  # per-client (train, eval-split) stats of the last evaluation
    try:
        for r in range(first_round, cfg.n_rounds):
            t0 = time.perf_counter()
            state, round_metrics = round_compiled(state, data.train)
            round_metrics = jax.block_until_ready(round_metrics)
            round_seconds.append(time.perf_counter() - t0)
            finite = bool(round_metrics["params_finite"]) and math.isfinite(round_metrics["train_nll_start"])
            _check_finite(finite, r + 1, cfg, checkpointer, last_good)
            done = r + 1
            if done % cfg.log_freq == 0 or done == cfg.n_rounds:
                row, final_stats = _evaluation_row(
                    eval_jit,
                    unseen_jit,
                    state,
                    data,
                    cfg,
                    federation.n_clients,
                    done,
                    round_seconds[-cfg.log_freq :],
                )
                row.update(_method_metrics(round_metrics))
                finite = math.isfinite(row["train_loss"] + row[f"{eval_split(cfg, data)[0]}_loss"])
                _check_finite(finite, done, cfg, checkpointer, last_good)
                history.append(row)
                writer.write(row)
            if checkpointer and (done % cfg.checkpoint_every == 0 or done == cfg.n_rounds):
                record = {
                    "config": dataclasses.asdict(cfg),
                    "history": history,
                    "round_seconds": round_seconds,
                }
                checkpointer.save(done, state, record)
                last_good = done
            if progress is not None:
                progress.set_postfix(
                    acc=f"{history[-1][eval_split(cfg, data)[0] + '_accuracy']:.4f}" if history else "-",
                    s_per_round=f"{round_seconds[-1]:.3f}",
                    refresh=False,  # update() below redraws, at most every mininterval
                )
                progress.update(1)
    finally:
        writer.close()
        if progress is not None:
            progress.close()
        if checkpointer:
            checkpointer.close()

    if final_stats is None:  # resumed from the final checkpoint: nothing was evaluated this time
        final_stats = evaluate_both(eval_jit, state, data, cfg, federation.n_clients)
    train_stats, test_stats = final_stats
    pi = real_clients(state.clients.pi, data.train, federation.n_clients)
    if main_process:
        outputs.write_clients_csv(cfg.workdir, train_stats, test_stats, pi)
    steady = round_seconds[1:] if len(round_seconds) > 1 else round_seconds
    final = history[-1]
    summary = {
        "dataset": cfg.dataset,
        "method": cfg.method,
        "model": layout["model"],
        "n_learners": cfg.n_learners,
        "n_clients": federation.n_clients,
        "n_unseen_clients": federation.n_unseen,
        "n_rounds": cfg.n_rounds,
        **{k: v for k, v in final.items() if k not in ("round", *outputs.TIMING_KEYS)},
        "seconds_per_round": float(np.mean(steady)) if steady else 0.0,
        "compile_seconds": compile_seconds,
        "data_seconds": data_seconds,
        "total_seconds": time.perf_counter() - start,
        "layout": layout,
    }
    if main_process:
        outputs.write_json(cfg.workdir, "summary.json", summary)
    return summary


def _evaluation_row(
    eval_fn, unseen_fn, state, data, cfg, n_clients: int, done: int, recent_seconds: list[float]
) -> tuple[dict, tuple[dict, dict]]:
    """One metrics row, and the per-client stats it was computed from (for ``clients.csv``)."""
    t0 = time.perf_counter()
    train_stats, test_stats = evaluate_both(eval_fn, state, data, cfg, n_clients)
    row = {"round": done}
    parts = [("train", train_stats), (eval_split(cfg, data)[0], test_stats)]
    if data.n_unseen:
        unseen_stats, _ = unseen_fn(state, data.unseen_train, data.unseen_test, cfg.unseen_em_iters)
        parts.append(("unseen_test", jax.tree.map(np.asarray, unseen_stats)))
    for prefix, stats in parts:
        row.update({f"{prefix}_{k}": v for k, v in summarize_eval(stats).items()})
    row["pi_entropy"] = outputs.mean_entropy(real_clients(state.clients.pi, data.train, n_clients))
    row["seconds_per_round"] = float(np.mean(recent_seconds))
    row["eval_seconds"] = time.perf_counter() - t0
    return row, (train_stats, test_stats)


ENGINE_METRICS = ("train_nll_start", "params_finite", "participants")


def _method_metrics(round_metrics: dict) -> dict:
    """A method's own diagnostics of the last round (clusters, APFL's alpha, AFL's lambda)."""
    return {k: float(v) for k, v in round_metrics.items() if k not in ENGINE_METRICS}


def _check_finite(finite: bool, round_done: int, cfg: Config, checkpointer, last_good) -> None:
    """Stop a diverged run; the checkpoints on disk were all saved from finite states."""
    if finite:
        return
    kept = (
        f"; the last good checkpoint (round {last_good}) is kept in {checkpointer.directory}"
        if checkpointer and last_good
        else ""
    )
    raise DivergenceError(
        f"the loss became non-finite at round {round_done}; try a lower --lr (now {cfg.lr}){kept}"
    )


def _layout_name(client_chunk: int) -> str:
    return {0: "vmap", 1: "sequential"}.get(client_chunk, f"chunks of {client_chunk}")


def _progress(cfg: Config, first_round: int):
    if cfg.quiet:
        return None
    import sys

    from tqdm import tqdm

    # In a log file (not a terminal) redraw at most every 30 s instead of on every update.
    interval = 0.1 if sys.stderr.isatty() else 30.0
    return tqdm(
        total=cfg.n_rounds,
        initial=first_round,
        desc="rounds",
        unit="round",
        dynamic_ncols=True,
        mininterval=interval,
    )
