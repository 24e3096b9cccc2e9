"""XLA's convolution vs convolution-as-matmul, for a CIFAR10CNN (or MobileNetV2) gradient step,
outside and inside a ``lax.scan`` (the shape of a FedEM round's local loop); and, if installed, a
PyTorch training step of the CIFAR10CNN.

    python benchmarks/conv_in_scan.py [--batch 128] [--steps 3] [--model mobilenet_v2]

Both implementations run in this one process on the same parameters and data; every timing is
wrapped in ``jax.block_until_ready``, compilation excluded. Writes
``benchmarks/results/conv_in_scan.json`` (``conv_in_scan_<model>.json`` for another model).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from timing import write_result

from fedem_jax.core.tasks import Task
from fedem_jax.models import build_model


def best_time(fn, *args, repeats=3) -> float:
    """Best of ``repeats`` calls, compilation and the first call excluded."""
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


def torch_step_seconds(x, y, steps: int = 5) -> float:
    """PyTorch (CPU, all cores) SGD step of the same network, for comparison."""
    import sys

    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_reference import TorchCIFAR10CNN

    torch.set_num_threads(os.cpu_count() or 1)
    model = TorchCIFAR10CNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()
    yt = torch.from_numpy(np.array(y)).long()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xt), yt).backward()
            optimizer.step()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--model", default="cifar10_cnn", choices=("cifar10_cnn", "mobilenet_v2"))
    args = parser.parse_args()
    task = Task(10)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.batch, 32, 32, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, args.batch))
    results = {}
    for impl in ("xla", "matmul"):
        model = build_model(args.model, 10, conv_impl=impl)
        variables = model.init(jax.random.PRNGKey(0), x[:1])
        params, extra = variables["params"], {k: v for k, v in variables.items() if k != "params"}

        def logits(p, model=model, extra=extra):
            if not extra:  # CIFAR10CNN
                return model.apply({"params": p}, x)
            return model.apply({"params": p, **extra}, x, train=True, mutable=list(extra))[0]  # BatchNorm

        def grad(p, logits=logits):
            return jax.grad(lambda p: task.per_sample_loss(logits(p), y).mean())(p)

        def scanned(p, grad=grad):
            def step(p, _):
                return jax.tree.map(lambda a, g: a - 0.01 * g, p, grad(p)), None

            return jax.lax.scan(step, p, jnp.arange(args.steps))[0]

        t0 = time.perf_counter()
        jax.jit(scanned).lower(params).compile()
        compile_seconds = time.perf_counter() - t0
        results[impl] = {
            "scan_compile_seconds": compile_seconds,
            "forward_seconds": best_time(jax.jit(logits), params),
            "grad_seconds": best_time(jax.jit(grad), params),
            "scan_seconds_per_step": best_time(jax.jit(scanned), params) / args.steps,
        }
        r = results[impl]
        print(
            f"{impl:7s} forward {r['forward_seconds']:.4f} s | gradient {r['grad_seconds']:.4f} s | "
            f"gradient step inside lax.scan {r['scan_seconds_per_step']:.4f} s/step | "
            f"compile (scan) {r['scan_compile_seconds']:.1f} s",
            flush=True,
        )
    try:
        if args.model != "cifar10_cnn":
            raise ImportError  # the PyTorch comparison has only the CIFAR10CNN
        results["pytorch"] = {"train_step_seconds": torch_step_seconds(x, y)}
        print(f"pytorch train step (SGD, momentum) {results['pytorch']['train_step_seconds']:.4f} s/step")
    except ImportError:
        print("pytorch: not installed (pip install -e '.[bench]') or not this model, skipped")
    ratio = results["xla"]["scan_seconds_per_step"] / results["matmul"]["scan_seconds_per_step"]
    print(f"inside lax.scan, matmul is {ratio:.1f}x faster than XLA's convolution")
    name = "conv_in_scan" if args.model == "cifar10_cnn" else f"conv_in_scan_{args.model}"
    out = {
        "command": "python benchmarks/conv_in_scan.py " + " ".join(os.sys.argv[1:]),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "batch": args.batch,
        "model": args.model,
        "results": results,
        "scan_speedup_matmul_over_xla": ratio,
    }
    print(f"wrote {write_result(name, out)}")


if __name__ == "__main__":
    main()
