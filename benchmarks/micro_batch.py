"""Does running each client's last, partial batch as 32-sample sub-batches save real time?

    python benchmarks/micro_batch.py

Clients get the synthetic paper split's sizes (lognormal, 50..1000 samples, the first
``--clients`` of them) but 16x16x1 random images and the small ``cnn`` model, so that compute,
not overhead, dominates a step. One FedAvg round (M = 1, batch 128, sequential clients) is timed
with ``--micro_batch 0`` and ``32`` in the same process; results are identical up to float
rounding. Writes ``benchmarks/results/micro_batch.json``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from timing import time_rounds, write_result

from fedem_jax.core.tasks import Task
from fedem_jax.data import FederatedData, build_split
from fedem_jax.data.synthetic import generate_synthetic
from fedem_jax.settings.cli import resolve


def image_clients(n_clients: int, seed: int = 0) -> FederatedData:
    sizes = np.asarray(generate_synthetic(n_test_per_client=1)[0].train.counts)[:n_clients]
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, 16, 16, 1)).astype(np.float32) for n in sizes]
    ys = [rng.integers(0, 10, n).astype(np.int32) for n in sizes]
    return FederatedData("images", build_split(xs, ys), build_split(xs[:1], ys[:1]), Task(10))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = image_clients(args.clients)
    counts = np.asarray(data.train.counts)
    rows = {}
    for micro in (0, 32):
        flags = ["--method", "FedAvg", "--model", "cnn", "--client_chunk", "1", "--micro_batch", str(micro)]
        cfg = resolve([*flags, "--lr_scheduler", "constant", "--workdir", "/tmp/fedem_jax_micro", "--quiet"])
        timing = time_rounds(cfg, data, args.rounds)
        rows[f"micro_batch_{micro}"] = timing
        print(f"--micro_batch {micro}: {timing['seconds_per_round']:.3f} s/round "
              f"(compile {timing['compile_seconds']:.1f} s)", flush=True)  # fmt: skip
    ratio = rows["micro_batch_0"]["seconds_per_round"] / rows["micro_batch_32"]["seconds_per_round"]
    full, rest = counts // 128, counts % 128
    slots = {
        "padded": int((-(-counts // 128) * 128).sum()),
        "micro_32": int((full * 128 + -(-rest // 32) * 32).sum()),
    }
    print(f"speedup {ratio:.2f}x; executed sample-slots {slots['padded']} -> {slots['micro_32']} "
          f"(useful {int(counts.sum())})")  # fmt: skip
    out = {"command": "python benchmarks/micro_batch.py " + " ".join(sys.argv[1:]), "rows": rows,
           "speedup": ratio, "sample_slots": slots, "useful_samples": int(counts.sum())}  # fmt: skip
    print(f"wrote {write_result('micro_batch', out)}")


if __name__ == "__main__":
    main()
