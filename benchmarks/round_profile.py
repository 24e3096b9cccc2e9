"""Where a round's time goes: the XLA operations of a few rounds, by exclusive time.

    python benchmarks/round_profile.py                                # synthetic paper setting
    python benchmarks/round_profile.py --rounds 2 --top 15 -- --dataset cifar10 --n_rounds 5 \
        --data_dir ../shared/data/tensorflow_datasets --max_samples 3000 --n_clients 10

Everything after ``--`` is ``fedem_jax.main`` flags. Compiles the round, runs one warm-up round,
then records ``--rounds`` rounds with ``jax.profiler.trace`` and sums, per process of the trace
(host threads; on a GPU also the device's streams) and per operation name, the time spent in
the operation itself (nested events subtracted). Writes a JSON (``--out``) with the top
operations and their share of the recorded wall time. The profiler adds overhead to every
operation, so shares matter more than absolute times; seconds per round without the profiler
are measured first, apart.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile
import time

import jax

from fedem_jax.data import load_dataset
from fedem_jax.settings.cli import resolve
from fedem_jax.training.session import build_experiment

# Python frames, and the runtime's own spans (a thread waiting for the operations it dispatched).
NOT_OPERATIONS = ("$", "ThunkExecutor", "SlinkyThreadPool", "PjitFunction")


def exclusive_times(events: list[dict]) -> dict[tuple[str, str], list[float]]:
    """``{(process, name): [exclusive microseconds, count]}`` of complete (``X``) events."""
    meta = [e for e in events if e.get("ph") == "M" and e["name"] == "process_name"]
    names = {e["pid"]: e["args"]["name"] for e in meta}
    by_thread = collections.defaultdict(list)
    for event in events:
        if event.get("ph") == "X" and "dur" in event:
            by_thread[(event["pid"], event.get("tid"))].append(event)
    totals = collections.defaultdict(lambda: [0.0, 0])
    for (pid, _), thread in by_thread.items():
        thread.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []
        for event in thread:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= event["ts"]:
                stack.pop()
            process = str(names.get(pid, pid))
            if stack:
                totals[(process, stack[-1]["name"])][0] -= event["dur"]
            totals[(process, event["name"])][0] += event["dur"]
            totals[(process, event["name"])][1] += 1
            stack.append(event)
    return totals


def read_trace(log_dir: str) -> list[dict]:
    paths = glob.glob(os.path.join(log_dir, "**", "*trace.json.gz"), recursive=True)
    if not paths:
        raise SystemExit(f"the profiler wrote no *trace.json.gz under {log_dir}")
    with gzip.open(sorted(paths)[0]) as f:
        return json.load(f)["traceEvents"]


def main() -> None:
    argv = sys.argv[1:]
    own, flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds recorded")
    parser.add_argument("--top", type=int, default=20, help="operations listed per process")
    default_out = os.path.join(os.path.dirname(__file__), "results", "round_profile.json")
    parser.add_argument("--out", default=default_out)
    args = parser.parse_args(own)
    with tempfile.TemporaryDirectory() as scratch:
        cfg = resolve([*flags, "--workdir", os.path.join(scratch, "run"), "--quiet", "--plots", "false"])
        experiment, data, state = build_experiment(cfg, load_dataset(cfg))
        start = time.perf_counter()
        round_fn = jax.jit(experiment.algorithm.round, donate_argnums=0).lower(state, data.train).compile()
        compile_s = time.perf_counter() - start
        state, _ = round_fn(state, data.train)  # warm-up
        jax.block_until_ready(state)
        start = time.perf_counter()
        for _ in range(args.rounds):
            state, _ = round_fn(state, data.train)
        jax.block_until_ready(state)
        seconds_per_round = (time.perf_counter() - start) / args.rounds
        log_dir = os.path.join(scratch, "trace")
        with jax.profiler.trace(log_dir):
            start = time.perf_counter()
            for _ in range(args.rounds):
                state, _ = round_fn(state, data.train)
            jax.block_until_ready(state)
            traced_s = time.perf_counter() - start  # the rounds, not the trace's export
        totals = exclusive_times(read_trace(log_dir))
    by_process = collections.defaultdict(list)
    for (process, name), (micros, count) in totals.items():
        if not name.startswith(NOT_OPERATIONS):
            by_process[process].append((micros, count, name))
    result = {
        "command": "python benchmarks/round_profile.py " + " ".join(argv),
        "device": getattr(jax.devices()[0], "device_kind", jax.default_backend()),
        "layout": experiment.info,
        "compile_seconds": compile_s,
        "seconds_per_round": seconds_per_round,
        "traced_seconds_per_round": traced_s / args.rounds,
        "processes": {},
    }
    for process, ops in by_process.items():
        ops.sort(reverse=True)
        result["processes"][process] = [
            {
                "op": name[:120],
                "ms_per_round": micros / 1e3 / args.rounds,
                "calls_per_round": count / args.rounds,
                "share_of_wall": micros / 1e6 / traced_s,
            }  # fmt: skip
            for micros, count, name in ops[: args.top]
        ]
    print(f"{seconds_per_round:.4f} s/round ({traced_s / args.rounds:.4f} traced), compile {compile_s:.1f} s")
    for process, ops in result["processes"].items():
        print(f"-- {process}")
        for op in ops:
            share, calls = op["share_of_wall"], op["calls_per_round"]
            print(f"  {op['ms_per_round']:9.2f} ms/round {share:6.1%} {calls:8.0f}x  {op['op']}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
