"""Evaluation rows: per-client statistics of the evaluated splits, summarised into one metrics row.

Accuracy is ``sum_t correct_t / sum_t n_t`` over clients; loss the NLL of each method's prediction;
``accuracy_bottom10`` the 10th percentile of per-client accuracy (the paper's "bottom 10%").
"""

from __future__ import annotations

import time

import jax
import numpy as np

from fedem_jax.data import FederatedData
from fedem_jax.data.sharding import real_clients
from fedem_jax.reporting import outputs
from fedem_jax.settings.schema import Config


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


def take_run(tree, run: int | None):
    """Run ``run``'s slice of a tree with a leading runs axis (``None``: no runs axis)."""
    return tree if run is None else jax.tree.map(lambda a: a[run], tree)


def to_host_runs(tree, runs: list[dict] | None):
    """A sweep's arrays (one device) on the host, to be sliced per run; a single run's are left as
    they are (with --distributed they span processes: ``real_clients`` gathers them)."""
    return tree if runs is None else jax.device_get(tree)


def run_indices(runs: list[dict] | None) -> list[int | None]:
    """``[None]`` for a single run, else ``[0, ..., R - 1]``."""
    return [None] if runs is None else list(range(len(runs)))


def evaluate_both(eval_fn, state, data: FederatedData, cfg: Config, n_clients: int, runs=None) -> list:
    """Per-client stats ``(train, eval split)`` of every run, in federation order (host numpy).

    ``eval_fn(state, splits)`` evaluates a tuple of splits (so that FedAvg+ fine-tunes once)."""
    train, other = data.train, eval_split(cfg, data)[1]
    both = to_host_runs(eval_fn(state, (train, other)), runs)
    return [
        (
            real_clients(take_run(both[0], i), train, n_clients),
            real_clients(take_run(both[1], i), other, n_clients),
        )
        for i in run_indices(runs)
    ]


def evaluation_rows(
    eval_fn, unseen_fn, state, data, cfg, n_clients: int, done: int, recent_seconds: list[float], runs=None
) -> tuple[list[dict], list]:
    """One metrics row per run (with the run's index and settings in a sweep), and the per-client
    stats they were computed from (for ``clients.csv``)."""
    t0 = time.perf_counter()
    stats = evaluate_both(eval_fn, state, data, cfg, n_clients, runs)
    unseen = None
    if data.n_unseen:
        unseen_stats = unseen_fn(state, data.unseen_train, data.unseen_test, cfg.output.unseen_em_iters)[0]
        unseen = jax.tree.map(np.asarray, to_host_runs(unseen_stats, runs))
    pi_all = to_host_runs(state.clients.pi, runs)
    split = eval_split(cfg, data)[0]
    rows, client_records = [], []
    for (train_stats, test_stats), i in zip(stats, run_indices(runs), strict=True):
        row = {"round": done} if i is None else {"round": done, "run": i, **runs[i]}
        parts = [("train", train_stats), (split, test_stats)]
        if unseen is not None:
            parts.append(("unseen_test", take_run(unseen, i)))
        for prefix, part in parts:
            row.update({f"{prefix}_{k}": v for k, v in summarize_eval(part).items()})
        pi = real_clients(take_run(pi_all, i), data.train, n_clients)
        row["pi_entropy"] = outputs.mean_entropy(pi)
        if data.true_pi is not None and data.true_pi.shape == np.shape(pi):
            finite = np.all(np.isfinite(pi))  # a diverged run's pi can be NaN
            row["pi_tv_to_truth"] = pi_distance_to_truth(pi, data.true_pi) if finite else float("nan")
        row["seconds_per_round"] = float(np.mean(recent_seconds)) if recent_seconds else 0.0
        rows.append(row)
        client_records.append(client_record(row, split, train_stats, test_stats, pi))
    for row in rows:
        row["eval_seconds"] = time.perf_counter() - t0
    return rows, stats, client_records


def client_record(row: dict, split: str, train_stats: dict, test_stats: dict, pi) -> dict:
    """One evaluation's per-client accuracy, loss and ``pi`` (a line of ``clients.jsonl``)."""

    def per_client(stats: dict, key: str) -> list[float]:
        values = np.asarray(stats[key], np.float64) / np.maximum(np.asarray(stats["count"], np.float64), 1)
        return [round(float(v), 6) for v in values]

    record = {key: row[key] for key in ("round", "run") if key in row}
    record["train_accuracy"] = per_client(train_stats, "correct")
    record[f"{split}_accuracy"] = per_client(test_stats, "correct")
    record[f"{split}_loss"] = per_client(test_stats, "loss_sum")
    record["pi"] = [[round(float(p), 6) for p in client] for client in np.asarray(pi)]
    return record


def pi_distance_to_truth(pi, true_pi) -> float:
    """How well learned mixture weights recover the true ones, up to a renaming of the
    components: ``min_P mean_c TV(pi_c[P], true_c)``, ``TV = 0.5 * L1`` (0: exact, 1: disjoint).

    The L1 sum over clients and components separates over components, so the best permutation
    is a linear assignment on ``cost[k, m] = sum_c |true[c, k] - pi[c, m]|``.
    """
    from scipy.optimize import linear_sum_assignment

    pi, true_pi = np.asarray(pi, np.float64), np.asarray(true_pi, np.float64)
    cost = np.abs(true_pi[:, :, None] - pi[:, None, :]).sum(axis=0)
    rows, cols = linear_sum_assignment(cost)
    return float(0.5 * cost[rows, cols].sum() / pi.shape[0])


ENGINE_METRICS = ("train_nll_start", "params_finite", "participants")


def method_metrics(round_metrics: dict, run: int | None = None) -> dict:
    """A method's own diagnostics of the last round (clusters, APFL's alpha, AFL's lambda)."""
    own = {k: v for k, v in round_metrics.items() if k not in ENGINE_METRICS}
    return {k: float(v) for k, v in take_run(own if run is None else jax.device_get(own), run).items()}
