"""Plot one or several runs: ``python -m fedem_jax.plot WORKDIR [WORKDIR ...] [--out DIR]``.

``--partition WORKDIR`` draws the client split instead (``partition.png``), ``--mixture WORKDIR``
the mixture weights and per-client accuracy over rounds (``mixture.png``,
``clients_over_time.png``); see :mod:`fedem_jax.reporting.federation_plots`. By default it writes
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

from fedem_jax.errors import PlotError


def read_rows(path: str) -> list[dict]:
    """The metrics rows of a ``metrics.jsonl``: a last line cut by a crash is skipped (as the
    trainer does); any other line that is not a JSON object of a round is named."""
    if not os.path.isfile(path):
        what = "is not a file" if os.path.exists(path) else "not found"
        raise PlotError(f"{path} {what}: is {os.path.dirname(path) or '.'!r} a fedem_jax workdir?")
    with open(path) as f:
        lines = f.read().split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if number >= len(lines) - 1:  # the last line, half-written
                break
            raise PlotError(f"{path}, line {number}: not a JSON object") from None
        if not isinstance(row, dict) or not isinstance(row.get("round"), int):
            raise PlotError(f"{path}, line {number}: not a metrics row (no round)")
        rows.append(row)
    return rows


def _read_json_dict(path: str) -> dict:
    """A JSON object from ``path``, or ``{}`` if it is missing, unreadable or not an object."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _client_accuracies(path: str) -> list[float]:
    """Per-client test accuracy from ``clients.csv`` (``[]`` if it is missing or has none)."""
    if not os.path.isfile(path):
        return []
    try:
        with open(path, newline="") as f:
            return [float(r["test_accuracy"]) for r in csv.DictReader(f) if r.get("test_accuracy")]
    except (KeyError, ValueError, csv.Error) as err:
        raise PlotError(f"{path}: not a fedem_jax clients.csv ({err})") from None


def load_run(workdir: str) -> dict:
    """Metrics rows, per-client accuracies and a label for one workdir."""
    rows = read_rows(os.path.join(workdir, "metrics.jsonl"))
    clients = _client_accuracies(os.path.join(workdir, "clients.csv"))
    label = os.path.basename(os.path.normpath(workdir))
    config = _read_json_dict(os.path.join(workdir, "config.json"))
    if isinstance(config.get("method"), str):
        label = f"{config['method']} ({label})"
    grid = [k for k, v in config.items() if isinstance(v, list) and k != "seed"]
    return {"rows": rows, "clients": clients, "label": label, "grid": grid, "workdir": workdir}


def _check_key(run: dict, key: str) -> None:
    if not any(key in row for row in run["rows"]):
        raise PlotError(f"{run['workdir']}/metrics.jsonl: no row has {key!r} (not a fedem_jax metrics file?)")


def mean_curves(run: dict, key: str) -> list[tuple[str, list, list, list | None]]:
    """``(label, rounds, mean, std)`` per line: one per run, or per setting of a sweep (its mean
    over seeds, ``std`` their standard deviation; ``None`` for a single run)."""
    import numpy as np

    rows = [r for r in run["rows"] if key in r]
    if not rows or "run" not in rows[0]:
        return [(run["label"], [r["round"] for r in rows], [r[key] for r in rows], None)]
    lines = []
    settings = sorted({tuple(r.get(k) for k in run["grid"]) for r in rows}, key=str)
    for setting in settings:
        mine = [r for r in rows if tuple(r.get(k) for k in run["grid"]) == setting]
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
    make_out_dir(out_dir)
    split = "test" if all("test_accuracy" in run["rows"][0] for run in runs if run["rows"]) else "val"
    panels = [
        (f"{split}_accuracy", f"{split} accuracy"),
        (f"{split}_accuracy_bottom10", f"{split} accuracy, bottom 10 % of clients"),
        (f"{split}_loss", f"{split} loss"),
    ]
    for run in runs:
        for key, _ in panels:
            _check_key(run, key)
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
    if any(run["clients"] for run in runs):
        ax.legend()
    hist = os.path.join(out_dir, "clients.png")
    fig.savefig(hist, dpi=110)
    plt.close(fig)
    return [curves, hist]


def make_out_dir(out_dir: str) -> None:
    """Create the output folder, or say why it cannot be."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise PlotError(f"--out {out_dir}: a file of that name exists; give a folder")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        raise PlotError(f"--out {out_dir}: cannot create it ({err.strerror or err})") from None


def _plot(args) -> list[str]:
    from fedem_jax.reporting import federation_plots

    if not (args.partition or args.mixture):
        return plot_runs(args.workdirs, args.out or args.workdirs[0])
    paths = []
    for workdir in args.workdirs:
        out = args.out or workdir
        make_out_dir(out)
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
    except PlotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # reading or writing a file: which one, and why
        print(f"error: {err.filename or ''}: {err.strerror or err}".replace(": : ", ": "), file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
