"""Plot one or several runs: ``python -m fedem_jax.plot WORKDIR [WORKDIR ...] [--out DIR]``.

``--partition WORKDIR`` draws the client split instead (``partition.png``), ``--mixture WORKDIR``
the mixture weights and per-client accuracy over rounds (``mixture.png``,
``clients_over_time.png``); see :mod:`fedem_jax.federation_plots`. By default it writes
- ``curves.png``: test accuracy, bottom-10 % accuracy and test loss against rounds, one line per
  run (e.g. methods side by side); a sweep (``--seeds``, lists of settings) draws the mean over
  seeds of each setting with a band of ± one standard deviation;
- ``clients.png``: histogram of per-client test accuracy at the end of each run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys


def load_run(workdir: str) -> dict:
    """Metrics rows, per-client accuracies and a label for one workdir."""
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(metrics_path):
        raise FileNotFoundError(f"{metrics_path} not found: is {workdir!r} a fedem_jax workdir?")
    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    clients = []
    clients_path = os.path.join(workdir, "clients.csv")
    if os.path.exists(clients_path):
        with open(clients_path) as f:
            clients = [float(r["test_accuracy"]) for r in csv.DictReader(f)]
    label = os.path.basename(os.path.normpath(workdir))
    config_path = os.path.join(workdir, "config.json")
    grid = []
    if os.path.exists(config_path):
        with open(config_path) as f:
            config = json.load(f)
        label = f"{config['method']} ({label})"
        grid = [k for k, v in config.items() if isinstance(v, list) and k != "seed"]
    return {"rows": rows, "clients": clients, "label": label, "grid": grid}


def mean_curves(run: dict, key: str) -> list[tuple[str, list, list, list | None]]:
    """``(label, rounds, mean, std)`` per line: one per run, or per setting of a sweep (its mean
    over seeds, ``std`` their standard deviation; ``None`` for a single run)."""
    import numpy as np

    rows = run["rows"]
    if not rows or "run" not in rows[0]:
        return [(run["label"], [r["round"] for r in rows], [r[key] for r in rows], None)]
    lines = []
    settings = sorted({tuple(r[k] for k in run["grid"]) for r in rows})
    for setting in settings:
        mine = [r for r in rows if tuple(r[k] for k in run["grid"]) == setting]
        rounds = sorted({r["round"] for r in mine})
        values = [[r[key] for r in mine if r["round"] == t] for t in rounds]
        name = ", ".join(f"{k} {v}" for k, v in zip(run["grid"], setting, strict=True))
        label = f"{run['label']} {name}".strip() + f" (mean of {len(values[-1])})"
        std = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values]
        lines.append((label, rounds, [float(np.mean(v)) for v in values], std))
    return lines


def plot_runs(workdirs: list[str], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load_run(w) for w in workdirs]
    os.makedirs(out_dir, exist_ok=True)
    split = "test" if all("test_accuracy" in run["rows"][0] for run in runs if run["rows"]) else "val"
    panels = [
        (f"{split}_accuracy", f"{split} accuracy"),
        (f"{split}_accuracy_bottom10", f"{split} accuracy, bottom 10 % of clients"),
        (f"{split}_loss", f"{split} loss"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), constrained_layout=True)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for run in runs:
            for label, rounds, mean, std in mean_curves(run, key):
                (line,) = ax.plot(rounds, mean, marker="." if len(rounds) < 30 else None, label=label)
                if std is not None:
                    low = [m - s for m, s in zip(mean, std, strict=True)]
                    high = [m + s for m, s in zip(mean, std, strict=True)]
                    ax.fill_between(rounds, low, high, color=line.get_color(), alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].legend()
    curves = os.path.join(out_dir, "curves.png")
    fig.savefig(curves, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for run in runs:
        if run["clients"]:
            ax.hist(run["clients"], bins=20, range=(0, 1), alpha=0.5, label=run["label"])
    ax.set_xlabel("per-client test accuracy")
    ax.set_ylabel("clients")
    ax.set_title("per-client test accuracy at the end")
    ax.legend()
    hist = os.path.join(out_dir, "clients.png")
    fig.savefig(hist, dpi=110)
    plt.close(fig)
    return [curves, hist]


def _plot(args) -> list[str]:
    from fedem_jax import federation_plots

    if not (args.partition or args.mixture):
        return plot_runs(args.workdirs, args.out or args.workdirs[0])
    paths = []
    for workdir in args.workdirs:
        out = args.out or workdir
        os.makedirs(out, exist_ok=True)
        if args.partition:
            paths.append(federation_plots.plot_partition(workdir, out))
        if args.mixture:
            paths.append(federation_plots.plot_mixture(workdir, out))
            paths.append(federation_plots.plot_clients_over_time(workdir, out))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedem_jax.plot", description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", help="run folders (each with metrics.jsonl)")
    parser.add_argument("--out", default="", help="where to write the PNGs (default: the first workdir)")
    parser.add_argument("--partition", action="store_true", help="draw the client split (partition.png)")
    parser.add_argument("--mixture", action="store_true", help="draw pi and per-client accuracy over rounds")
    args = parser.parse_args(argv)
    try:
        paths = _plot(args)
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
