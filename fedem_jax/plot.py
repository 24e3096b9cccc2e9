"""Plot one or several runs: ``python -m fedem_jax.plot WORKDIR [WORKDIR ...] [--out DIR]``.

Writes
- ``curves.png``: test accuracy, bottom-10 % accuracy and test loss against rounds, one line per
  run (e.g. methods side by side);
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
    if os.path.exists(config_path):
        with open(config_path) as f:
            config = json.load(f)
        label = f"{config['method']} ({label})"
    return {"rows": rows, "clients": clients, "label": label}


def plot_runs(workdirs: list[str], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load_run(w) for w in workdirs]
    os.makedirs(out_dir, exist_ok=True)
    panels = [
        ("test_accuracy", "test accuracy"),
        ("test_accuracy_bottom10", "test accuracy, bottom 10 % of clients"),
        ("test_loss", "test loss"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), constrained_layout=True)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for run in runs:
            rounds = [r["round"] for r in run["rows"]]
            ax.plot(
                rounds,
                [r[key] for r in run["rows"]],
                marker="." if len(rounds) < 30 else None,
                label=run["label"],
            )
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedem_jax.plot", description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", help="run folders (each with metrics.jsonl)")
    parser.add_argument("--out", default="", help="where to write the PNGs (default: the first workdir)")
    args = parser.parse_args(argv)
    try:
        paths = plot_runs(args.workdirs, args.out or args.workdirs[0])
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
