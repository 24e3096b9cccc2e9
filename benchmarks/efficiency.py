"""Work accounting for a FedEM round: useful FLOPs, padding efficiency, and the machine's matmul peak.

    python benchmarks/efficiency.py            # padding efficiency of the synthetic paper split
    python benchmarks/efficiency.py --peak     # also measure the float32 matmul peak

FLOPs are counted analytically (2 per multiply-add; a training step costs 3 forward passes:
forward, input gradient, weight gradient) so that the achieved rate is *useful* work per second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np

# CIFAR10CNN forward multiply-adds per image (spec section 5 shapes).
CIFAR10_CNN_MACS = (
    28 * 28 * 32 * 5 * 5 * 3  # conv1 -> 28x28x32
    + 10 * 10 * 64 * 5 * 5 * 32  # conv2 -> 10x10x64
    + 1600 * 2048  # fc1
    + 2048 * 10  # fc2
)


def steps_per_client(counts: np.ndarray, batch: int, drop_last: bool) -> np.ndarray:
    return counts // batch if drop_last else -(-counts // batch)


def fedem_round_flops(
    train_counts, batch: int, n_learners: int, drop_last: bool, forward_flops: float, local_epochs: int = 1
) -> float:
    """Useful FLOPs of one round: E-step forward of every learner on every training sample, plus
    3 forward-equivalents per trained sample per learner and epoch."""
    counts = np.asarray(train_counts, np.int64)
    trained = counts if not drop_last else steps_per_client(counts, batch, True) * batch
    return float(n_learners * forward_flops * (counts.sum() + 3 * local_epochs * trained.sum()))


def padding_efficiency(train_counts, batch: int, drop_last: bool, micro_batch: int = 32) -> dict:
    """Useful sample-slots / executed sample-slots of one local epoch, per client layout.

    - sequential clients (``lax.cond`` skips a client's steps past its data): each executed step
      holds ``batch`` slots, the last one partly empty;
    - sequential clients with ``--micro_batch b`` (the CPU default, b = 32): the last, partial
      step runs ``ceil(k / b)`` sub-batches of ``b`` slots (a ``fori_loop`` with that trip count);
    - vmapped clients: every client runs the largest client's number of steps.
    """
    counts = np.asarray(train_counts, np.int64)
    steps = steps_per_client(counts, batch, drop_last)
    useful = float((steps * batch).sum()) if drop_last else float(counts.sum())
    sequential = useful / float(steps.sum() * batch)
    full, rest = counts // batch, counts % batch
    executed_micro = full * batch + (0 if drop_last else -(-rest // micro_batch) * micro_batch)
    micro = useful / float(executed_micro.sum())
    vmapped = useful / float(len(counts) * math.ceil(counts.max() / batch) * batch)
    return {
        "sequential_clients": sequential,
        f"sequential_clients_micro_batch_{micro_batch}": micro,
        "vmapped_clients": vmapped,
    }


def matmul_peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """Best float32 FLOP/s of a jitted ``n x n @ n x n`` matmul on the default backend."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peak", action="store_true")
    args = parser.parse_args()
    from fedem_jax.data.synthetic import generate_synthetic

    data, _ = generate_synthetic(n_test_per_client=1)
    counts = np.asarray(data.train.counts)
    out = {"synthetic_padding_efficiency": padding_efficiency(counts, 128, drop_last=False)}
    print(f"synthetic (300 clients, batch 128): {out['synthetic_padding_efficiency']}")
    if args.peak:
        out["matmul_peak_flops"] = matmul_peak_flops()
        print(f"float32 matmul peak: {out['matmul_peak_flops'] / 1e9:.1f} GFLOP/s")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "efficiency.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
