"""The experiment loop: data -> model -> jitted round, evaluation cadence, metrics and summary.

A library, not a script: ``run(config)`` returns the summary dict and writes into
``config.workdir``:

- ``config.json``   the resolved configuration;
- ``metrics.jsonl`` one JSON object per evaluated round;
- ``summary.json``  final metrics and timings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import jax
import numpy as np

from fedem_jax.algorithms.fedem import make_fedem
from fedem_jax.config import Config
from fedem_jax.core.local import LocalTrainer
from fedem_jax.core.optim import lr_schedule, make_direction
from fedem_jax.data import FederatedData, load_dataset
from fedem_jax.models import build_model, count_params


class DivergenceError(RuntimeError):
    """Training loss became NaN or Inf."""


def resolve_layout(cfg: Config, model_name: str) -> tuple[int, bool]:
    """``(client_chunk, learner_vmap)``; ``-1`` picks the measured per-backend default.

    Measured on CPU (``benchmarks/layouts.py``, README): a sequential client loop wins for every
    model, because it really skips the masked steps of small clients; learners are vmapped for
    the linear model and looped for conv nets. On GPU/TPU everything is vmapped.
    """
    on_cpu = jax.default_backend() == "cpu"
    small_model = model_name == "linear"
    client_chunk = cfg.client_chunk
    if client_chunk == -1:
        client_chunk = 1 if on_cpu else 0
    learner_vmap = cfg.learner_vmap
    if learner_vmap == -1:
        learner_vmap = 0 if (on_cpu and not small_model) else 1
    return client_chunk, bool(learner_vmap)


def build(cfg: Config, data: FederatedData):
    """Model and algorithm for ``cfg`` on ``data``: ``(model, algorithm, layout)``."""
    model_name = cfg.model or ("linear" if cfg.dataset == "synthetic" else "cifar10_cnn")
    model = build_model(model_name, data.task.output_dim, cfg.conv_impl)
    # Forward-only passes (E-step, evaluation) use XLA's convolution, the fastest there on
    # every backend; the parameters of both implementations are the same pytree.
    forward_model = build_model(model_name, data.task.output_dim, "xla")
    client_chunk, learner_vmap = resolve_layout(cfg, model_name)
    trainer = LocalTrainer(
        apply_fn=lambda params, x: model.apply({"params": params}, x),
        forward_fn=lambda params, x: forward_model.apply({"params": params}, x),
        per_sample_loss=data.task.per_sample_loss,
        direction=make_direction(cfg.optimizer, cfg.momentum, cfg.weight_decay),
        schedule=lr_schedule(cfg.lr_scheduler, cfg.lr, cfg.n_rounds),
        batch_size=cfg.batch_size,
        local_epochs=cfg.local_epochs,
        drop_last=cfg.drop_last,
        learner_vmap=learner_vmap,
        client_chunk=client_chunk,
    )
    algorithm = make_fedem(
        model,
        data.task,
        trainer,
        n_learners=cfg.n_learners,
        sampling_rate=cfg.sampling_rate,
        eval_chunk=cfg.eval_chunk,
        seed=cfg.seed,
    )
    layout = {
        "model": model_name,
        "conv_impl": getattr(model, "conv_impl", None),
        "client_chunk": client_chunk,
        "learner_vmap": learner_vmap,
    }
    return model, algorithm, layout


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


def _evaluate(algorithm, eval_fn, state, data: FederatedData) -> dict:
    out = {}
    for split_name, split in (("train", data.train), ("test", data.test)):
        for key, value in summarize_eval(eval_fn(state, split)).items():
            out[f"{split_name}_{key}"] = value
    return out


def run(cfg: Config, data: FederatedData | None = None, log=print) -> dict:
    """Train ``cfg`` end to end; returns the summary (also written to ``summary.json``)."""
    os.makedirs(cfg.workdir, exist_ok=True)
    with open(os.path.join(cfg.workdir, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=2)

    start = time.perf_counter()
    data = data if data is not None else load_dataset(cfg)
    data_seconds = time.perf_counter() - start
    model, algorithm, layout = build(cfg, data)
    state = algorithm.init(data)
    n_params = count_params(state.params) // cfg.n_learners
    log(data.summary())
    log(
        f"{cfg.method}: model {layout['model']} ({n_params:,} params x {cfg.n_learners} learners), "
        f"{jax.device_count()} {jax.default_backend()} device(s), layout: clients "
        f"{_layout_name(layout['client_chunk'])}, learners "
        f"{'vmap' if layout['learner_vmap'] else 'sequential'}"
    )

    round_jit = jax.jit(algorithm.round, donate_argnums=0)
    eval_jit = jax.jit(algorithm.evaluate)
    t0 = time.perf_counter()
    round_compiled = round_jit.lower(state, data.train).compile()
    compile_seconds = time.perf_counter() - t0
    log(f"compiled the round in {compile_seconds:.1f}s")

    metrics_path = os.path.join(cfg.workdir, "metrics.jsonl")
    history: list[dict] = []
    round_seconds: list[float] = []
    progress = _progress(cfg)
    with open(metrics_path, "w") as metrics_file:
        for r in range(cfg.n_rounds):
            t0 = time.perf_counter()
            state, round_metrics = round_compiled(state, data.train)
            round_metrics = jax.block_until_ready(round_metrics)
            round_seconds.append(time.perf_counter() - t0)
            train_nll = float(round_metrics["train_nll_start"])
            if not math.isfinite(train_nll):
                raise DivergenceError(
                    f"training loss became {train_nll} at round {r + 1}; try a lower --lr (now {cfg.lr})"
                )
            if (r + 1) % cfg.log_freq == 0 or r + 1 == cfg.n_rounds:
                t_eval = time.perf_counter()
                row = {"round": r + 1, **_evaluate(algorithm, eval_jit, state, data)}
                row["seconds_per_round"] = float(np.mean(round_seconds[-cfg.log_freq :]))
                row["eval_seconds"] = time.perf_counter() - t_eval
                history.append(row)
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                if progress is not None:
                    progress.set_postfix(
                        test_acc=f"{row['test_accuracy']:.4f}", s_per_round=f"{round_seconds[-1]:.3f}"
                    )
                if not math.isfinite(row["test_loss"]) or not math.isfinite(row["train_loss"]):
                    raise DivergenceError(
                        f"evaluation loss became non-finite at round {r + 1}; try a lower --lr"
                    )
            if progress is not None:
                progress.update(1)
    if progress is not None:
        progress.close()

    final = history[-1]
    steady = round_seconds[1:] if len(round_seconds) > 1 else round_seconds
    summary = {
        "dataset": cfg.dataset,
        "method": cfg.method,
        "model": layout["model"],
        "n_learners": cfg.n_learners,
        "n_clients": data.n_clients,
        "n_rounds": cfg.n_rounds,
        **{k: v for k, v in final.items() if k not in ("round", "seconds_per_round")},
        "seconds_per_round": float(np.mean(steady)),
        "compile_seconds": compile_seconds,
        "data_seconds": data_seconds,
        "total_seconds": time.perf_counter() - start,
        "layout": layout,
    }
    with open(os.path.join(cfg.workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def _layout_name(client_chunk: int) -> str:
    return {0: "vmap", 1: "sequential"}.get(client_chunk, f"chunks of {client_chunk}")


def _progress(cfg: Config):
    if cfg.quiet:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.n_rounds, desc="rounds", unit="round", dynamic_ncols=True)
