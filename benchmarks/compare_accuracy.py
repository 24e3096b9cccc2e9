"""Test accuracy per round: fedem_jax against the reference-style PyTorch FedEM, side by side on the
same CIFAR-10 clients, both with PyTorch's initialisation and the reference's partial-batch rule.

    python benchmarks/compare_accuracy.py --extra --data_dir ../shared/data/tensorflow_datasets

Clients: the first ``--clients`` of the default 80-client split. Both sides: CIFAR10CNN, M = 3,
lr 0.03 (constant), batch 128, SGD momentum 0.9, weight decay 5e-4, one local epoch,
``--drop_last`` as the reference (a client smaller than a batch keeps its one batch), round 0 the
model before training. Writes ``benchmarks/results/compare_accuracy_cifar10.json`` and prints the
table and the largest gap.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from compare_reference import make_reference, reference_datasets
from timing import write_result

from fedem_jax.data import FederatedData, build_split, load_dataset
from fedem_jax.settings.cli import resolve
from fedem_jax.training.loop import run


def first_clients(data: FederatedData, n: int) -> FederatedData:
    """The federation of ``data``'s first ``n`` clients (their train and test samples)."""

    def head(split):
        x, y = np.asarray(split.x), np.asarray(split.y)
        parts = list(zip(np.asarray(split.offsets), np.asarray(split.counts), strict=True))[:n]
        return build_split([x[o : o + c] for o, c in parts], [y[o : o + c] for o, c in parts])

    return FederatedData(data.name, head(data.train), head(data.test), data.task)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more fedem_jax flags")
    args = parser.parse_args()
    flags = ["--dataset", "cifar10", "--n_rounds", str(args.rounds), "--log_freq", "1"]
    flags += ["--lr_scheduler", "constant", "--init", "torch", "--drop_last", "true"]
    flags += [
        "--overwrite",  # the same scratch workdir every time
        "--checkpoint_every",
        "0",
        "--tensorboard",
        "false",
        "--quiet",
        "--workdir",
        "/tmp/fedem_jax_accuracy",
    ]
    flags += args.extra
    cfg = resolve(flags)
    data = first_clients(load_dataset(cfg), args.clients)
    print(data.summary(), flush=True)

    t0 = time.perf_counter()
    run(cfg, data=data, log=lambda *_: None)
    with open(os.path.join(cfg.output.workdir, "metrics.jsonl")) as f:
        ours = [json.loads(line)["test_accuracy"] for line in f]
    ours_seconds = time.perf_counter() - t0
    print(f"fedem_jax: {[round(100 * a, 1) for a in ours]} ({ours_seconds:.0f} s)", flush=True)

    t0 = time.perf_counter()
    baseline = make_reference(cfg, data, seed=cfg.training.seed)
    test_sets = reference_datasets(cfg, data.test)
    theirs = [baseline.evaluate(test_sets)]
    for _ in range(args.rounds):
        baseline.run_round()
        theirs.append(baseline.evaluate(test_sets))
        print(f"reference-style round {len(theirs) - 1}: {100 * theirs[-1]:.1f}", flush=True)
    theirs_seconds = time.perf_counter() - t0

    gaps = [100 * abs(a - b) for a, b in zip(ours, theirs, strict=True)]
    lines = ["| round | " + " | ".join(str(r) for r in range(len(ours))) + " |",
             "|---|" + "---|" * len(ours),
             "| reference-style (PyTorch) | " + " | ".join(f"{100 * a:.1f}" for a in theirs) + " |",
             "| fedem_jax `--init torch` | " + " | ".join(f"{100 * a:.1f}" for a in ours) + " |"]  # fmt: skip
    print("\n".join(lines))
    print(f"largest gap: {max(gaps):.1f} points (round {int(np.argmax(gaps))})")
    out = {
        "command": "python benchmarks/compare_accuracy.py " + " ".join(sys.argv[1:]),
        "data": data.summary(),
        "fedem_jax": ours,
        "reference_style": theirs,
        "gaps_points": gaps,
        "largest_gap_points": max(gaps),
        "seconds": {"fedem_jax": ours_seconds, "reference_style": theirs_seconds},
        "table": lines,
    }
    print(f"wrote {write_result('compare_accuracy_cifar10', out)}")


if __name__ == "__main__":
    main()
