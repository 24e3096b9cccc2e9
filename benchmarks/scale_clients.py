"""Cost of a round against the federation's size: FedEM (M = 3) with K clients a round on synthetic
federations of 1,000 / 10,000 / 100,000 clients, the federation on disk (``--federation host``),
side by side with today's all-on-device rounds where they fit.

    python benchmarks/scale_clients.py                       # 1k, 10k, 100k clients, K = 100, 50 rounds
    python benchmarks/scale_clients.py --sizes 1000,10000 --rounds 20 --stores /tmp/stores

Each federation is written once as a store (``python -m fedem_jax.data.make_store``, timed) and
every run is a separate ``python -m fedem_jax.main`` process (its peak RSS from ``getrusage``).
Modes: ``host`` (data on disk, client state on the host, the cohort on the device; evaluation on
``--eval_clients`` clients), ``device cohort`` (``--cohort``: the whole federation in memory,
the cohort gathered on the device) and ``device masked`` (every client computed, the unsampled
masked: the default before ``--cohort``). Device modes are skipped above ``--device_limit``
clients (the data alone would not fit in this machine's memory). Steady seconds per round are the
run's own ``seconds_per_round`` (round 1 on, compile apart), the median over ``--repeats`` runs
(seeds ``--seed``, +1, ...: each draws other cohorts, so a large store is read from disk, not the
page cache). Writes
``benchmarks/results/scale_clients.json`` and ``scale_clients.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from timing import RESULTS, write_result

MODES = {
    "host": ["--federation", "host", "--cohort"],
    "device cohort": ["--cohort"],
    "device masked": [],
}


def build_store(folder: str, n_clients: int, n_test: int) -> float | None:
    """Write the store unless it exists; the seconds it took (``None``: it existed)."""
    if os.path.exists(os.path.join(folder, "federation.json")):
        return None
    t0 = time.perf_counter()
    command = [sys.executable, "-m", "fedem_jax.data.make_store", folder, "--n_clients", str(n_clients),
               "--n_test_per_client", str(n_test)]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def run(folder: str, n_clients: int, mode: str, args, seed: int) -> dict:
    """One training run in its own process: its summary's timings and the process's peak RSS."""
    workdir = os.path.join(args.stores, f"run_{n_clients}_{mode.replace(' ', '_')}")
    command = [
        sys.executable, "-m", "fedem_jax.main", "--dataset", "store", "--data_path", folder, "--lr", "0.1",
        "--sampling_rate", str(args.k / n_clients), "--client_momentum", args.client_momentum,
        "--n_rounds", str(args.rounds), "--log_freq", str(args.rounds), "--workdir", workdir, "--overwrite",
        "--plots", "false", "--tensorboard", "false", "--quiet", "--checkpoint_every", "0",
        "--seed", str(seed),
        *MODES[mode],
    ]  # fmt: skip
    if mode == "host":
        command += ["--eval_clients", str(args.eval_clients)]
    t0 = time.perf_counter()
    returncode, peak, error = run_measured(command, workdir + ".log")
    wall = time.perf_counter() - t0
    if returncode != 0:
        return {"error": error}
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    return {
        "seconds_per_round": summary["seconds_per_round"],
        "compile_seconds": summary["compile_seconds"],
        "data_seconds": summary["data_seconds"],
        "wall_seconds": wall,
        "peak_rss_gib": peak / 2**30,
        "round_device_gib": summary["layout"].get("round_device_bytes", 0) / 2**30,
        "test_accuracy": summary["test_accuracy"],
    }


def run_measured(command: list[str], log: str) -> tuple[int, int, str]:
    """``(exit code, peak RSS in bytes, last line of its output)`` of ``command`` (its own rusage)."""
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    with open(log) as f:
        lines = f.read().strip().splitlines() or ["?"]
    return child.returncode, usage.ru_maxrss * 1024, lines[-1]  # Linux: ru_maxrss in KiB


def store(args, n_clients: int) -> str:
    return os.path.join(args.stores, f"synthetic_{n_clients}")


def summarize(runs: list[dict]) -> dict:
    """Median seconds per round over the repeats (each a run's steady mean), the largest peak RSS."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[-1]
    seconds = sorted(r["seconds_per_round"] for r in good)
    return {
        "seconds_per_round": float(np.median(seconds)), "seconds_per_round_runs": seconds,
        "compile_seconds": float(np.median([r["compile_seconds"] for r in good])),
        "peak_rss_gib": max(r["peak_rss_gib"] for r in good),
        "round_device_gib": max(r["round_device_gib"] for r in good),
        "test_accuracy": good[-1]["test_accuracy"], "runs": len(good),
    }  # fmt: skip


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_rss) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in MODES:
        points = [(int(n), r[mode]) for n, r in results.items() if "seconds_per_round" in r.get(mode, {})]
        if not points:
            continue
        sizes = [n for n, _ in points]
        ax_time.plot(sizes, [r["seconds_per_round"] for _, r in points], "o-", label=mode)
        ax_rss.plot(sizes, [r["peak_rss_gib"] for _, r in points], "o-", label=mode)
    for ax, label in ((ax_time, "seconds per round (steady)"), (ax_rss, "peak RSS (GiB)")):
        ax.set_xscale("log")
        ax.set_xlabel("clients in the federation")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_time.legend()
    fig.suptitle("FedEM, M = 3, K = 100 clients a round (synthetic)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--k", type=int, default=100, help="clients a round")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each setting (the median is reported)"
    )
    parser.add_argument("--seed", type=int, default=1, help="the first repeat's --seed (then +1, +2, ...)")
    parser.add_argument("--eval_clients", type=int, default=1000)
    parser.add_argument("--n_test_per_client", type=int, default=50)
    parser.add_argument("--client_momentum", default="fresh")
    parser.add_argument(
        "--device_limit", type=int, default=10000, help="largest federation run on the device"
    )
    parser.add_argument("--stores", default="/tmp/fedem_jax_scale", help="where stores and runs are written")
    args = parser.parse_args()
    os.makedirs(args.stores, exist_ok=True)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results = {
        str(n): {"store_seconds": build_store(store(args, n), n, args.n_test_per_client)} for n in sizes
    }
    for repeat in range(args.repeats):  # repeats outermost: drifts of a shared machine hit every mode alike
        for n_clients in sizes:
            for mode in MODES:
                runs = results[str(n_clients)].setdefault(mode, [])
                if mode != "host" and n_clients > args.device_limit:
                    results[str(n_clients)][mode] = {"skipped": f"above --device_limit {args.device_limit}"}
                    continue
                # Each repeat its own seed: other cohorts, read from disk rather than the page cache.
                runs.append(run(store(args, n_clients), n_clients, mode, args, seed=args.seed + repeat))
                print(repeat, n_clients, mode, runs[-1], flush=True)
    for entry in results.values():
        for mode in MODES:
            if isinstance(entry.get(mode), list):
                entry[mode] = summarize(entry[mode])
    payload = {"settings": vars(args), "results": results}
    print(f"wrote {write_result('scale_clients', payload)}")
    plot(results, os.path.join(RESULTS, "scale_clients.png"))


if __name__ == "__main__":
    main()
