"""All performance benchmarks in one command; writes ``benchmarks/results/summary.json``.

    python benchmarks/run_all.py --quick      # under 10 minutes on 2 CPU cores
    python benchmarks/run_all.py              # the README's numbers, tables and plots (longer)

Each benchmark runs in its own process (so peak memory is per benchmark) and writes its own
JSON next to the summary. Keys of ``summary.json``:

- ``synthetic_speedup``: reference-style s/round / fedem_jax s/round, synthetic paper setting;
- ``cifar_speedup``: the same on a reduced CIFAR-10 split;
- ``cifar_flops_fraction``: fedem_jax's useful FLOP/s on that round / measured matmul peak;
- ``padding_efficiency``: useful / executed sample-slots of a local epoch, synthetic split,
  default (sequential-client) layout;
- ``peak_rss_gb``: peak resident memory of one full CIFAR-10 round (80 clients, M = 3).

The PyTorch baseline needs ``pip install -e '.[bench]'``; CIFAR-10 needs prepared TFDS data
(``--data_dir``). Benchmarks whose requirements are missing are reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
TARGETS = {
    "synthetic_speedup": (">=", 30.0),
    "cifar_speedup": (">=", 1.5),
    "cifar_flops_fraction": (">=", 0.5),
    "padding_efficiency": (">=", 0.85),
    "peak_rss_gb": ("<=", 8.0),
}


def run(args: list[str]) -> tuple[int, float]:
    """Run a benchmark script; returns (exit code, peak RSS of that process in GB)."""
    print("$", " ".join(args), flush=True)
    process = subprocess.Popen(args)
    _, status, usage = os.wait4(process.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024**2  # KiB on Linux


def full_run_commands(py: str, data_dir: str, have_cifar: bool) -> dict[str, list[str]]:
    """The benchmarks behind the README's other tables and plots (full mode only)."""
    script = lambda name, *flags: [py, os.path.join(HERE, name), *flags]  # noqa: E731
    commands = {
        "scaling (clients, learners, devices; scaling.png)": script("scaling.py"),
        "layouts, synthetic": script("layouts.py", "--dataset", "synthetic"),
        "conv in scan, CIFAR10CNN": script("conv_in_scan.py"),
        "conv in scan, MobileNetV2": script("conv_in_scan.py", "--model", "mobilenet_v2", "--steps", "2"),
        "layer profile": script("layer_profile.py"),
        "micro-batches": script("micro_batch.py"),
        "padding + matmul peak": script("efficiency.py", "--peak"),
    }
    if have_cifar:
        cifar = ["--extra", "--n_clients", "10", "--max_samples", "3000"]
        commands["layouts, CIFAR-10"] = script(
            "layouts.py", "--dataset", "cifar10", "--data_dir", data_dir, *cifar
        )
        commands["devices, CIFAR-10"] = script("scaling.py", "--cifar_data_dir", data_dir)
    return commands


def load(name: str) -> dict:
    with open(os.path.join(RESULTS, name)) as f:
        return json.load(f)


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--data_dir", default=os.path.join(HERE, "..", "..", "shared", "data", "tensorflow_datasets")
    )
    args = parser.parse_args()
    py = sys.executable
    tag = ["--tag", "quick"] if args.quick else []
    suffix = "_quick" if args.quick else ""
    summary, notes = {}, {}
    start = time.perf_counter()

    if have_torch():
        code, _ = run(
            [
                py,
                os.path.join(HERE, "compare_reference.py"),
                "--dataset",
                "synthetic",
                "--rounds",
                "2" if args.quick else "5",
                *tag,
                "--extra",
                "--n_test_per_client",
                "10",
            ]
        )
        if code == 0:
            summary["synthetic_speedup"] = load(f"compare_synthetic{suffix}.json")["speedup"]
    else:
        notes["synthetic_speedup"] = "skipped: torch not installed (pip install -e '.[bench]')"

    have_cifar = os.path.isdir(os.path.join(args.data_dir, "cifar10"))
    if have_torch() and have_cifar:
        size = (
            ["--n_clients", "10", "--max_samples", "3000"]
            if args.quick
            else ["--n_clients", "20", "--max_samples", "6000"]
        )
        code, _ = run(
            [
                py,
                os.path.join(HERE, "compare_reference.py"),
                "--dataset",
                "cifar10",
                "--rounds",
                "1" if args.quick else "3",
                *tag,
                "--extra",
                "--data_dir",
                args.data_dir,
                *size,
            ]
        )
        if code == 0:
            result = load(f"compare_cifar10{suffix}.json")
            summary["cifar_speedup"] = result["speedup"]
            summary["cifar_flops_fraction"] = result["fedem_jax"]["flops_fraction"]
    else:
        notes["cifar_speedup"] = notes["cifar_flops_fraction"] = (
            f"skipped: needs torch and CIFAR-10 TFDS data in {args.data_dir}"
        )

    code, _ = run([py, os.path.join(HERE, "efficiency.py")])
    if code == 0:
        # The default CPU layout: sequential clients with 32-sample sub-batches for partial batches.
        summary["padding_efficiency"] = load("efficiency.json")["synthetic_padding_efficiency"][
            "sequential_clients_micro_batch_32"
        ]

    if have_cifar:
        code, peak = run(
            [
                py,
                "-m",
                "fedem_jax.main",
                "--dataset",
                "cifar10",
                "--data_dir",
                args.data_dir,
                "--n_rounds",
                "1",
                "--checkpoint_every",
                "0",
                "--tensorboard",
                "false",
                "--quiet",
                "--workdir",
                "/tmp/fedem_jax_peak_rss",
            ]
        )
        if code == 0:
            summary["peak_rss_gb"] = peak
    else:
        notes["peak_rss_gb"] = f"skipped: needs CIFAR-10 TFDS data in {args.data_dir}"

    if not args.quick:
        summary["full_runs"] = {
            name: "ok" if run(command)[0] == 0 else "failed"
            for name, command in full_run_commands(py, args.data_dir, have_cifar).items()
        }

    summary["targets_met"] = {
        key: (summary[key] >= bound if op == ">=" else summary[key] <= bound)
        for key, (op, bound) in TARGETS.items()
        if key in summary
    }
    summary["skipped"] = notes
    summary["quick"] = args.quick
    summary["wall_seconds"] = time.perf_counter() - start
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)

    print("\n| metric | value | target | met |\n|---|---|---|---|")
    for key, (op, bound) in TARGETS.items():
        if key in summary:
            met = "yes" if summary["targets_met"][key] else "**no**"
            print(f"| {key} | {summary[key]:.3f} | {op} {bound} | {met} |")
        else:
            print(f"| {key} | — | {op} {bound} | {notes.get(key, 'failed')} |")
    print(f"\nwrote {os.path.join(RESULTS, 'summary.json')} in {summary['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
