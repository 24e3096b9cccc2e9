"""The parts of a ``--federation host`` round, each against what it replaced, side by side:

- the cohort's draw: NumPy's stable sorts of JAX's bits (``CohortDraw``) vs ``jax.random.permutation``;
- reading a cohort from a store: eight reads in flight vs one after another;
- putting a cohort on the (CPU) device: a 64-byte-aligned buffer vs ``np.zeros``'s.

    python benchmarks/host_cohort_parts.py --store /tmp/fedem_jax_scale/synthetic_100000

The store is one ``benchmarks/scale_clients.py`` writes. Each part: the mean over ``--repeats``
calls after one warm-up (compile apart), results blocked on; the cohorts read are fresh random
ones (not in the page cache unless the store is). Prints milliseconds and the ratios.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from fedem_jax.algorithms.base import Context, client_order
from fedem_jax.data.store import aligned_zeros, open_store
from fedem_jax.execution.host_rounds import CohortDraw


def mean_ms(fn, repeats: int) -> float:
    jax.block_until_ready(fn(0))
    t0 = time.perf_counter()
    for i in range(1, repeats + 1):
        jax.block_until_ready(fn(i))
    return 1000 * (time.perf_counter() - t0) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    train = open_store(args.store).train
    context = Context(None, None, None, 1, train.n_clients, args.k / train.n_clients, 1, 0, 8)
    draw = CohortDraw(context, args.k)
    permutation = jax.jit(lambda r: client_order(context.round_key(r), train.n_clients)[: args.k])
    results = {
        "draw: jax.random.permutation": mean_ms(lambda r: np.asarray(permutation(r)), args.repeats),
        "draw: NumPy sorts of JAX's bits": mean_ms(draw, args.repeats),
    }
    rng = np.random.default_rng(int(time.time()))
    cohorts = [
        np.sort(rng.choice(train.n_clients, args.k, replace=False)) for _ in range(2 * args.repeats + 2)
    ]
    pool = ThreadPoolExecutor(8)

    def read(i, parallel):
        idx = cohorts[i if parallel else i + args.repeats + 1]
        counts = train.counts[idx]
        starts = np.cumsum(counts) - counts
        x = np.zeros((int(counts.sum()), *train.x.shape[1:]), train.x.dtype)
        reads = [(int(train.offsets[c]), x[s : s + n]) for c, s, n in zip(idx, starts, counts, strict=True)]
        if parallel:
            list(pool.map(lambda r: train.read_x(*r), reads))
        else:
            for r in reads:
                train.read_x(*r)
        return x

    results["read a cohort: one read at a time"] = mean_ms(lambda i: read(i, False), args.repeats)
    results["read a cohort: eight reads in flight"] = mean_ms(lambda i: read(i, True), args.repeats)
    shape = (int(np.sort(train.counts)[::-1][: args.k].sum()), *train.x.shape[1:])
    results["device_put: np.zeros buffer"] = mean_ms(
        lambda i: jax.device_put(np.zeros(shape, train.x.dtype)), args.repeats
    )
    results["device_put: 64-byte-aligned buffer"] = mean_ms(
        lambda i: jax.device_put(aligned_zeros(shape, train.x.dtype)), args.repeats
    )
    print(
        f"{train.n_clients:,} clients, K = {args.k}, {jax.device_count()} {jax.default_backend()} device(s)"
    )
    for name, ms in results.items():
        print(f"{name:40s} {ms:8.1f} ms")
    names = list(results)
    for slow, fast in zip(names[::2], names[1::2], strict=True):
        print(f"{fast.split(': ')[0]}: {results[slow] / results[fast]:.1f}x")


if __name__ == "__main__":
    main()
