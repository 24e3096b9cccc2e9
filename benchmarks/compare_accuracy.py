"""Fidelity: test accuracy per round of fedem_jax and the reference-style PyTorch FedEM, side by
side on the same CIFAR-10 clients (issue 27).

    python benchmarks/compare_accuracy.py --compare same_batches --extra --data_dir DIR
    python benchmarks/compare_accuracy.py --compare same_start --extra --data_dir DIR
    python benchmarks/compare_accuracy.py --compare batch_orders --seeds 0,1,2 --extra --data_dir DIR
    python benchmarks/compare_accuracy.py --compare seeds --seeds 0,1,2,3,4 --extra --data_dir DIR

``--compare``:

- ``same_batches``: one draw of PyTorch's default initialisation (``--seeds``' first seed), the
  identical tensors given to both sides (fedem_jax through ``--init_from``, one set per
  component), and the baseline fed fedem_jax's batch order. Both compute the same rounds, so the
  accuracies should be equal and the parameters differ only by float32 rounding: reported per
  round as ``|theta_jax - theta_torch| / |theta_torch(r) - theta_torch(r-1)|`` (the distance
  relative to the round's update, largest over components).
- ``same_start``: the same initial tensors, each side shuffling with its own generator.
- ``batch_orders``: the first seed's draw for every run of both sides, each run shuffling with its
  own seed: over ``--seeds``, how far the batch order alone moves each side's curve (mean, std
  and band overlap as for ``seeds``).
- ``seeds``: each side its own draws (fedem_jax ``--init torch``, all seeds as one sweep), over
  ``--seeds``: mean and standard deviation per round, and whether the mean +- std bands overlap.
  ``--sides_in_parallel`` runs the baseline in a second process meanwhile (on 2 cores, about
  half the time).

Clients: the first ``--clients`` of the default 80-client split. Both sides: CIFAR10CNN, M = 3,
lr 0.03 (constant), batch 128, SGD momentum 0.9 kept across rounds, weight decay 5e-4, one local
epoch, ``--drop_last`` as the reference (a client smaller than a batch keeps its one batch), round
0 the model before training. Writes ``benchmarks/results/compare_accuracy_<compare>.json`` and
prints the table and the largest gap.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
import tempfile
import time

import numpy as np
from compare_reference import make_reference, reference_datasets
from timing import write_result

import fedem_jax
from fedem_jax.data import FederatedData, build_split, load_dataset
from fedem_jax.models.pretrained import save_components
from fedem_jax.settings.cli import resolve

LAYERS = {"Conv_0": "conv1", "Conv_1": "conv2", "Dense_0": "fc1", "Dense_1": "fc2"}


def first_clients(data: FederatedData, n: int) -> FederatedData:
    """The federation of ``data``'s first ``n`` clients (their train and test samples)."""

    def head(split):
        x, y = np.asarray(split.x), np.asarray(split.y)
        parts = list(zip(np.asarray(split.offsets), np.asarray(split.counts), strict=True))[:n]
        return build_split([x[o : o + c] for o, c in parts], [y[o : o + c] for o, c in parts])

    return FederatedData(data.name, head(data.train), head(data.test), data.task)


def flax_layout(learner) -> dict[str, dict[str, np.ndarray]]:
    """A ``TorchCIFAR10CNN``'s weights as fedem_jax's CIFAR10CNN holds them: convolutions OIHW ->
    HWIO, dense [out, in] -> [in, out], and fc1's input rows reordered from PyTorch's NCHW
    flattening to flax's NHWC one."""
    out = {}
    for ours, theirs in LAYERS.items():
        layer = getattr(learner, theirs)
        weight = layer.weight.detach().numpy()
        if ours.startswith("Conv"):
            kernel = weight.transpose(2, 3, 1, 0)
        elif ours == "Dense_0":  # [2048, 64*5*5] indexed (c, h, w) -> [(h, w, c), 2048]
            width = weight.shape[0]
            kernel = weight.reshape(width, 64, 5, 5).transpose(2, 3, 1, 0).reshape(-1, width)
        else:
            kernel = weight.T
        out[ours] = {"kernel": kernel.copy(), "bias": layer.bias.detach().numpy().copy()}
    return out


def stacked(learners) -> dict[str, dict[str, np.ndarray]]:
    """The learners' flax-layout weights stacked on a leading component axis."""
    layouts = [flax_layout(learner) for learner in learners]
    return {k: {p: np.stack([w[k][p] for w in layouts]) for p in ("kernel", "bias")} for k in LAYERS}


def component_norms(a, b=None) -> np.ndarray:
    """Per component, the L2 norm of ``a - b`` (of ``a`` without ``b``), all leaves as one vector."""
    diffs = [a[k][p] - (0 if b is None else b[k][p]) for k in a for p in a[k]]
    return np.sqrt(sum((d**2).reshape(len(d), -1).sum(1) for d in diffs))


def distances(ours, theirs, previous) -> tuple[float, float]:
    """Largest over components of ``|ours - theirs|`` relative to the round's update
    ``|theirs - previous|`` and to the parameters ``|theirs|``."""
    gap = component_norms(ours, theirs)
    update, size = component_norms(theirs, previous), component_norms(theirs)
    return float(np.max(gap / update)), float(np.max(gap / size))


def fedem_jax_config(args, seeds: str, more=()):
    flags = ["--dataset", "cifar10", "--n_rounds", str(args.rounds), "--log_freq", "1", "--seeds", seeds]
    flags += ["--lr_scheduler", "constant", "--init", "torch", "--drop_last", "true"]
    flags += ["--workdir", "/tmp/fedem_jax_accuracy", "--quiet", *more, *args.extra]
    return resolve(flags)


def accuracy_rows(session) -> dict[int, list[float]]:
    """Test accuracy per round of each run (run 0 for a single run), the session stepped to the end."""
    curves: dict[int, list[float]] = {}
    for row in session.rounds(eval_every=1):
        curves.setdefault(row.get("run", 0), []).append(row["test_accuracy"])
    return curves


def draw_start(args, data, seed: int):
    """One draw of PyTorch's default initialisation (one CNN per component, ``torch.manual_seed
    (seed)``) and a file of the same weights in fedem_jax's layout for ``--init_from``."""
    import torch
    from torch_reference import TorchCIFAR10CNN

    n_learners = fedem_jax_config(args, str(seed)).model.n_learners
    torch.manual_seed(seed)
    start = [TorchCIFAR10CNN(data.task.num_classes) for _ in range(n_learners)]
    weights = os.path.join(tempfile.mkdtemp(prefix="fedem_jax_start_"), "start.npz")
    save_components(stacked(start), weights)
    return [learner.state_dict() for learner in start], weights


def load_start(baseline, start) -> None:
    """The baseline's components set to the state dicts ``start``."""
    import torch

    with torch.no_grad():
        for learner, state in zip(baseline.global_learners, start, strict=True):
            learner.load_state_dict(state)


def compare_same_start(args, data, same_batches: bool) -> dict:
    """Both sides from one PyTorch draw; with ``same_batches`` also with fedem_jax's batch order."""
    from torch_reference import fedem_jax_batch_order

    seed = int(args.seeds.split(",")[0])
    start, weights = draw_start(args, data, seed)
    cfg = fedem_jax_config(args, str(seed), ["--init_from", weights])
    session = fedem_jax.Session(cfg, data).compile()
    order = None
    if same_batches:
        order = fedem_jax_batch_order(seed, np.asarray(data.train.counts), cfg.training.batch_size)
    baseline = make_reference(cfg, data, seed=seed, batch_order=order)
    load_start(baseline, start)
    test_sets = reference_datasets(cfg, data.test)
    ours, theirs = [session.evaluate()["test_accuracy"]], [baseline.evaluate(test_sets)]
    to_update, to_params = [], []
    before = stacked(baseline.global_learners)
    for r in range(1, args.rounds + 1):
        session.step()
        ours.append(session.evaluate()["test_accuracy"])
        baseline.run_round()
        theirs.append(baseline.evaluate(test_sets))
        after = stacked(baseline.global_learners)
        params = {k: {p: np.asarray(v) for p, v in ps.items()} for k, ps in session.state.params.items()}
        update, parameters = distances(params, after, before)
        to_update.append(update)
        to_params.append(parameters)
        before = after
        print(f"round {r}: fedem_jax {100 * ours[-1]:.2f}  reference-style {100 * theirs[-1]:.2f}  "
              f"distance/update {update:.2e}  distance/parameters {parameters:.2e}", flush=True)  # fmt: skip
    return {
        "fedem_jax": [ours], "reference_style": [theirs],
        "distance_to_update": to_update, "distance_to_parameters": to_params,
    }  # fmt: skip


def reference_curves(cfg, data, seeds, rounds, threads=None, start=None) -> list[list[float]]:
    """Test accuracy per round of the reference-style baseline, one run per seed (each from the
    state dicts ``start`` if given, else from its seed's draw)."""
    curves = []
    test_sets = reference_datasets(cfg, data.test)
    for seed in seeds:
        baseline = make_reference(cfg, data, seed=seed, threads=threads)
        if start is not None:
            load_start(baseline, start)
        curve = [baseline.evaluate(test_sets)]
        for _ in range(rounds):
            baseline.run_round()
            curve.append(baseline.evaluate(test_sets))
        print(f"reference-style seed {seed}: {[round(100 * a, 1) for a in curve]}", flush=True)
        curves.append(curve)
    return curves


def compare_seeds(args, data, same_start: bool = False) -> dict:
    """Each side its own draws, one run per seed (fedem_jax's as one sweep); with ``same_start``
    every run of both sides from the first seed's draw, so only the batch orders differ. With
    ``--sides_in_parallel`` the baseline's runs go in a second process (half the cores) while
    fedem_jax's sweep runs."""
    seeds = [int(s) for s in args.seeds.split(",")]
    start, more = None, []
    if same_start:
        start, weights = draw_start(args, data, seeds[0])
        more = ["--init_from", weights]
    cfg = fedem_jax_config(args, args.seeds, more)
    baseline = (cfg, data, seeds, args.rounds)
    if not args.sides_in_parallel:
        ours = run_sweep(cfg, data)
        return {"fedem_jax": ours, "reference_style": reference_curves(*baseline, start=start)}
    spawn = multiprocessing.get_context("spawn")  # a fork of a process running XLA is unsafe
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        threads = max(1, (os.cpu_count() or 2) // 2)
        theirs = pool.submit(reference_curves, *baseline, threads, start)
        ours = run_sweep(cfg, data)
        return {"fedem_jax": ours, "reference_style": theirs.result()}


def run_sweep(cfg, data) -> list[list[float]]:
    curves = accuracy_rows(fedem_jax.Session(cfg, data))
    print(f"fedem_jax: {len(curves)} runs done", flush=True)
    return [curves[i] for i in sorted(curves)]


def band(curves) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation per round, in points (std 0 for one curve)."""
    points = 100 * np.asarray(curves)
    return points.mean(0), (points.std(0, ddof=1) if len(points) > 1 else np.zeros(points.shape[1]))


def table(result: dict) -> list[str]:
    (m_ours, s_ours), (m_theirs, s_theirs) = band(result["fedem_jax"]), band(result["reference_style"])
    cell = (lambda m, s: f"{m:.1f} ± {s:.1f}") if len(result["fedem_jax"]) > 1 else (lambda m, s: f"{m:.2f}")
    lines = ["| round | " + " | ".join(str(r) for r in range(len(m_ours))) + " |"]
    lines.append("|---|" + "---|" * len(m_ours))
    lines.append("| reference-style (PyTorch) | " + " | ".join(map(cell, m_theirs, s_theirs)) + " |")
    lines.append("| fedem_jax | " + " | ".join(map(cell, m_ours, s_ours)) + " |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--compare", choices=["same_batches", "same_start", "batch_orders", "seeds"], default="same_batches"
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seeds", default="0", help="comma-separated; same_* use the first")
    parser.add_argument(
        "--sides_in_parallel", action="store_true",
        help="seeds, batch_orders: the baseline's runs in a second process beside fedem_jax's sweep",
    )  # fmt: skip
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more fedem_jax flags")
    args = parser.parse_args()
    if args.sides_in_parallel and args.compare.startswith("same_"):
        parser.error("--sides_in_parallel: only with --compare seeds or batch_orders")
    data = first_clients(load_dataset(fedem_jax_config(args, "0")), args.clients)
    print(data.summary(), flush=True)
    t0 = time.perf_counter()
    if args.compare in ("seeds", "batch_orders"):
        result = compare_seeds(args, data, same_start=args.compare == "batch_orders")
    else:
        result = compare_same_start(args, data, same_batches=args.compare == "same_batches")
    (m_ours, s_ours), (m_theirs, s_theirs) = band(result["fedem_jax"]), band(result["reference_style"])
    gaps = np.abs(m_ours - m_theirs)
    result.update(
        command="python benchmarks/compare_accuracy.py " + " ".join(sys.argv[1:]),
        data=data.summary(),
        mean_gap_points=gaps.tolist(),
        largest_gap_points=float(gaps.max()),
        seconds=time.perf_counter() - t0,
        table=table(result),
    )
    print("\n".join(result["table"]))
    print(f"largest gap of the means: {gaps.max():.2f} points (round {int(np.argmax(gaps))})")
    if args.compare in ("seeds", "batch_orders"):
        overlap = (np.abs(m_ours - m_theirs) <= s_ours + s_theirs).tolist()
        result["bands_overlap"] = overlap
        print(f"mean ± std bands overlap at {sum(overlap)} of {len(overlap)} rounds")
    if "distance_to_update" in result:
        print(f"largest parameter distance / update: {max(result['distance_to_update']):.2e}, "
              f"/ parameters: {max(result['distance_to_parameters']):.2e}")  # fmt: skip
    print(f"wrote {write_result('compare_accuracy_' + args.compare, result)}")


if __name__ == "__main__":
    main()
