"""The epoch order of every client: ``argsort`` (before) against ``fedem_jax.core.shuffle``'s
two ``uint32`` sorts (now), side by side in one process: the order alone, and whole FedEM rounds
of one run and of a sweep of seeds, with the same permutation (checked) on the same data.

    python benchmarks/shuffle_order.py                 # synthetic paper setting, 20 timed rounds
    python benchmarks/shuffle_order.py --rounds 5 --seeds 4

Round times: ``timing.time_rounds`` (compile apart, one warm-up round, median of ``--rounds``,
``jax.block_until_ready``). The "before" rounds are the current code with the order computed by
``argsort``, so the two sides differ in that function only.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from timing import time_rounds, write_result

from fedem_jax.config import resolve
from fedem_jax.core import client_update
from fedem_jax.core.shuffle import epoch_order
from fedem_jax.data import load_dataset


def argsort_order(key, n_slots, count):
    """The order as ``client_update`` computed it before: one argsort."""
    scores = jax.random.uniform(key, (n_slots,))
    return jnp.argsort(jnp.where(jnp.arange(n_slots) < count, scores, 2.0))


ORDERS = {"argsort": argsort_order, "two uint32 sorts": epoch_order}


def time_orders(counts: np.ndarray, n_slots: int, runs: int, repeats: int = 5) -> dict:
    """Seconds for the orders of every client (and run) at once, per implementation."""
    keys = jax.random.split(jax.random.PRNGKey(0), runs * len(counts)).reshape(runs, len(counts), -1)
    counts = jnp.broadcast_to(jnp.asarray(counts), (runs, len(counts)))
    out, results = {}, []
    for name, order in ORDERS.items():
        fn = jax.jit(jax.vmap(jax.vmap(lambda k, c, order=order: order(k, n_slots, c))))
        results.append(jax.block_until_ready(fn(keys, counts)))
        start = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(fn(keys, counts))
        out[name] = (time.perf_counter() - start) / repeats
    assert np.array_equal(*results), "the two orders differ"
    return out


def time_round(base: list[str], data, rounds: int, order) -> dict:
    client_update.epoch_order = order  # looked up when the round is traced
    try:
        return time_rounds(resolve(base), data, rounds)
    finally:
        client_update.epoch_order = epoch_order


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more fedem_jax flags")
    args = parser.parse_args()
    base = ["--workdir", "/tmp/fedem_jax_shuffle", "--quiet", "--tensorboard", "false", *args.extra]
    data = load_dataset(resolve(base))
    cfg = resolve(base)
    n_slots = -(-data.train.max_count // cfg.training.batch_size) * cfg.training.batch_size
    counts = np.asarray(data.train.counts)
    result = {
        "command": "python benchmarks/shuffle_order.py " + " ".join(sys.argv[1:]),
        "backend": jax.default_backend(),
        "data": data.summary(),
        "n_slots": n_slots,
        "orders_alone_seconds": {
            "1 run": time_orders(counts, n_slots, 1),
            f"{args.seeds} runs": time_orders(counts, n_slots, args.seeds),
        },
    }
    seeds = ",".join(str(s) for s in range(1, args.seeds + 1))
    for label, flags in (("single run", []), (f"sweep of {args.seeds} seeds", ["--seeds", seeds])):
        times = {name: time_round([*base, *flags], data, args.rounds, fn) for name, fn in ORDERS.items()}
        result[label] = {
            name: {k: t[k] for k in ("seconds_per_round", "compile_seconds")} for name, t in times.items()
        }
        speedup = times["argsort"]["seconds_per_round"] / times["two uint32 sorts"]["seconds_per_round"]
        result[label]["round_speedup"] = speedup
        print(f"{label}: {speedup:.2f}x per round ({result[label]})", flush=True)
    for label, times in result["orders_alone_seconds"].items():
        print(f"orders alone, {label}: {times['argsort'] / times['two uint32 sorts']:.2f}x ({times})")
    print(f"wrote {write_result('shuffle_order', result)}")


if __name__ == "__main__":
    main()
