"""``--client_momentum persistent`` against ``fresh``: accuracy and the bytes of the training state.

    python benchmarks/client_momentum.py                                   # synthetic, 200 rounds
    python benchmarks/client_momentum.py --dataset cifar10 --rounds 5 --seeds 1 \\
        --extra data_dir=../../shared/data/tensorflow_datasets

Each mode is one sweep over ``--seeds``; the state's bytes are those of ``Session.state`` (the
per-client optimizer state is what ``fresh`` does not keep). Writes
``benchmarks/results/client_momentum_<dataset>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
from timing import write_result

import fedem_jax


def state_bytes(state) -> int:
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))


def number_or_text(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def one_mode(args, mode: str) -> dict:
    settings = dict(
        dataset=args.dataset, method=args.method, seeds=[int(s) for s in args.seeds.split(",")],
        n_rounds=args.rounds, log_freq=args.rounds, client_momentum=mode, quiet=True,
        workdir=f"/tmp/fedem_jax_momentum_{mode}",
    )  # fmt: skip
    for item in args.extra:
        flag, _, value = item.partition("=")
        settings[flag] = number_or_text(value)
    session = fedem_jax.Session(fedem_jax.config(**settings))
    t0 = time.perf_counter()
    rows = list(session.rounds())
    last = [r for r in rows if r["round"] == args.rounds]
    accuracy = [r["test_accuracy"] for r in last]
    mean = sum(accuracy) / len(accuracy)
    std = (sum((a - mean) ** 2 for a in accuracy) / max(1, len(accuracy) - 1)) ** 0.5
    return {
        "mode": mode, "test_accuracy": mean, "test_accuracy_std": std, "runs": len(accuracy),
        "state_bytes_per_run": state_bytes(session.state) // len(accuracy),
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--method", default="FedEM")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--extra", nargs="*", default=[], help="more settings as flag=value")
    args = parser.parse_args()
    results = [one_mode(args, mode) for mode in ("persistent", "fresh")]
    lines = ["| --client_momentum | test accuracy (%) | training state per run |", "|---|---|---|"]
    for r in results:
        accuracy = f"{100 * r['test_accuracy']:.1f} ± {100 * r['test_accuracy_std']:.1f}"
        lines.append(f"| {r['mode']} | {accuracy} | {r['state_bytes_per_run'] / 2**20:.1f} MiB |")
    print("\n".join(lines))
    out = {"command": "python benchmarks/client_momentum.py " + " ".join(sys.argv[1:]), "results": results}
    out["table"] = lines
    print(f"wrote {write_result('client_momentum_' + args.dataset, out)}")


if __name__ == "__main__":
    main()
