"""Shared timing of fedem_jax rounds for the benchmark scripts."""

from __future__ import annotations

import json
import os
import statistics
import time

import jax

from fedem_jax.training.session import build_experiment

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def time_rounds(cfg, data, rounds: int) -> dict:
    """Compile the round (timed apart), run one warm-up round, then time ``rounds`` rounds with
    ``jax.block_until_ready``; returns the median seconds per round, the compile time and layout."""
    experiment, data, state = build_experiment(cfg, data)
    algorithm = experiment.algorithm
    t0 = time.perf_counter()
    compiled = jax.jit(algorithm.round, donate_argnums=0).lower(state, data.train).compile()
    compile_seconds = time.perf_counter() - t0
    state, _ = compiled(state, data.train)
    jax.block_until_ready(state)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        state, metrics = compiled(state, data.train)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    return {
        "seconds_per_round": statistics.median(times),
        "compile_seconds": compile_seconds,
        "rounds": rounds,
        "layout": experiment.info,
    }


def write_result(name: str, payload: dict) -> str:
    """Write ``benchmarks/results/<name>.json``; returns the path."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return path
