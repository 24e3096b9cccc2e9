"""One command on a GPU (or TPU) machine: the paper's CIFAR-10 models and the synthetic setting.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--budget_s 480]

Needs only jax, flax, optax, chex and orbax, from a source checkout (nothing installed; no
TensorFlow, TFDS, tqdm, matplotlib or tensorboardX): runs go through ``python -m fedem_jax.main``
with ``--quiet --plots false --tensorboard false``. Steps, each in its own process with its own
time limit, all within ``--budget_s``:

1. make CIFAR-10-shaped data (random pixels: timings only) with the exact per-client train/test
   sizes and label counts of the default 80-client split (``benchmarks/data/cifar10_split.json``);
2. FedEM, M = 3, ``cifar10_cnn``: compile time and steady seconds per round (default layout), with
   the default convolution and with ``--conv_impl matmul``;
3. the same with ``mobilenet_v2`` (the paper's CIFAR model): the default (matmul), then
   ``--conv_impl xla``;
   After the default CNN: ``round_profile.py`` on the same run, its operations by exclusive time
   (on a GPU the device's kernels too): where the round's time goes;
4. FedEM on the synthetic paper setting, 200 rounds: accuracy, seconds per round, compile; then
   the same as a sweep of 10 seeds (issue 13 on an accelerator: ``steady_ratio`` is 10 single
   rounds' time over one sweep round's);
5. the GPU-relevant tests (``test_math``, ``test_engine``, ``test_methods``, ``test_shuffle``,
   ``test_sample_map``) if pytest is there.

Writes one JSON: ``{"device": ..., "jax": ..., "steps": {name: {...}}}``; each step has
``status`` (``ok``, ``timeout``, ``failed``, ``skipped``), ``wall_s`` and its own numbers
(``compile_s``, ``s_per_round``, ``rounds``, ``accuracy``, ``layout``; ``passed`` / ``failed``
for the tests). ``--quick`` shrinks everything (a check of the script itself, e.g. on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RUN_FLAGS = ["--quiet", "--plots", "false", "--tensorboard", "false", "--checkpoint_every", "0"]
TESTS = [
    "tests/test_math.py",
    "tests/test_engine.py",
    "tests/test_methods.py",
    "tests/test_shuffle.py",
    "tests/test_sample_map.py",
]
# (model, training convolution, share of the time left): the default layout and convolution
# (on GPU: XLA's for the CNN, slices + matmul for MobileNetV2, clients vmapped as many as fit),
# and the other convolution: vmap turns the matmul form into batched matmuls, XLA's into
# convolutions with clients x learners x channels groups (benchmarks/program_size.py counts them).
PROFILE_SHARE = 0.1
STEPS = [
    ("cifar10_cnn", "default", 0.15),
    ("cifar10_cnn", "matmul", 0.15),
    ("mobilenet_v2", "default", 0.3),
    ("mobilenet_v2", "xla", 0.45),
]


def make_cifar_like(path: str, quick: bool) -> dict:
    """An ``npz`` with the real split's per-client sizes and label counts, random pixels."""
    with open(os.path.join(HERE, "data", "cifar10_split.json")) as f:
        split = json.load(f)
    rng = np.random.default_rng(0)
    train, test = np.asarray(split["train_labels"]), np.asarray(split["test_labels"])
    if quick:
        train, test = train[:4] // 20 + 1, test[:4] // 20 + 1
    labels, clients, is_test = [], [], []
    for client, (train_row, test_row) in enumerate(zip(train, test, strict=True)):
        for row, held_out in ((train_row, False), (test_row, True)):
            y = np.repeat(np.arange(len(row)), row)
            labels.append(y)
            clients.append(np.full(len(y), client))
            is_test.append(np.full(len(y), held_out))
    y = np.concatenate(labels).astype(np.int32)
    x = rng.standard_normal((len(y), 32, 32, 3), dtype=np.float32)
    np.savez(path, x=x, y=y, client=np.concatenate(clients), is_test=np.concatenate(is_test))
    return {"clients": len(train), "train_samples": int(train.sum()), "test_samples": int(test.sum())}


def run_process(command: list[str], timeout: float):
    """``(result, done)``: ``result["status"]`` is ``ok``, ``failed`` (exit code, stderr's end) or
    ``timeout`` (then ``done``, the finished process, is None)."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    try:  # the checkout importable without installing it, for scripts as for ``-m``
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout, 1)
        )
    except subprocess.TimeoutExpired:
        waited = round(time.perf_counter() - start, 1)
        return {"status": "timeout", "wall_s": waited, "limit_s": round(timeout)}, None
    result = {"wall_s": round(time.perf_counter() - start, 1)}
    if done.returncode != 0:
        return {**result, "status": "failed", "exit": done.returncode, "stderr": done.stderr[-1500:]}, done
    return {**result, "status": "ok"}, done


def run_main(flags: list[str], workdir: str, timeout: float) -> dict:
    """``python -m fedem_jax.main`` in a process; its summary's numbers, or why there are none."""
    command = [sys.executable, "-m", "fedem_jax.main", *flags, *RUN_FLAGS, "--workdir", workdir]
    result, _ = run_process(command, timeout)
    if result["status"] != "ok":
        return result
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    split = "val" if "val_accuracy" in summary else "test"
    return {
        **result,
        "compile_s": round(summary["compile_seconds"], 2),
        "s_per_round": round(summary["seconds_per_round"], 4),
        "rounds": summary["n_rounds"],
        "accuracy": round(summary[f"{split}_accuracy"], 4),
        "data_s": round(summary["data_seconds"], 1),
        "layout": summary["layout"],
    }


def run_profile(flags: list[str], out: str, timeout: float) -> dict:
    """``benchmarks/round_profile.py``: the CNN round's operations by time (where it goes)."""
    command = [sys.executable, os.path.join(HERE, "round_profile.py"), "--rounds", "2", "--top", "15",
               "--out", out, "--", *flags, "--tensorboard", "false"]  # fmt: skip
    result, _ = run_process(command, timeout)
    if result["status"] != "ok":
        return result
    with open(out) as f:
        profile = json.load(f)
    keep = ("seconds_per_round", "traced_seconds_per_round", "compile_seconds", "processes")
    return {**result, **{k: profile[k] for k in keep}}


def run_tests(timeout: float) -> dict:
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"status": "skipped", "why": "pytest is not installed"}
    # One process, whatever is installed: the project's addopts ask for xdist's -n.
    command = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", *TESTS]
    result, done = run_process(command, timeout)
    if done is None:
        return result
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    words = [part.split() for part in last.split(",")]  # "61 passed, 1 skipped in 26.0s"
    counts = {w[1]: int(w[0]) for w in words if len(w) >= 2 and w[0].isdigit()}
    if counts:  # pytest reported: its summary line says what failed (else stderr says why not)
        result.pop("stderr", None)
    return {**result, "summary": last, **counts}


def device_description() -> dict:
    import jax

    device = jax.devices()[0]
    return {"device": getattr(device, "device_kind", str(device)), "backend": jax.default_backend(),
            "n_devices": jax.device_count(), "jax": jax.__version__}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--budget_s", type=float, default=480.0, help="all steps together")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the script itself")
    args = parser.parse_args()
    deadline = time.perf_counter() + args.budget_s
    report = {**device_description(), "steps": {}}

    def left(share: float) -> float:  # a step's limit: its share of what is left
        return share * (deadline - time.perf_counter())

    def record(name: str, result: dict) -> None:
        report["steps"][name] = result
        print(f"{name}: {json.dumps(result)}", flush=True)
        with open(args.out, "w") as f:  # after every step: a later crash keeps the earlier ones
            json.dump(report, f, indent=2)

    with tempfile.TemporaryDirectory() as scratch:
        data = os.path.join(scratch, "cifar10_like.npz")
        t0 = time.perf_counter()
        record(
            "data",
            {
                "status": "ok",
                **make_cifar_like(data, args.quick),
                "wall_s": round(time.perf_counter() - t0, 1),
            },
        )
        rounds = "2" if args.quick else "3"
        cifar = ["--dataset", "npz", "--data_path", data, "--n_learners", "3", "--n_rounds", rounds,
                 "--log_freq", rounds, "--lr", "0.03", "--batch_size", "128"]  # fmt: skip
        for model, impl, share in STEPS:
            name = model if impl == "default" else f"{model}_{impl}"
            flags = [*cifar, "--model", model] + ([] if impl == "default" else ["--conv_impl", impl])
            record(name, run_main(flags, f"{scratch}/{name}", left(share)))
            if name == "cifar10_cnn":  # where the CNN round's time goes (issue 12, item 2)
                profile = run_profile(flags, f"{scratch}/profile.json", left(PROFILE_SHARE))
                record("cifar10_cnn_profile", profile)
        synthetic = (
            ["--n_clients", "20", "--n_rounds", "5", "--n_test_per_client", "100"] if args.quick else []
        )
        single = run_main(synthetic, f"{scratch}/synthetic", left(0.4))
        record("synthetic_200_rounds", single)
        seeds = ["--seeds", ",".join(str(seed) for seed in range(1, 11))]
        sweep = run_main([*synthetic, *seeds], f"{scratch}/synthetic_sweep", left(0.5))
        if sweep["status"] == single["status"] == "ok" and sweep["s_per_round"] > 0:
            sweep["steady_ratio"] = round(10 * single["s_per_round"] / sweep["s_per_round"], 2)
        record("synthetic_sweep_10_seeds", sweep)
        record("tests", run_tests(left(0.95)) if not args.quick else {"status": "skipped", "why": "--quick"})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
