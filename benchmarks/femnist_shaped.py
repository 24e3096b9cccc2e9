"""Memory of a FEMNIST-shaped federation: 3,550 writers with ``--federation host`` and fresh momentum,
against today's default (all on the device, persistent momentum) on 300 writers.

    python benchmarks/femnist_shaped.py                      # one round each (memory peaks there)
    python benchmarks/femnist_shaped.py --rounds 2 --stores /tmp/femnist_shaped

Writers get LEAF FEMNIST's sample counts (3,550 writers, 805,263 samples: mean 226.8, standard
deviation 88.9, drawn here from a normal of those moments, at least 10 each), 28x28x1 images of
62 classes (a class template plus noise: generated, not FEMNIST), 80/20 train/test per writer,
written as stores (``fedem_jax.data.store``), the FEMNIST CNN, FedEM with M = 3, 10 % of the
writers a round. Each run is its own ``python -m fedem_jax.main`` process; its peak RSS comes
from ``os.wait4``. Writes ``benchmarks/results/femnist_shaped.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from scale_clients import run_measured
from timing import write_result

from fedem_jax.core.tasks import Task
from fedem_jax.data.store import StoreWriter

LEAF_WRITERS, LEAF_MEAN, LEAF_STD, CLASSES = 3550, 226.8, 88.9, 62


def write_femnist_shaped(folder: str, n_writers: int, seed: int = 0) -> str:
    """A FEMNIST-shaped store of ``n_writers`` writers (the first ``n_writers`` of the same draws)."""
    if os.path.exists(os.path.join(folder, "federation.json")):
        return folder
    rng = np.random.default_rng(seed)
    sizes = np.maximum(10, np.round(rng.normal(LEAF_MEAN, LEAF_STD, LEAF_WRITERS))).astype(int)[:n_writers]
    n_test = np.round(0.2 * sizes).astype(int)
    templates = rng.normal(0.0, 1.0, (CLASSES, 28, 28, 1)).astype(np.float32)
    samples = {
        "train": (int((sizes - n_test).sum()), (28, 28, 1), np.float32, np.int32),
        "test": (int(n_test.sum()), (28, 28, 1), np.float32, np.int32),
    }
    writer = StoreWriter(
        folder, "femnist_shaped", Task(num_classes=CLASSES), n_writers, samples, "femnist_cnn"
    )
    for size, tests in zip(sizes, n_test, strict=True):
        labels = rng.integers(0, CLASSES, size).astype(np.int32)
        images = templates[labels] + rng.normal(0.0, 1.0, (size, 28, 28, 1)).astype(np.float32)
        writer.add("train", images[tests:], labels[tests:])
        writer.add("test", images[:tests], labels[:tests])
    return writer.finish()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--stores", default="/tmp/femnist_shaped")
    args = parser.parse_args()
    os.makedirs(args.stores, exist_ok=True)
    runs = {
        "300 writers, device, persistent momentum (today's default)": (300, []),
        "3,550 writers, --federation host, fresh momentum": (
            LEAF_WRITERS,
            ["--federation", "host", "--cohort", "--client_momentum", "fresh", "--eval_clients", "100"],
        ),
    }  # fmt: skip
    results = {}
    for name, (writers, flags) in runs.items():
        folder = write_femnist_shaped(os.path.join(args.stores, f"writers_{writers}"), writers)
        workdir = os.path.join(args.stores, f"run_{writers}")
        command = [
            sys.executable, "-m", "fedem_jax.main", "--dataset", "store", "--data_path", folder,
            "--sampling_rate", "0.1", "--n_rounds", str(args.rounds), "--log_freq", str(args.rounds),
            "--workdir", workdir, "--overwrite", "--quiet", "--plots", "false", "--tensorboard", "false",
            "--checkpoint_every", "0", *flags,
        ]  # fmt: skip
        code, peak, last = run_measured(command, workdir + ".log")
        entry = {"peak_rss_gib": peak / 2**30, "exit": code, "last_line": last}
        if code == 0:
            with open(os.path.join(workdir, "summary.json")) as f:
                summary = json.load(f)
            entry.update(
                seconds_per_round=summary["seconds_per_round"], compile_seconds=summary["compile_seconds"]
            )
        results[name] = entry
        print(name, entry, flush=True)
    print(f"wrote {write_result('femnist_shaped', {'settings': vars(args), 'results': results})}")


if __name__ == "__main__":
    main()
