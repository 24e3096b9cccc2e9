"""A sweep's round on CPU with its runs cut into groups executed at once, one thread per core.

One compiled XLA:CPU program of a synthetic round gains little from a second core, even with ten
runs vmapped: its operations are small and mostly run one after another. Two programs executed
at once from two threads keep both cores working (1.8x per round on 2 cores). So on CPU a
sweep's runs are cut into ``n_groups`` groups of (nearly) equal size; each group's round is one
compiled program (the runs' settings are its argument, so equal groups share it) and every round
runs the groups at once, one thread each, then joins their states
(``benchmarks/sweep_throughput.py``, README). A conv net's round already fills the cores: it
keeps one group.

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


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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


class GroupedRound:
    """``fn(values, states, train) -> (states, metrics)`` (every leaf with a leading runs axis) run
    as groups at once. :meth:`compile` gives the callable the experiment loop uses in place of a
    compiled round."""

    def __init__(self, fn: Callable, values: dict, n_groups: int):
        self.fn, self.values = fn, values
        self.bounds = group_bounds(len(next(iter(values.values()))), n_groups)

    def compile(self, states, train) -> CompiledGroups:
        """One compiled program per distinct group size; nothing runs."""
        round_jit = jax.jit(self.fn, donate_argnums=1)
        programs = {}
        for start, stop in self.bounds:
            if stop - start not in programs:
                group_values, group_states = _take((self.values, states), start, stop)
                programs[stop - start] = round_jit.lower(group_values, group_states, train).compile()
        return CompiledGroups(self, programs)


class CompiledGroups:
    """A sweep's compiled round: ``(states, train) -> (states, metrics)``, the groups run at once."""

    def __init__(self, grouped: GroupedRound, programs: dict):
        self.grouped, self.programs = grouped, programs
        bounds = grouped.bounds
        self._split = jax.jit(lambda tree: [_take(tree, start, stop) for start, stop in bounds])
        self._join = jax.jit(lambda parts: jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *parts))
        self._group_values = [_take(grouped.values, start, stop) for start, stop in bounds]
        self._pool = concurrent.futures.ThreadPoolExecutor(len(bounds), thread_name_prefix="run-group")

    def __call__(self, states, train):
        parts = self._split(states)
        futures = [
            self._pool.submit(self._run_group, values, part, train)
            for values, part in zip(self._group_values, parts, strict=True)
        ]
        return self._join([future.result() for future in futures])

    def _run_group(self, values, states, train):
        program = self.programs[len(next(iter(values.values())))]
        return jax.block_until_ready(program(values, states, train))

    def memory_analysis(self):
        """The groups' buffers together (they are all live at once), for ``memory.check_compiled``."""
        analyses = [self.programs[stop - start].memory_analysis() for start, stop in self.grouped.bounds]
        if any(a is None for a in analyses):
            return None
        fields = ("temp_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes")
        return types.SimpleNamespace(**{f: sum(getattr(a, f) for a in analyses) for f in fields})

    def __del__(self):
        self._pool.shutdown(wait=False)


def _take(tree, start: int, stop: int):
    return jax.tree.map(lambda leaf: leaf[start:stop], tree)
