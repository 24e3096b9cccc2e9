"""Seconds per FedEM round for each layout of the client and learner axes, side by side.

    python benchmarks/layouts.py --dataset synthetic
    python benchmarks/layouts.py --dataset cifar10 --data_dir ../shared/data/tensorflow_datasets \
        --extra --n_clients 10 --max_samples 3000
    python benchmarks/layouts.py --dataset cifar10 --data_dir ../shared/data/tensorflow_datasets \
        --layouts "clients sequential, learners sequential" --conv_impls xla,matmul --tag conv \
        --extra --n_clients 10 --max_samples 3000

Every layout runs in this one process on the same data; compile time is reported separately and
every timing is wrapped in ``jax.block_until_ready``. Writes
``benchmarks/results/layouts_<dataset>.json`` and prints a table with ratios to the fastest.
"""

from __future__ import annotations

import argparse
import os

import jax
from timing import time_rounds, write_result

from fedem_jax.data import load_dataset
from fedem_jax.settings.cli import resolve

LAYOUTS = {
    "clients vmap, learners vmap": ("0", "1"),
    "clients vmap, learners sequential": ("0", "0"),
    "clients sequential, learners vmap": ("1", "1"),
    "clients sequential, learners sequential": ("1", "0"),
    "clients chunks of 4, learners sequential": ("4", "0"),
}


def time_layout(base_flags: list[str], client_chunk: str, learner_vmap: str, rounds: int, data):
    cfg = resolve([*base_flags, "--client_chunk", client_chunk, "--learner_vmap", learner_vmap])
    return time_rounds(cfg, data, rounds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layouts", default="", help="semicolon-separated subset of layout names")
    parser.add_argument("--tag", default="", help="suffix of the output file name")
    parser.add_argument(
        "--conv_impls", default="", help="comma-separated convolutions to compare (xla,matmul); default: auto"
    )
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more fedem_jax flags")
    args = parser.parse_args()
    base = ["--dataset", args.dataset, "--workdir", "/tmp/fedem_jax_bench", "--quiet", *args.extra]
    if args.data_dir:
        base += ["--data_dir", args.data_dir]
    data = load_dataset(resolve(base))
    print(data.summary())
    chosen = [name for name in LAYOUTS if not args.layouts or name in args.layouts.split(";")]
    results = {}
    for conv in args.conv_impls.split(",") if args.conv_impls else [""]:
        for name in chosen:
            label = f"{name}, conv {conv}" if conv else name
            flags = [*base, "--conv_impl", conv] if conv else base
            results[label] = time_layout(flags, *LAYOUTS[name], args.rounds, data)
            print(
                f"{label:55s} {results[label]['seconds_per_round']:8.3f} s/round "
                f"(compile {results[label]['compile_seconds']:.1f} s)",
                flush=True,
            )
    fastest = min(r["seconds_per_round"] for r in results.values())
    print("\n| layout | s/round | x fastest | compile s |\n|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['seconds_per_round']:.4f} | {r['seconds_per_round'] / fastest:.2f} "
            f"| {r['compile_seconds']:.1f} |"
        )
    out = {
        "command": "python benchmarks/layouts.py " + " ".join(os.sys.argv[1:]),
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "data": data.summary(),
        "results": results,
    }
    print(f"wrote {write_result(f'layouts_{args.dataset}' + ('_' + args.tag if args.tag else ''), out)}")


if __name__ == "__main__":
    main()
