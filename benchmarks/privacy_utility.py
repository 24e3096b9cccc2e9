"""Privacy against utility: test accuracy of FedEM and FedAvg under user-level DP (issue 26).

    python benchmarks/privacy_utility.py                       # the synthetic paper setting
    python benchmarks/privacy_utility.py --seeds 1 --rounds 20 # a quick look

For each method and each epsilon (``inf``: no DP at all; ``clip``: clipping without noise), one
sweep of ``--seeds`` (one program, :mod:`fedem_jax.training.sweep`) with ``--dp_epsilon`` at
``--dp_delta`` (default ``1 / N^1.1``), the noise multiplier calibrated for the planned rounds by
dp-accounting's RDP accountant. Writes ``benchmarks/results/privacy_utility_<dataset>.json`` and
prints a Markdown table: mean ± std of the final test accuracy over the seeds, the noise
multiplier and the epsilon spent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from client_momentum import number_or_text
from timing import write_result

import fedem_jax


def cell(args, method: str, epsilon: str) -> dict:
    """One sweep over the seeds; its summary's mean and std, and the DP settings it ran with."""
    workdir = os.path.join(args.workdir, f"{method}_{epsilon}")
    settings = dict(
        dataset=args.dataset, method=method, seeds=[int(s) for s in args.seeds.split(",")],
        n_rounds=args.rounds, workdir=workdir, overwrite=True, quiet=True, plots=False, tensorboard=False,
        checkpoint_every=0, log_freq=args.rounds, sampling_rate=args.sampling_rate,
    )  # fmt: skip
    if args.sampling_rate < 1:
        settings["sampling"] = "poisson"
    if epsilon != "inf":
        settings.update(dp_clip=args.clip, dp_weighting=args.weighting)
        if epsilon == "clip":
            settings["noise_multiplier"] = 0.0
        else:
            settings["dp_epsilon"] = float(epsilon)
        if args.delta:
            settings["dp_delta"] = args.delta
    for item in args.extra + (args.dp_extra if epsilon != "inf" else []):
        flag, _, value = item.partition("=")
        settings[flag.lstrip("-")] = number_or_text(value)
    cfg = fedem_jax.config(**settings)
    t0 = time.perf_counter()
    summary = fedem_jax.run(cfg, log=lambda *_: None)
    privacy = summary.get("privacy", {})
    return {
        "method": method, "epsilon_target": epsilon, "test_accuracy": summary["test_accuracy"],
        "test_accuracy_std": summary.get("test_accuracy_std", 0.0),
        "epsilon_spent": summary.get("epsilon_spent"),
        "noise_multiplier": privacy.get("dp_noise_multiplier"), "delta": privacy.get("dp_delta"),
        "seconds": time.perf_counter() - t0, "runs": summary.get("n_runs", 1),
        **adaptive_clip(privacy, workdir),
    }  # fmt: skip


def adaptive_clip(privacy: dict, workdir: str) -> dict:
    """With ``--dp_clip_quantile``: the update's noise multiplier and the clip of the last round
    (mean over the runs), from the last metrics rows."""
    if "dp_update_noise_multiplier" not in privacy:
        return {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    last = max(row["round"] for row in rows)
    clips = [row["dp_clip"] for row in rows if row["round"] == last and "dp_clip" in row]
    return {"update_noise_multiplier": privacy["dp_update_noise_multiplier"],
            "final_clip": sum(clips) / len(clips) if clips else None}  # fmt: skip


def cell_text(c: dict) -> str:
    return (
        f"{100 * c['test_accuracy']:.1f} ± {100 * c['test_accuracy_std']:.1f}"
        + (f" (z {c['noise_multiplier']:.3g})" if c["noise_multiplier"] else "")
        + (f", C {c['final_clip']:.3g} at the end" if c.get("final_clip") else "")
    )


def table(cells: list[dict], epsilons: list[str]) -> list[str]:
    names = {"inf": "no DP", "clip": "clipped, no noise"}
    lines = ["| method | " + " | ".join(names.get(e, f"ε = {e}") for e in epsilons) + " |"]
    lines.append("|---|" + "---|" * len(epsilons))
    for method in dict.fromkeys(c["method"] for c in cells):
        row = {c["epsilon_target"]: c for c in cells if c["method"] == method}
        values = [cell_text(row[e]) if e in row else "–" for e in epsilons]
        lines.append(f"| {method} | " + " | ".join(values) + " |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--methods", default="FedEM,FedAvg")
    parser.add_argument("--epsilons", default="1,3,8,inf", help="targets; inf: no DP, clip: no noise")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--clip", type=float, default=0.1, help="--dp_clip")
    parser.add_argument("--weighting", default="uniform", help="--dp_weighting")
    parser.add_argument("--delta", type=float, default=0.0, help="--dp_delta (0: 1 / N^1.1)")
    parser.add_argument("--sampling_rate", type=float, default=1.0, help="< 1: Poisson sampling")
    parser.add_argument("--workdir", default="/tmp/fedem_jax_privacy")
    parser.add_argument("--tag", default="")
    parser.add_argument("--extra", nargs="*", default=[], help="more settings as flag=value")
    parser.add_argument("--dp_extra", nargs="*", default=[], help="as --extra, for the DP cells only")
    args = parser.parse_args()
    epsilons = args.epsilons.split(",")
    name = f"privacy_utility_{args.dataset}" + (f"_{args.tag}" if args.tag else "")
    cells = []
    for method in args.methods.split(","):
        for epsilon in epsilons:
            cells.append(cell(args, method, epsilon))
            c = cells[-1]
            accuracy = f"{100 * c['test_accuracy']:.2f} ± {100 * c['test_accuracy_std']:.2f}"
            spent = f"spent {c['epsilon_spent']}, z {c['noise_multiplier']}, {c['seconds']:.0f} s"
            print(f"{method} epsilon {epsilon}: {accuracy} ({spent})", flush=True)
            write_result(name, result(cells))  # the cells so far: nothing lost if stopped
    print("\n".join(table(cells, epsilons)))
    print(f"wrote {write_result(name, result(cells))}")


def result(cells: list[dict]) -> dict:
    done = list(dict.fromkeys(c["epsilon_target"] for c in cells))
    return {
        "command": "python benchmarks/privacy_utility.py " + " ".join(sys.argv[1:]),
        "cells": cells,
        "table": table(cells, done),
    }


if __name__ == "__main__":
    main()
