"""Pictures of the federation: how the data is split, which components the clients use.

- ``partition.png`` (from ``partition.json``, written when a run starts): per-client label counts
  for train and test, clients sorted by size (stacked bars, or a heatmap beyond 20 labels), and
  the distribution of client sizes;
- ``mixture.png`` (from ``clients.jsonl``): the last evaluation's mixture weights ``pi``,
  clients x components, clients grouped by their dominant component; the mean entropy of ``pi``
  over rounds; where the true weights are known (synthetic), their distance to the learned ones
  (``pi_tv_to_truth`` in ``metrics.jsonl``);
- ``clients_over_time.png`` (from ``clients.jsonl``): percentiles of per-client accuracy at each
  evaluation, to follow fairness over training.
"""

from __future__ import annotations

import json
import os

import numpy as np

from fedem_jax.errors import PlotError
from fedem_jax.reporting.outputs import atomic_open, mean_entropy, read_jsonl

STACKED_BARS_UP_TO = 20  # labels; beyond that a heatmap reads better


def label_counts(split, n_classes: int) -> np.ndarray:
    """``[clients, classes]`` label counts of a :class:`ClientSplit` (sequence labels: tokens)."""
    y = np.asarray(split.y).reshape(len(split.client_id), -1)
    ids = np.repeat(np.asarray(split.client_id), y.shape[1])
    flat = ids * n_classes + y.ravel().astype(np.int64)
    return np.bincount(flat, minlength=split.n_clients * n_classes).reshape(split.n_clients, n_classes)


def write_partition(workdir: str, data) -> str:
    """``partition.json``: per-client label counts of the training clients' train and test splits."""
    n_classes = int(max(np.max(data.train.y), np.max(data.test.y))) + 1
    payload = {
        "dataset": data.name,
        "n_classes": n_classes,
        "train": label_counts(data.train, n_classes).tolist(),
        "test": label_counts(data.test, n_classes).tolist(),
    }
    path = os.path.join(workdir, "partition.json")
    with atomic_open(path) as f:
        json.dump(payload, f, separators=(",", ":"))
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_partition(workdir: str, out_dir: str) -> str:
    """``partition.png`` from ``WORKDIR/partition.json``."""
    partition = _read_partition(os.path.join(workdir, "partition.json"))
    plt = _pyplot()
    fig, axes = plt.subplots(
        2, 2, figsize=(13, 7), width_ratios=(3, 1), constrained_layout=True, squeeze=False
    )
    order = np.argsort(-np.asarray(partition["train"]).sum(axis=1), kind="stable")  # the same in both
    for row, split in enumerate(("train", "test")):
        counts = np.asarray(partition[split])
        _draw_label_counts(axes[row, 0], counts[order], partition["n_classes"])
        axes[row, 0].set_title(f"{partition['dataset']} {split}: labels per client (by train size)")
        sizes = counts.sum(axis=1)
        low, high = sizes.min(), sizes.max()
        same_size = low == high
        if same_size:  # every client the same size: one bar, centred, one tick
            low, high = low - 0.5, high + 0.5
        axes[row, 1].hist(sizes, bins=min(30, max(5, len(counts) // 3)), range=(low, high), color="tab:gray")
        if same_size:
            axes[row, 1].set_xticks([sizes[0]])
        axes[row, 1].ticklabel_format(useOffset=False)
        axes[row, 1].set_title(f"{split} samples per client")
        axes[row, 1].set_xlabel("samples")
        axes[row, 1].set_ylabel("clients")
    return _save(fig, os.path.join(out_dir, "partition.png"))


def _read_partition(path: str) -> dict:
    """``partition.json``, checked: its counts are what :func:`plot_partition` draws."""
    if not os.path.isfile(path):
        raise PlotError(f"{path} not found: it is written when a run starts")
    try:
        with open(path) as f:
            partition = json.load(f)
        counts = [np.asarray(partition[split], np.int64) for split in ("train", "test")]
        ok = all(c.ndim == 2 and len(c) for c in counts) and isinstance(partition["n_classes"], int)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise PlotError(f"{path}: not a fedem_jax partition (per-client label counts)")
    return partition


def _draw_label_counts(ax, counts: np.ndarray, n_classes: int) -> None:
    if n_classes <= STACKED_BARS_UP_TO:
        colors = _pyplot().get_cmap("tab20" if n_classes > 10 else "tab10")
        edges = np.arange(len(counts) + 1)  # one step polygon per label: fast for many clients
        tops = np.cumsum(counts, axis=1)
        for label in range(n_classes):
            top = np.append(tops[:, label], tops[-1, label])
            bottom = top - np.append(counts[:, label], counts[-1, label])
            ax.fill_between(edges, bottom, top, step="post", color=colors(label), label=str(label), lw=0)
        columns = 1 + n_classes // 11
        ax.legend(title="label", ncol=columns, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_xlim(0, len(counts))
        ax.set_ylabel("samples")
    else:
        image = ax.imshow(counts.T, aspect="auto", interpolation="nearest", cmap="viridis")
        _pyplot().colorbar(image, ax=ax, label="samples")
        ax.set_ylabel("label")
    ax.set_xlabel("client (largest train split first)")


def _last_records(workdir: str) -> tuple[list[dict], dict]:
    """The per-client records of the first run (the single run, or run 0 of a sweep), and its last."""
    path = os.path.join(workdir, "clients.jsonl")
    if os.path.exists(path) and not os.path.isfile(path):
        raise PlotError(f"{path} is not a file")
    records = [r for r in read_jsonl(path) if isinstance(r, dict)]
    if not records:
        raise PlotError(f"{path} is missing or empty")
    needed = ("round", "pi", "train_accuracy")
    if not all(key in r for r in records for key in needed):
        raise PlotError(f"{path}: not fedem_jax per-client records (each needs {', '.join(needed)})")
    first_run = records[0].get("run")
    mine = [r for r in records if r.get("run") == first_run]
    return mine, mine[-1]


def group_by_dominant(pi: np.ndarray) -> np.ndarray:
    """Client order: by dominant component, then by its weight (largest first)."""
    dominant = pi.argmax(axis=1)
    return np.lexsort((-pi[np.arange(len(pi)), dominant], dominant))


def plot_mixture(workdir: str, out_dir: str) -> str:
    """``mixture.png`` from ``clients.jsonl`` (and ``metrics.jsonl`` for the distance to truth)."""
    records, last = _last_records(workdir)
    pi = np.asarray(last["pi"])
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    order = group_by_dominant(pi)
    image = axes[0].imshow(pi[order].T, aspect="auto", interpolation="nearest", vmin=0, vmax=1, cmap="magma")
    fig.colorbar(image, ax=axes[0], label="pi")
    axes[0].set_yticks(range(pi.shape[1]))
    axes[0].set_xlabel("client (grouped by dominant component)")
    axes[0].set_ylabel("component")
    axes[0].set_title(f"mixture weights at round {last['round']}")
    rounds = [r["round"] for r in records]
    entropy = [mean_entropy(np.asarray(r["pi"])) for r in records]
    axes[1].plot(rounds, entropy, marker=".", label="mean entropy of pi")
    axes[1].axhline(np.log(pi.shape[1]), color="gray", linestyle=":", label="uniform (log M)")
    truth = [
        (row["round"], row["pi_tv_to_truth"])
        for row in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        if "pi_tv_to_truth" in row and row.get("run") == last.get("run")
    ]
    if truth:
        axes[1].plot(*zip(*truth, strict=True), marker=".", label="distance to the true pi (TV)")
    axes[1].set_xlabel("round")
    axes[1].set_title("how the mixture weights settle")
    axes[1].legend()
    axes[1].grid(alpha=0.3)
    return _save(fig, os.path.join(out_dir, "mixture.png"))


def plot_clients_over_time(workdir: str, out_dir: str) -> str:
    """``clients_over_time.png``: percentiles of per-client accuracy at each evaluation."""
    records, last = _last_records(workdir)
    key = "test_accuracy" if "test_accuracy" in last else "val_accuracy"
    rounds = [r["round"] for r in records]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    values = np.asarray([r[key] for r in records])
    for q, style in ((10, ":"), (50, "-"), (90, "--")):
        ax.plot(rounds, np.percentile(values, q, axis=1), style, label=f"{q}th percentile")
    ax.fill_between(rounds, values.min(axis=1), values.max(axis=1), alpha=0.15, label="min to max")
    ax.set_xlabel("round")
    ax.set_ylabel(f"per-client {key.replace('_', ' ')}")
    ax.set_title("per-client accuracy over training")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, os.path.join(out_dir, "clients_over_time.png"))
