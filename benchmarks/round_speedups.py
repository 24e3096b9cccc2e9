"""Two changes to the round, side by side in one process on the same data: each client's epoch
order without ``argsort`` (``fedem_jax.core.shuffle``: two ``uint32`` sorts, the same
permutation) and the E-step / evaluation map without a copy of the data
(``fedem_jax.execution.sample_map``). Rounds of one run and of a sweep of seeds, with neither,
either and both; one evaluation (train and test splits) with either map; and the epoch orders of
all clients alone (checked equal).

    python benchmarks/round_speedups.py                 # synthetic paper setting, 20 timed rounds
    python benchmarks/round_speedups.py --rounds 5 --seeds 4

Round times: ``timing.time_rounds`` (compile apart, one warm-up round, median of ``--rounds``,
``jax.block_until_ready``). "Before" is the current code with the old function swapped back in,
so the variants differ in those functions only.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from timing import time_rounds, write_result

from fedem_jax.algorithms import common, fedem
from fedem_jax.core import client_update
from fedem_jax.core.shuffle import epoch_order
from fedem_jax.data import load_dataset
from fedem_jax.execution.sample_map import map_samples
from fedem_jax.settings.cli import resolve
from fedem_jax.training.session import build_experiment


def argsort_order(key, n_slots, count):
    """The order as ``client_update`` computed it before: one argsort."""
    scores = jax.random.uniform(key, (n_slots,))
    return jnp.argsort(jnp.where(jnp.arange(n_slots) < count, scores, 2.0))


def copying_map(fn, xs, batch_size):
    """The map as the E-step and evaluation did it before."""
    return jax.lax.map(fn, xs, batch_size=batch_size)


ORDERS = {"argsort": argsort_order, "two uint32 sorts": epoch_order}
VARIANTS = {  # name: (epoch order, sample map)
    "before": (argsort_order, copying_map),
    "new order only": (epoch_order, copying_map),
    "new map only": (argsort_order, map_samples),
    "both (now)": (epoch_order, map_samples),
}


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


@contextlib.contextmanager
def swapped(order, sample_map):
    """The round built with these functions (module globals, looked up when it is traced)."""

    def use(order, sample_map):
        client_update.epoch_order, common.map_samples, fedem.map_samples = order, sample_map, sample_map

    use(order, sample_map)
    try:
        yield
    finally:
        use(epoch_order, map_samples)


def time_round(base: list[str], data, rounds: int, order, sample_map) -> dict:
    with swapped(order, sample_map):
        return time_rounds(resolve(base), data, rounds)


def time_evaluation(base: list[str], data, sample_map, repeats: int = 3) -> float:
    """Median seconds of one evaluation (train and test splits, as the loop does) of a new state."""
    with swapped(epoch_order, sample_map):
        experiment, placed, state = build_experiment(resolve(base), data)
        evaluate = jax.jit(experiment.evaluate_splits).lower(state, placed.train, (placed.train, placed.test))
        evaluate = evaluate.compile()
        times = []
        for _ in range(repeats + 1):  # the first one warms up
            start = time.perf_counter()
            jax.block_until_ready(evaluate(state, placed.train, (placed.train, placed.test)))
            times.append(time.perf_counter() - start)
        return float(np.median(times[1:]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more fedem_jax flags")
    args = parser.parse_args()
    base = ["--workdir", "/tmp/fedem_jax_round_speedups", "--quiet", "--tensorboard", "false", *args.extra]
    cfg = resolve(base)
    data = load_dataset(cfg)
    n_slots = -(-data.train.max_count // cfg.training.batch_size) * cfg.training.batch_size
    counts = np.asarray(data.train.counts)
    result = {
        "command": "python benchmarks/round_speedups.py " + " ".join(sys.argv[1:]),
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
        times = {name: time_round([*base, *flags], data, args.rounds, *fns) for name, fns in VARIANTS.items()}
        before = times["before"]["seconds_per_round"]
        result[label] = {
            name: {
                "seconds_per_round": t["seconds_per_round"],
                "compile_seconds": t["compile_seconds"],
                "speedup": before / t["seconds_per_round"],
            }
            for name, t in times.items()
        }
        speedups = ", ".join(f"{name} {row['speedup']:.2f}x" for name, row in result[label].items())
        print(f"{label}: per round against before: {speedups}", flush=True)
    evaluation = {"copying lax.map": time_evaluation(base, data, copying_map),
                  "map_samples (now)": time_evaluation(base, data, map_samples)}  # fmt: skip
    result["evaluation_seconds"] = evaluation
    print(f"one evaluation (train + test): {evaluation}", flush=True)
    for label, times in result["orders_alone_seconds"].items():
        print(f"orders alone, {label}: {times['argsort'] / times['two uint32 sorts']:.2f}x ({times})")
    print(f"wrote {write_result('round_speedups', result)}")


if __name__ == "__main__":
    main()
