"""Every method on the same data, as in the paper's tables: average and bottom-10 % test
accuracy, and seconds per round.

    python benchmarks/methods_table.py                       # synthetic, paper setting, 200 rounds
    python benchmarks/methods_table.py --rounds 50 --extra --n_clients 100

Writes ``benchmarks/results/methods_<dataset>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys

from timing import write_result

from fedem_jax.data import load_dataset
from fedem_jax.settings.cli import resolve
from fedem_jax.training.loop import run

METHODS = (
    "local",
    "FedAvg",
    "FedProx",
    "FedAvg+",
    "pFedMe",
    "clustered",
    "APFL",
    "AFL",
    "q-FFL",
    "L2SGD",
    "D-FedEM",
    "pFedMe-true",
    "Ditto",
    "FedPer",
    "FedRep",
    "FedAdam",
    "FedYogi",
    "SCAFFOLD",
    "FedEM",
)  # fmt: skip  FedBN needs a BatchNorm model: --methods FedBN --extra --model mobilenet_v2


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more fedem_jax flags")
    args = parser.parse_args()
    base = ["--dataset", args.dataset, "--n_rounds", str(args.rounds), "--quiet", "--checkpoint_every", "0",
            "--overwrite", "--tensorboard", "false", *args.extra]  # fmt: skip
    data = load_dataset(resolve([*base, "--workdir", "/tmp/fedem_jax_methods/data"]))
    print(data.summary(), flush=True)
    rows = {}
    for method in args.methods.split(","):
        cfg = resolve([*base, "--method", method, "--workdir", f"/tmp/fedem_jax_methods/{method}"])
        summary = run(cfg, data=data, log=lambda *_: None)
        rows[method] = {
            k: summary[k] for k in ("test_accuracy", "test_accuracy_bottom10", "seconds_per_round")
        }
        print(f"{method}: {rows[method]}", flush=True)
    print("\n| method | test accuracy | bottom 10 % | s/round |\n|---|---|---|---|")
    for method, r in rows.items():
        print(
            f"| {method} | {100 * r['test_accuracy']:.1f} % | {100 * r['test_accuracy_bottom10']:.1f} % "
            f"| {r['seconds_per_round']:.3f} |"
        )
    out = {"command": "python benchmarks/methods_table.py " + " ".join(sys.argv[1:]), "data": data.summary(),
           "rows": rows}  # fmt: skip
    print(f"wrote {write_result(f'methods_{args.dataset}{args.tag}', out)}")


if __name__ == "__main__":
    main()
