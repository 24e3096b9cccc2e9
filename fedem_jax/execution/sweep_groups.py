"""A sweep on CPU with its runs cut into groups executed at once, one thread per core.

One compiled XLA:CPU program of a synthetic round gains little from a second core, even with ten
runs vmapped: its operations are small and mostly run one after another. Two programs executed
at once from two threads keep both cores working (1.8-1.9x per round on 2 cores). So on CPU a
sweep's runs are cut into ``n_groups`` groups of (nearly) equal size; a group's round (and its
evaluation) is one compiled program taking the group's settings as an argument, so equal groups
share it. Every call splits the stacked state into the groups, runs them at once, one thread
each, and joins the results, so checkpoints and outputs see one state
(``benchmarks/sweep_throughput.py``, docs/guide/sweeps.md). A conv net's round already fills the
cores: it keeps one group.

Each run's arithmetic is the same whichever group it is in, so the results do not depend on the
number of groups beyond float rounding (a vmap of 5 runs instead of 10).
"""

from __future__ import annotations

import concurrent.futures
import os
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp

CGROUP_V2 = "/sys/fs/cgroup/cpu.max"  # "<quota> <period>" or "max <period>"
CGROUP_V1 = "/sys/fs/cgroup/cpu"  # cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us


def usable_cores() -> int:
    """CPU cores this process may run on: its CPU affinity, capped by a container's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, int(quota))) if quota else cores


def cgroup_cpu_quota(v2: str = CGROUP_V2, v1: str = CGROUP_V1) -> float | None:
    """CPUs a container's quota allows (cgroup v2, else v1), or None: no quota, or none readable."""
    try:
        with open(v2) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(v1, "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(v1, "cpu.cfs_period_us")) as f:
            period = int(f.read())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def group_count(requested: int, n_runs: int, one_run_fills_the_cores: bool = False) -> int:
    """``--parallel_runs``: groups of runs executed at once; 0 picks one per CPU core on CPU
    and 1 elsewhere (one accelerator runs one program at a time), or where one run's program
    already keeps the cores busy (a conv net on CPU: two groups at once were 0.86x of one)."""
    if requested > 0:
        return min(requested, n_runs)
    if jax.default_backend() != "cpu" or one_run_fills_the_cores:
        return 1
    return min(n_runs, usable_cores())


def group_bounds(n_runs: int, n_groups: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` of ``n_groups`` consecutive groups whose sizes differ by at most one."""
    cuts = [n_runs * g // n_groups for g in range(n_groups + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


class SweepGroups:
    """A sweep's functions of ``(values, states, *args)`` (``values``: the swept settings ``[R]``,
    every leaf of ``states`` and of the results with a leading runs axis), run as groups at once.

    ``round_fn(values, states, train) -> (states, metrics)``;
    ``evaluate_fn(values, states, train, splits) -> [per-client stats of each split]``.
    """

    def __init__(self, values: dict, n_groups: int, round_fn: Callable, evaluate_fn: Callable):
        self.round_fn = round_fn
        self.bounds = group_bounds(len(next(iter(values.values()))), n_groups)
        self.values = [_take(values, start, stop) for start, stop in self.bounds]
        bounds = self.bounds
        self._split = jax.jit(lambda tree: [_take(tree, start, stop) for start, stop in bounds])
        self._join = jax.jit(lambda parts: jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *parts))
        self._pool = concurrent.futures.ThreadPoolExecutor(n_groups, thread_name_prefix="run-group")
        self._evaluate_jit = jax.jit(evaluate_fn)  # compiled at its first call, per group size

    @property
    def sizes(self) -> list[int]:
        return [stop - start for start, stop in self.bounds]

    def map(self, call: Callable, states, *args):
        """``call(values, states, *args)`` of every group at once, joined on the runs axis."""
        parts = self._split(states)
        futures = [
            self._pool.submit(_finished, call, values, part, *args)
            for values, part in zip(self.values, parts, strict=True)
        ]
        return self._join([future.result() for future in futures])

    def evaluate(self, states, train, splits) -> list:
        """``evaluate_fn`` of every group at once, joined."""
        return self.map(self._evaluate_jit, states, train, splits)

    def compile_round(self, states, train) -> CompiledRound:
        """The round compiled once per distinct group size (at most two), each group's state
        donated; nothing runs. (Compiling the two sizes at once in two threads was no faster on
        2 cores: 5.6-6.5 s against 6.1-6.4 s for a 5-seed synthetic sweep.)"""
        round_jit = jax.jit(self.round_fn, donate_argnums=1)
        programs = {}
        for values, (start, stop) in zip(self.values, self.bounds, strict=True):
            if stop - start not in programs:
                programs[stop - start] = round_jit.lower(values, _take(states, start, stop), train).compile()
        return CompiledRound(self, programs)

    def __del__(self):
        self._pool.shutdown(wait=False)


class CompiledRound:
    """A sweep's compiled round: ``(states, train) -> (states, metrics)``, the groups run at once."""

    def __init__(self, groups: SweepGroups, programs: dict):
        self.groups, self.programs = groups, programs

    def __call__(self, states, train):
        return self.groups.map(self._run_group, states, train)

    def _run_group(self, values, states, train):
        return self.programs[len(next(iter(values.values())))](values, states, train)

    def memory_analysis(self):
        """The groups' buffers together (they are all live at once), for ``memory.check_compiled``."""
        analyses = [self.programs[size].memory_analysis() for size in self.groups.sizes]
        if any(a is None for a in analyses):
            return None
        fields = (
            "argument_size_in_bytes",
            "temp_size_in_bytes",
            "output_size_in_bytes",
            "alias_size_in_bytes",
        )
        return types.SimpleNamespace(**{f: sum(getattr(a, f) for a in analyses) for f in fields})


def _finished(call, *args):
    """``call(*args)`` with its results computed (the thread waits for its own program)."""
    return jax.block_until_ready(call(*args))


def _take(tree, start: int, stop: int):
    return jax.tree.map(lambda leaf: leaf[start:stop], tree)
