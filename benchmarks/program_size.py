"""What each layout asks XLA to compile: the FedEM round's program size and its convolutions.

    python benchmarks/program_size.py --models mobilenet_v2,cifar10_cnn --n_clients 8

A CPU proxy for issue 12 (no GPU needed): for each model, training convolution (``xla``, the GPU
default, and ``matmul``: shifted slices and one matmul, which vmap turns into batched matmuls) and
layout of the client and learner axes, lowers one FedEM round (M = 3) on CIFAR-10-shaped data
with the first ``--n_clients`` clients of the real split's sizes, and reports the StableHLO size,
the number of convolutions, how many are *grouped* (per-client or per-learner weights under vmap
become ``feature_group_count`` / ``batch_group_count`` > 1, the shapes cuDNN handles worst), the
largest group count, and the CPU compile time (``--compile``). Writes
``benchmarks/results/program_size.json``.

It also prints what the automatic GPU layout would pick on the full 80-client split
(``memory.training_step_bytes`` of one learner at batch 128, times M = 3 per client, against
``--gpu_free_gib``, by default an H100's 80 GB under JAX's 75 % preallocation, less the data).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import tempfile
import time

import jax

from fedem_jax.data import load_dataset
from fedem_jax.execution import memory
from fedem_jax.models import STATEFUL_MODELS, build_model
from fedem_jax.settings.cli import resolve
from fedem_jax.training.session import build_experiment

HERE = os.path.dirname(os.path.abspath(__file__))
LAYOUTS = {  # name: (--client_chunk, --learner_vmap)
    "vmap-vmap": ("0", "1"),  # clients and learners vmapped: the GPU default
    "chunks4-vmap": ("4", "1"),
    "sequential-vmap": ("1", "1"),
    "sequential-sequential": ("1", "0"),
}


def cifar_like_npz(path: str, n_clients: int) -> None:
    import numpy as np

    with open(os.path.join(HERE, "data", "cifar10_split.json")) as f:
        split = json.load(f)
    labels, clients, is_test = [], [], []
    for client in range(n_clients):
        for key, held_out in (("train_labels", False), ("test_labels", True)):
            y = np.repeat(np.arange(10), split[key][client])
            labels.append(y)
            clients.append(np.full(len(y), client))
            is_test.append(np.full(len(y), held_out))
    y = np.concatenate(labels).astype(np.int32)
    x = np.random.default_rng(0).standard_normal((len(y), 32, 32, 3), dtype=np.float32)
    np.savez(path, x=x, y=y, client=np.concatenate(clients), is_test=np.concatenate(is_test))


def convolution_stats(text: str) -> dict:
    """Counts of ``stablehlo.convolution`` ops and of those with a group count above 1."""
    convs = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    groups = []
    for line in convs:
        found = re.findall(r"(feature_group_count|batch_group_count) = (\d+)", line)
        groups.append(max([int(n) for _, n in found] or [1]))
    return {
        "convolutions": len(convs),
        "grouped": sum(g > 1 for g in groups),
        "max_group_count": max(groups or [1]),
    }


def measure(data_path: str, model: str, impl: str, chunk: str, learner_vmap: str, compile_too: bool) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        cfg = resolve(
            ["--dataset", "npz", "--data_path", data_path, "--model", model, "--conv_impl", impl,
             "--client_chunk", chunk, "--learner_vmap", learner_vmap, "--n_learners", "3",
             "--workdir", workdir, "--quiet", "--plots", "false"]
        )  # fmt: skip
        experiment, data, state = build_experiment(cfg, load_dataset(cfg))
        t0 = time.perf_counter()
        lowered = jax.jit(experiment.algorithm.round).lower(state, data.train)
        result = {"lower_s": round(time.perf_counter() - t0, 2)}
        text = lowered.as_text()
        result.update(hlo_chars=len(text), **convolution_stats(text))
        if compile_too:
            t0 = time.perf_counter()
            lowered.compile()
            result["compile_s"] = round(time.perf_counter() - t0, 2)
        return result


def gpu_plan(model: str, impl: str, free_gib: float, n_clients: int = 80) -> dict:
    """The automatic GPU layout's client chunk for ``model`` on the full split (shapes only)."""
    import numpy as np

    step = memory.training_step_bytes(
        build_model(model, 10, impl), model in STATEFUL_MODELS, np.zeros((1, 32, 32, 3), np.float32), 128
    )
    chunk, why = memory.client_chunk_that_fits(3 * step, n_clients, int(free_gib * memory.GIB))
    return {"model": model, "conv_impl": impl, "step_gib_per_learner": round(step / memory.GIB, 3),
            "client_chunk": chunk, "why": why}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,cifar10_cnn")
    parser.add_argument("--n_clients", type=int, default=8)
    parser.add_argument("--conv_impls", default="xla,matmul", help="training convolutions to compare")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help=f"among {', '.join(LAYOUTS)}")
    parser.add_argument("--compile", action="store_true", help="also compile (CPU compile time)")
    parser.add_argument("--gpu_free_gib", type=float, default=58.0, help="for the GPU layout plan")
    args = parser.parse_args()
    results = {"backend": jax.default_backend(), "n_clients": args.n_clients, "rows": [], "gpu_plan": []}
    for model, impl in itertools.product(args.models.split(","), args.conv_impls.split(",")):
        results["gpu_plan"].append(gpu_plan(model, impl, args.gpu_free_gib))
        print(json.dumps(results["gpu_plan"][-1]), flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        data_path = os.path.join(scratch, "cifar_like.npz")
        cifar_like_npz(data_path, args.n_clients)
        chosen = args.layouts.split(",")
        grid = itertools.product(args.models.split(","), args.conv_impls.split(","), chosen)
        for model, impl, name in grid:
            chunk, learner_vmap = LAYOUTS[name]
            sizes = measure(data_path, model, impl, chunk, learner_vmap, args.compile)
            row = {"model": model, "conv_impl": impl, "layout": name, **sizes}
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    out = os.path.join(HERE, "results", "program_size.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
