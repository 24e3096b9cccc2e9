"""The paper's table in one command: every method at its defaults on one dataset, K seeds each as
one sweep (one process; on CPU in groups of runs at once, see docs/guide/sweeps.md), mean ± std of
test accuracy and of bottom-10 % accuracy.

    python benchmarks/paper_table.py                          # synthetic paper setting, 5 seeds
    python benchmarks/paper_table.py --seeds 3 --rounds 50 --methods FedAvg,FedEM
    python benchmarks/paper_table.py --extra --head Dense_0/bias   # FedPer/FedRep on the linear model

Writes ``benchmarks/results/paper_table_<dataset>.json`` and ``.md`` (the Markdown table, with the
command and the time it took) and prints the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from methods_table import METHODS
from timing import RESULTS, write_result

from fedem_jax.data import load_dataset
from fedem_jax.settings.cli import resolve
from fedem_jax.training.loop import run


def percent(summary: dict, key: str) -> str:
    return f"{100 * summary[key]:.1f} ± {100 * summary[key + '_std']:.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more fedem_jax flags")
    args = parser.parse_args()
    seeds = ",".join(str(s) for s in range(1, args.seeds + 1))
    base = ["--dataset", args.dataset, "--n_rounds", str(args.rounds), "--quiet", "--checkpoint_every", "0",
            "--log_freq", str(args.rounds), "--tensorboard", "false", *args.extra]  # fmt: skip
    start = time.perf_counter()
    data = load_dataset(resolve([*base, "--workdir", "/tmp/fedem_jax_paper/data"]))
    print(data.summary(), flush=True)
    rows = {}
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        workdir = f"/tmp/fedem_jax_paper/{method}"
        cfg = resolve([*base, "--method", method, "--seeds", seeds, "--workdir", workdir, "--overwrite"])
        summary = run(cfg, data=data, log=lambda *_: None)
        keep = ("test_accuracy", "test_accuracy_std", "test_accuracy_bottom10", "test_accuracy_bottom10_std")
        rows[method] = {**{k: summary[k] for k in keep}, "n_diverged": summary["n_diverged"],
                        "seconds": time.perf_counter() - t0}  # fmt: skip
        print(f"{method}: {percent(summary, 'test_accuracy')} ({rows[method]['seconds']:.0f} s)", flush=True)
        write_result(f"paper_table_{args.dataset}_partial", {"rows": rows})  # kept if a later method fails
    minutes = (time.perf_counter() - start) / 60
    command = "python benchmarks/paper_table.py " + " ".join(sys.argv[1:])
    lines = [
        f"`{command}` ({args.seeds} seeds per method as one sweep; {minutes:.1f} minutes in all)",
        "",
        "| method | test accuracy (%) | bottom 10 % (%) |",
        "|---|---|---|",
        *(
            f"| {m} | {percent(r, 'test_accuracy')} | {percent(r, 'test_accuracy_bottom10')} |"
            for m, r in rows.items()
        ),
    ]
    table = "\n".join(lines)
    print("\n" + table)
    name = f"paper_table_{args.dataset}"
    out = {"command": command, "data": data.summary(), "seeds": args.seeds, "minutes": minutes, "rows": rows}
    print(f"wrote {write_result(name, out)}")
    with open(os.path.join(RESULTS, name + ".md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
