"""Seconds per FedEM round: fedem_jax vs the reference-style PyTorch baseline, side by side.

    python benchmarks/compare_reference.py --dataset synthetic --extra --n_test_per_client 10
    python benchmarks/compare_reference.py --dataset cifar10 \\
        --extra --data_dir ../shared/data/tensorflow_datasets --n_clients 20 --max_samples 6000

Both sides run in this one process, on the same client data (fedem_jax's split; CIFAR images are
handed to the baseline as uint8 so that it pays for its per-sample transforms, as the reference
does), with the same model, M, batch size, learning rate, momentum and weight decay. Each side
runs one warm-up round, then ``--rounds`` timed rounds; fedem_jax's compile time is reported
separately and its timings are wrapped in ``jax.block_until_ready``. Writes
``benchmarks/results/compare_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

from fedem_jax.data import load_dataset
from fedem_jax.data.tfds_source import CIFAR10_MEAN, CIFAR10_STD
from fedem_jax.settings.cli import resolve

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from efficiency import CIFAR10_CNN_MACS, fedem_round_flops, matmul_peak_flops  # noqa: E402
from timing import time_rounds, write_result  # noqa: E402


def client_arrays(split):
    x, y = np.asarray(split.x), np.asarray(split.y)
    return [
        (x[o : o + n], y[o : o + n])
        for o, n in zip(np.asarray(split.offsets), np.asarray(split.counts), strict=True)
    ]


def reference_datasets(cfg, split):
    """The baseline's per-client datasets of one split (CIFAR: back to uint8 images)."""
    from torch_reference import ImageDataset, TabularDataset

    datasets = []
    for x, y in client_arrays(split):
        if cfg.data.dataset == "synthetic":
            datasets.append(TabularDataset(x, y))
        else:  # back to the uint8 images the reference starts from
            images = np.clip(np.rint((x * CIFAR10_STD + CIFAR10_MEAN) * 255.0), 0, 255).astype(np.uint8)
            datasets.append(ImageDataset(images, y))
    return datasets


def make_reference(cfg, data, seed=0, batch_order=None, threads=None):
    """The reference-style PyTorch FedEM on ``data``'s training clients, with ``cfg``'s settings
    (``batch_order``: see :class:`torch_reference.ReferenceStyleFedEM`; ``threads``: PyTorch's,
    every core by default)."""
    import torch
    from torch_reference import ReferenceStyleFedEM, TorchCIFAR10CNN, TorchLinear

    torch.set_num_threads(threads or os.cpu_count() or 1)
    datasets = reference_datasets(cfg, data.train)
    if cfg.data.dataset == "synthetic":
        make_model = lambda: TorchLinear(cfg.data.dim)  # noqa: E731
    else:
        make_model = TorchCIFAR10CNN
    baseline = ReferenceStyleFedEM(
        make_model, datasets, binary=data.task.binary, n_learners=cfg.model.n_learners, lr=cfg.training.lr,
        batch_size=cfg.training.batch_size, drop_last=cfg.training.drop_last, momentum=cfg.training.momentum,
        weight_decay=cfg.training.weight_decay, seed=seed, batch_order=batch_order,
    )  # fmt: skip
    return baseline


def time_reference(cfg, data, rounds):
    import torch

    baseline = make_reference(cfg, data)
    baseline.run_round()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        baseline.run_round()
        times.append(time.perf_counter() - t0)
    return {
        "seconds_per_round": statistics.median(times),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tag", default="", help="suffix of the output file name")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more fedem_jax flags")
    args = parser.parse_args()
    cfg = resolve(["--dataset", args.dataset, "--workdir", "/tmp/fedem_jax_bench", "--quiet", *args.extra])
    data = load_dataset(cfg)
    print(data.summary(), flush=True)
    ours = time_rounds(cfg, data, args.rounds)
    print(
        f"fedem_jax:       {ours['seconds_per_round']:.4f} s/round (compile {ours['compile_seconds']:.1f} s)",
        flush=True,
    )
    ref = time_reference(cfg, data, args.rounds)
    print(
        f"reference-style: {ref['seconds_per_round']:.4f} s/round "
        f"(PyTorch {ref['torch']}, {ref['threads']} threads)"
    )
    speedup = ref["seconds_per_round"] / ours["seconds_per_round"]
    print(f"speedup: {speedup:.1f}x")
    if args.dataset == "cifar10":
        training = cfg.training
        flops = fedem_round_flops(
            np.asarray(data.train.counts), training.batch_size, cfg.model.n_learners, training.drop_last,
            2 * CIFAR10_CNN_MACS, training.local_epochs,
        )  # fmt: skip
        peak = matmul_peak_flops()
        ours["useful_flops_per_round"] = flops
        ours["achieved_flops_per_second"] = flops / ours["seconds_per_round"]
        ours["matmul_peak_flops_per_second"] = peak
        ours["flops_fraction"] = ours["achieved_flops_per_second"] / peak
        print(
            f"fedem_jax useful FLOP/s: {ours['achieved_flops_per_second'] / 1e9:.1f} G "
            f"= {ours['flops_fraction']:.0%} of the measured float32 matmul peak ({peak / 1e9:.1f} G)"
        )
    out = {
        "command": "python benchmarks/compare_reference.py " + " ".join(sys.argv[1:]),
        "data": data.summary(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "fedem_jax": ours,
        "reference_style": ref,
        "speedup": speedup,
    }
    print(f"wrote {write_result(f'compare_{args.dataset}' + ('_' + args.tag if args.tag else ''), out)}")


if __name__ == "__main__":
    main()
