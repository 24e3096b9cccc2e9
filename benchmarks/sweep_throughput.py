"""Throughput of a sweep: K seeds as one compiled program against the same K runs made one after
another in one process (each compiling its own round), side by side on the same data.

    python benchmarks/sweep_throughput.py                        # synthetic paper setting, FedEM
    python benchmarks/sweep_throughput.py --dataset cifar10 --rounds 3 --seeds 4 \
        --extra --data_dir ../shared/data/tensorflow_datasets --max_samples 3000 --n_clients 10

Both sides run through ``fedem_jax.training.loop.run`` (compile, rounds, one evaluation at the end, no
checkpoints), the data loaded once before. Throughput is rounds x runs per second of wall time,
compile included; the script also reports compile and per-round time apart, and checks that
every run of the sweep ends with the metrics of its sequential twin. ``--one_group`` also runs
the sweep as one program (``--parallel_runs 1``): on CPU the default runs groups of runs at once,
one thread per core (``fedem_jax.execution.sweep_groups``), and this separates the two gains.
``--looped`` also runs the sweep with ``--runs_per_chunk 1`` (runs looped, not vmapped): with
partial participation and clients one at a time, a vmapped sweep computes every client's update
(who takes part differs between runs) where a looped run skips the clients not sampled.

    python benchmarks/sweep_throughput.py --seeds 5 --rounds 50 --looped --extra --sampling_rate 0.1
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from timing import write_result

from fedem_jax.data import load_dataset
from fedem_jax.settings.cli import resolve
from fedem_jax.training.loop import run


def timed_run(cfg, data) -> tuple[float, dict]:
    start = time.perf_counter()
    summary = run(cfg, data=data, log=lambda *_: None)
    return time.perf_counter() - start, summary


def sweep_side(seconds: float, summary: dict, work: int) -> dict:
    return {
        "seconds": seconds,
        "compile_seconds": summary["compile_seconds"],
        "seconds_per_round_all_runs": summary["seconds_per_round"],
        "throughput": work / seconds,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--method", default="FedEM")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--one_group", action="store_true", help="also the sweep as one program")
    parser.add_argument("--looped", action="store_true", help="also the sweep with runs looped, not vmapped")
    parser.add_argument("--tag", default="", help="appended to the result file's name")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more fedem_jax flags")
    args = parser.parse_args()
    seeds = list(range(1, args.seeds + 1))
    base = ["--dataset", args.dataset, "--method", args.method, "--n_rounds", str(args.rounds), "--quiet",
            "--log_freq", str(args.rounds), "--checkpoint_every", "0", "--tensorboard", "false",
            "--overwrite", *args.extra]  # fmt: skip
    data = load_dataset(resolve([*base, "--workdir", "/tmp/fedem_jax_sweep/data"]))
    print(data.summary(), flush=True)

    sequential_seconds, sequential = 0.0, []
    for seed in seeds:
        cfg = resolve([*base, "--seed", str(seed), "--workdir", f"/tmp/fedem_jax_sweep/seed{seed}"])
        seconds, summary = timed_run(cfg, data)
        sequential_seconds += seconds
        sequential.append(summary)
        print(f"seed {seed}: {seconds:.1f} s (compile {summary['compile_seconds']:.1f} s)", flush=True)
    sweep_flags = [*base, "--seeds", ",".join(map(str, seeds))]
    sweep_seconds, sweep = timed_run(resolve([*sweep_flags, "--workdir", "/tmp/fedem_jax_sweep/sweep"]), data)
    print(
        f"sweep of {len(seeds)} ({sweep['layout']['parallel_runs']} groups at once): {sweep_seconds:.1f} s "
        f"(compile {sweep['compile_seconds']:.1f} s)",
        flush=True,
    )
    one_group = None
    if args.one_group:
        cfg = resolve([*sweep_flags, "--parallel_runs", "1", "--workdir", "/tmp/fedem_jax_sweep/one_group"])
        one_group = timed_run(cfg, data)
        print(f"sweep as one program: {one_group[0]:.1f} s (compile {one_group[1]['compile_seconds']:.1f} s)")

    looped = None
    if args.looped:
        cfg = resolve([*sweep_flags, "--runs_per_chunk", "1", "--workdir", "/tmp/fedem_jax_sweep/looped"])
        looped = timed_run(cfg, data)
        print(f"sweep with runs looped: {looped[0]:.1f} s (compile {looped[1]['compile_seconds']:.1f} s)")

    gap = max(
        abs(r["test_accuracy"] - s["test_accuracy"]) for r, s in zip(sweep["runs"], sequential, strict=True)
    )
    work = args.rounds * len(seeds)
    sequential_round = float(np.mean([s["seconds_per_round"] for s in sequential]))
    result = {
        "command": "python benchmarks/sweep_throughput.py " + " ".join(sys.argv[1:]),
        "data": data.summary(),
        "runs": len(seeds),
        "rounds": args.rounds,
        "runs_per_chunk": sweep["layout"]["runs_per_chunk"],
        "parallel_runs": sweep["layout"]["parallel_runs"],
        "sequential": {
            "seconds": sequential_seconds,
            "compile_seconds": sum(s["compile_seconds"] for s in sequential),
            "seconds_per_round": sequential_round,
            "throughput": work / sequential_seconds,
        },
        "sweep": sweep_side(sweep_seconds, sweep, work),
        "throughput_ratio": sequential_seconds / sweep_seconds,
        "steady_round_ratio": len(seeds) * sequential_round / sweep["seconds_per_round"],
        "max_test_accuracy_gap": gap,
        "mean_test_accuracy": sweep["test_accuracy"],
        "std_test_accuracy": sweep["test_accuracy_std"],
    }
    if one_group is not None:
        result["sweep_one_group"] = sweep_side(*one_group, work)
        one_group_round = one_group[1]["seconds_per_round"]
        result["one_group_throughput_ratio"] = sequential_seconds / one_group[0]
        result["one_group_steady_round_ratio"] = len(seeds) * sequential_round / one_group_round
    if looped is not None:
        result["sweep_looped"] = sweep_side(*looped, work)
        result["looped_throughput_ratio"] = sequential_seconds / looped[0]
        looped_round = looped[1]["seconds_per_round"]
        result["looped_over_default_steady_round_ratio"] = sweep["seconds_per_round"] / looped_round
        pairs = zip(looped[1]["runs"], sequential, strict=True)
        gaps = [abs(r["test_accuracy"] - s["test_accuracy"]) for r, s in pairs]
        result["looped_max_test_accuracy_gap"] = max(gaps)
        print(
            f"runs looped: {result['looped_throughput_ratio']:.2f}x the sequential runs; steady rounds "
            f"{result['looped_over_default_steady_round_ratio']:.2f}x faster than the default sweep's"
        )
    if one_group is not None:
        print(
            f"as one program: {result['one_group_throughput_ratio']:.2f}x, steady rounds "
            f"{result['one_group_steady_round_ratio']:.2f}x"
        )
    print(
        f"throughput ratio (sweep / sequential, compile included): {result['throughput_ratio']:.2f}x; "
        f"steady rounds only: {result['steady_round_ratio']:.2f}x; largest test-accuracy gap between a "
        f"sweep run and its sequential twin: {gap:.2e}"
    )
    print(f"wrote {write_result(f'sweep_throughput_{args.dataset}' + args.tag, result)}")


if __name__ == "__main__":
    main()
