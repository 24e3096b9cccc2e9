"""SIGKILL during a 10,000-client ``--federation host`` run; the rerun must end with the metrics rows
and ``clients.csv`` of a run that was never stopped.

    python benchmarks/scale_kill_resume.py                  # writes the store if missing
    python benchmarks/scale_kill_resume.py --clients 100000 --kill_after 20

The store is the one ``benchmarks/scale_clients.py`` writes. The run is killed (``kill -9``) once
its checkpoint of round ``--kill_after`` exists, then started again with the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from scale_clients import build_store


def rows(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if "second" not in k} for line in f]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--kill_after", type=int, default=20, help="kill once this round's checkpoint exists")
    parser.add_argument("--stores", default="/tmp/fedem_jax_scale")
    args = parser.parse_args()
    folder = os.path.join(args.stores, f"synthetic_{args.clients}")
    build_store(folder, args.clients, 50)
    command = [
        sys.executable, "-m", "fedem_jax.main", "--dataset", "store", "--data_path", folder, "--lr", "0.1",
        "--federation", "host", "--cohort", "--sampling_rate", str(100 / args.clients),
        "--eval_clients", "500",
        "--n_rounds", str(args.rounds), "--log_freq", "5", "--checkpoint_every", "5", "--quiet",
        "--plots", "false", "--tensorboard", "false", "--overwrite",
    ]  # fmt: skip
    straight, killed = (os.path.join(args.stores, name) for name in ("resume_straight", "resume_killed"))
    subprocess.run([*command, "--workdir", straight], check=True, capture_output=True)
    subprocess.run(["rm", "-rf", killed], check=True)
    child = subprocess.Popen(
        [*command, "--workdir", killed], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = os.path.join(killed, "checkpoints", str(args.kill_after))
    while not os.path.exists(checkpoint) and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    kept = sorted(int(c) for c in os.listdir(os.path.dirname(checkpoint)) if c.isdigit())
    print(f"killed (exit {child.returncode}) with checkpoints {kept}, {len(rows(killed))} rows written")
    command = [c for c in command if c != "--overwrite"]  # resume, do not start over
    subprocess.run([*command, "--workdir", killed], check=True, capture_output=True)
    same_rows = rows(killed) == rows(straight)
    with open(os.path.join(killed, "clients.csv")) as a, open(os.path.join(straight, "clients.csv")) as b:
        same_clients = a.read() == b.read()
    print(
        f"resumed: {len(rows(killed))} rows, identical rows {same_rows}, identical clients.csv {same_clients}"
    )
    sys.exit(0 if same_rows and same_clients else 1)


if __name__ == "__main__":
    main()
