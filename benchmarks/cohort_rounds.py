"""Seconds per round with ``--cohort`` (only the sampled clients computed) against today's masked
round (every client computed, the unsampled masked), side by side, in both client layouts.

    python benchmarks/cohort_rounds.py                        # synthetic, 300 clients, 10 %
    python benchmarks/cohort_rounds.py --extra n_clients=3000 --rounds 5

For each layout (``client_chunk`` 0: clients vmapped, where a masked client still costs its
compute, the GPU/TPU default; 1: clients one after another, the CPU default, which already skips
masked clients) the masked and the cohort round are compiled (compile time apart), warmed up and
timed with ``jax.block_until_ready``; the ratio is masked / cohort. The final metrics of a few
rounds are compared too. Writes ``benchmarks/results/cohort_rounds_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import sys

import jax
from client_momentum import number_or_text
from timing import time_rounds, write_result

import fedem_jax


def config(args, chunk: int, cohort: bool):
    settings = dict(
        dataset=args.dataset, method=args.method, sampling_rate=args.sampling_rate, client_chunk=chunk,
        cohort=cohort, n_test_per_client=10, workdir="/tmp/fedem_jax_cohort", quiet=True,
        n_rounds=args.check_rounds, log_freq=args.check_rounds,
    )  # fmt: skip
    for item in args.extra:
        flag, _, value = item.partition("=")
        settings[flag] = number_or_text(value)
    return fedem_jax.config(**settings)


def final_accuracy(cfg, data) -> float:
    rows = list(fedem_jax.Session(cfg, data).rounds())
    return rows[-1]["test_accuracy"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--method", default="FedEM")
    parser.add_argument("--sampling_rate", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds")
    parser.add_argument("--check_rounds", type=int, default=5, help="rounds whose metrics are compared")
    parser.add_argument("--extra", nargs="*", default=[], help="more settings as flag=value")
    args = parser.parse_args()
    data = fedem_jax.load_dataset(config(args, 1, False))
    print(data.summary(), flush=True)
    results = {}
    for chunk, name in ((0, "clients vmapped"), (1, "clients sequential")):
        timings = {}
        for cohort in (False, True):
            cfg = config(args, chunk, cohort)
            timings["cohort" if cohort else "masked"] = time_rounds(cfg, data, args.rounds)
            timings[("cohort" if cohort else "masked") + "_accuracy"] = final_accuracy(cfg, data)
        masked, cohort = timings["masked"]["seconds_per_round"], timings["cohort"]["seconds_per_round"]
        timings["speedup"] = masked / cohort
        results[name] = timings
        print(
            f"{name}: masked {masked:.4f} s/round, cohort {cohort:.4f} s/round: {masked / cohort:.1f}x; "
            f"accuracy after {args.check_rounds} rounds {timings['masked_accuracy']:.4f} vs "
            f"{timings['cohort_accuracy']:.4f}",
            flush=True,
        )
    out = {
        "command": "python benchmarks/cohort_rounds.py " + " ".join(sys.argv[1:]),
        "data": data.summary(), "jax": jax.__version__, "backend": jax.default_backend(), "results": results,
    }  # fmt: skip
    print(f"wrote {write_result('cohort_rounds_' + args.dataset, out)}")


if __name__ == "__main__":
    main()
