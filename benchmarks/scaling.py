"""Seconds per FedEM round on synthetic data against clients, learners and devices.

    python benchmarks/scaling.py [--quick]
    python benchmarks/scaling.py --cifar_data_dir ../shared/data/tensorflow_datasets   # CIFAR, 1 vs 2 devices

- clients: 10 to 1,000 (M = 3);
- learners: M = 1 to 8 (300 clients);
- devices: 1, 2, 4, 8 forced CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``,
  300 clients), each in its own process. The forced devices share the machine's cores; each runs
  its own block of clients concurrently, so on CPU sharding also spreads the sequential client
  loop over the cores.

Median of timed rounds after a warm-up round, ``jax.block_until_ready`` around each, compile
excluded. Writes ``benchmarks/results/scaling.json`` and ``scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def seconds_per_round(flags: list[str], rounds: int) -> float:
    from fedem_jax.data import load_dataset
    from fedem_jax.settings.cli import resolve

    sys.path.insert(0, HERE)
    from timing import time_rounds

    cfg = resolve(["--workdir", "/tmp/fedem_jax_bench", "--quiet", "--n_test_per_client", "10", *flags])
    return time_rounds(cfg, load_dataset(cfg), rounds)["seconds_per_round"]


def devices_curve(counts: list[int], rounds: int, extra: list[str] = ()) -> dict:
    env = dict(
        os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={max(counts)}", JAX_PLATFORMS="cpu"
    )
    out = {}
    for d in counts:
        result = subprocess.run(
            [sys.executable, __file__, "--child_devices", str(d), "--rounds", str(rounds), "--extra", *extra],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        out[d] = json.loads(result.stdout.strip().splitlines()[-1])["seconds_per_round"]
        print(f"devices {d}: {out[d]:.4f} s/round", flush=True)
    return out


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    for ax, (key, xlabel, log) in zip(
        axes,
        [("clients", "clients (M = 3)", "loglog"), ("learners", "learners M (300 clients)", ""),
         ("devices", "forced CPU devices (300 clients, 2 cores)", "ticks")],
        strict=True,
    ):  # fmt: skip
        xs = sorted(int(k) for k in results[key])
        ax.plot(xs, [results[key][str(x)] for x in xs], marker="o")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds per round")
        if log == "loglog":
            ax.set_xscale("log")
            ax.set_yscale("log")
        if log == "ticks":
            ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    fig.suptitle("fedem_jax FedEM round, synthetic data, CPU")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--cifar_data_dir",
        default="",
        help="also time CIFAR-10 (20 clients, 10%% of the data) on 1 and 2 devices",
    )
    parser.add_argument("--child_devices", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_devices:
        seconds = seconds_per_round(["--n_devices", str(args.child_devices), *args.extra], args.rounds)
        print(json.dumps({"seconds_per_round": seconds}))
        return
    if args.cifar_data_dir:
        cifar = [
            "--dataset",
            "cifar10",
            "--data_dir",
            args.cifar_data_dir,
            "--n_clients",
            "20",
            "--max_samples",
            "6000",
        ]
        curve = devices_curve([1, 2], 2, cifar)
        path = os.path.join(HERE, "results", "scaling_cifar_devices.json")
        with open(path, "w") as f:
            json.dump(
                {"command": "python benchmarks/scaling.py " + " ".join(sys.argv[1:]), "devices": curve}, f
            )
        print(f"wrote {path}")
        return
    clients = [10, 100, 1000] if args.quick else [10, 30, 100, 300, 1000]
    learners = [1, 3, 8] if args.quick else [1, 2, 3, 4, 6, 8]
    results = {"clients": {}, "learners": {}}
    for c in clients:
        results["clients"][c] = seconds_per_round(["--n_clients", str(c)], args.rounds)
        print(f"clients {c}: {results['clients'][c]:.4f} s/round", flush=True)
    for m in learners:
        results["learners"][m] = seconds_per_round(["--n_learners", str(m)], args.rounds)
        print(f"learners {m}: {results['learners'][m]:.4f} s/round", flush=True)
    results["devices"] = devices_curve([1, 2, 8] if args.quick else [1, 2, 4, 8], args.rounds)
    results["command"] = "python benchmarks/scaling.py " + " ".join(sys.argv[1:])
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "scaling.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot(json.loads(json.dumps(results)), os.path.join(HERE, "results", "scaling.png"))


def replot():
    with open(os.path.join(HERE, "results", "scaling.json")) as f:
        plot(json.load(f), os.path.join(HERE, "results", "scaling.png"))
    print("wrote benchmarks/results/scaling.json and scaling.png")


if __name__ == "__main__":
    main()
