"""Evaluation rows: per-client statistics of the evaluated splits, summarised into one metrics row.

Accuracy is ``sum_t correct_t / sum_t n_t`` over clients; loss the NLL of each method's prediction;
``accuracy_bottom10`` the 10th percentile of per-client accuracy (the paper's "bottom 10%").
"""

from __future__ import annotations

import time

import jax
import numpy as np

from fedem_jax import outputs
from fedem_jax.config import Config
from fedem_jax.data import FederatedData
from fedem_jax.data.sharding import real_clients


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
    return ("val", data.val) if cfg.output.validation else ("test", data.test)


def evaluate_both(eval_fn, state, data: FederatedData, cfg: Config, n_clients: int) -> tuple[dict, dict]:
    """Per-client stats on train and on the evaluation split, in federation order (host numpy).

    ``eval_fn(state, splits)`` evaluates a tuple of splits (so that FedAvg+ fine-tunes once)."""
    train, other = data.train, eval_split(cfg, data)[1]
    train_stats, other_stats = eval_fn(state, (train, other))
    return real_clients(train_stats, train, n_clients), real_clients(other_stats, other, n_clients)


def evaluation_row(
    eval_fn, unseen_fn, state, data, cfg, n_clients: int, done: int, recent_seconds: list[float]
) -> tuple[dict, tuple[dict, dict]]:
    """One metrics row, and the per-client stats it was computed from (for ``clients.csv``)."""
    t0 = time.perf_counter()
    train_stats, test_stats = evaluate_both(eval_fn, state, data, cfg, n_clients)
    row = {"round": done}
    parts = [("train", train_stats), (eval_split(cfg, data)[0], test_stats)]
    if data.n_unseen:
        unseen_stats, _ = unseen_fn(state, data.unseen_train, data.unseen_test, cfg.output.unseen_em_iters)
        parts.append(("unseen_test", jax.tree.map(np.asarray, unseen_stats)))
    for prefix, stats in parts:
        row.update({f"{prefix}_{k}": v for k, v in summarize_eval(stats).items()})
    row["pi_entropy"] = outputs.mean_entropy(real_clients(state.clients.pi, data.train, n_clients))
    row["seconds_per_round"] = float(np.mean(recent_seconds))
    row["eval_seconds"] = time.perf_counter() - t0
    return row, (train_stats, test_stats)


ENGINE_METRICS = ("train_nll_start", "params_finite", "participants")


def method_metrics(round_metrics: dict) -> dict:
    """A method's own diagnostics of the last round (clusters, APFL's alpha, AFL's lambda)."""
    return {k: float(v) for k, v in round_metrics.items() if k not in ENGINE_METRICS}
