"""The README's pictures of the federation, regenerated.

    python benchmarks/federation_figures.py [--data_dir ../shared/data/tensorflow_datasets]

Runs the default synthetic FedEM (``python -m fedem_jax.main``, 200 rounds) and copies its
``partition.png``, ``mixture.png`` and ``clients_over_time.png``; with ``--data_dir``, also draws
the CIFAR-10 partitions (the paper's label-group split, two classes per client, IID). Writes into
``docs/images/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from fedem_jax.data import load_dataset  # noqa: E402
from fedem_jax.main import main as run_main  # noqa: E402
from fedem_jax.reporting import federation_plots  # noqa: E402
from fedem_jax.settings.cli import resolve  # noqa: E402


def synthetic(out: str) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        assert run_main(["--workdir", workdir, "--quiet"]) == 0
        for name in ("partition", "mixture", "clients_over_time"):
            shutil.copy(os.path.join(workdir, f"{name}.png"), os.path.join(out, f"synthetic_{name}.png"))


def cifar10_partition(out: str, data_dir: str, name: str, *flags: str) -> None:
    data = load_dataset(resolve(["--dataset", "cifar10", "--data_dir", data_dir, "--workdir", out, *flags]))
    with tempfile.TemporaryDirectory() as workdir:
        federation_plots.write_partition(workdir, data)
        federation_plots.plot_partition(workdir, workdir)
        shutil.copy(os.path.join(workdir, "partition.png"), os.path.join(out, f"{name}_partition.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="", help="prepared TFDS data with cifar10 (optional)")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "images"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    synthetic(args.out)
    if args.data_dir:
        cifar10_partition(args.out, args.data_dir, "cifar10")
        cifar10_partition(args.out, args.data_dir, "cifar10_classes2", "--split", "classes")
        cifar10_partition(args.out, args.data_dir, "cifar10_iid", "--split", "iid")
    print(f"wrote {sorted(os.listdir(args.out))} to {args.out}")


if __name__ == "__main__":
    main()
