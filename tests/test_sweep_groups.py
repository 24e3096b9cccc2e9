"""Groups of a sweep's runs executed at once (``fedem_jax.execution.sweep_groups``): the split into
groups, how many, and the grouped round's and evaluation's results, errors and memory, on small
functions."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedem_jax.execution import sweep_groups


def test_groups_cover_the_runs_in_order_with_sizes_one_apart():
    assert sweep_groups.group_bounds(10, 2) == [(0, 5), (5, 10)]
    assert sweep_groups.group_bounds(5, 2) == [(0, 2), (2, 5)]
    assert sweep_groups.group_bounds(3, 3) == [(0, 1), (1, 2), (2, 3)]
    for n_runs in range(1, 12):
        for n_groups in range(1, n_runs + 1):
            bounds = sweep_groups.group_bounds(n_runs, n_groups)
            sizes = [stop - start for start, stop in bounds]
            assert bounds[0][0] == 0 and bounds[-1][1] == n_runs and min(sizes) >= 1
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
            assert max(sizes) - min(sizes) <= 1


def test_group_count(monkeypatch):
    monkeypatch.setattr(sweep_groups, "usable_cores", lambda: 4)
    assert sweep_groups.group_count(0, 10) == 4  # the tests run on CPU
    assert sweep_groups.group_count(0, 3) == 3
    assert sweep_groups.group_count(2, 10) == 2
    assert sweep_groups.group_count(8, 3) == 3
    assert sweep_groups.group_count(0, 10, one_run_fills_the_cores=True) == 1
    assert sweep_groups.group_count(2, 10, one_run_fills_the_cores=True) == 2  # asked for
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert sweep_groups.group_count(0, 10) == 1


def test_a_containers_cpu_quota_caps_the_cores(tmp_path, monkeypatch):
    v2, v1 = tmp_path / "cpu.max", tmp_path / "v1"
    v1.mkdir()
    missing = str(tmp_path / "none")
    v2.write_text("150000 100000\n")
    assert sweep_groups.cgroup_cpu_quota(str(v2), missing) == 1.5
    v2.write_text("max 100000\n")
    assert sweep_groups.cgroup_cpu_quota(str(v2), str(v1)) is None  # v2 says: no quota
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert sweep_groups.cgroup_cpu_quota(missing, str(v1)) == 2.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert sweep_groups.cgroup_cpu_quota(missing, str(v1)) is None
    assert sweep_groups.cgroup_cpu_quota(missing, missing) is None
    monkeypatch.setattr(sweep_groups.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(sweep_groups, "cgroup_cpu_quota", lambda: 2.5)
    assert sweep_groups.usable_cores() == 2
    monkeypatch.setattr(sweep_groups, "cgroup_cpu_quota", lambda: 0.5)
    assert sweep_groups.usable_cores() == 1
    monkeypatch.setattr(sweep_groups, "cgroup_cpu_quota", lambda: None)
    assert sweep_groups.usable_cores() == 16


def _toy_round(values, states, train):
    """Each run: ``state * lr + sum(train)``, and a metric per run."""
    new = {"w": states["w"] * values["lr"][:, None] + train.sum(), "round": states["round"] + 1}
    return new, {"norm": jnp.linalg.norm(new["w"], axis=1)}


def _toy_evaluate(values, states, train, splits):
    """Per run and split: ``lr * sum(w) * split``."""
    return [values["lr"] * states["w"].sum(1) * split.sum() + train.sum() for split in splits]


def _toy_groups(n_runs, n_groups):
    values = {"lr": jnp.arange(1.0, n_runs + 1)}
    states = {"w": jnp.arange(3.0 * n_runs).reshape(n_runs, 3), "round": jnp.zeros(n_runs, jnp.int32)}
    return values, states, sweep_groups.SweepGroups(values, n_groups, _toy_round, _toy_evaluate)


@pytest.mark.parametrize("n_groups", [1, 2, 3])
def test_groups_give_the_whole_round_and_evaluation(n_groups):
    values, states, groups = _toy_groups(5, n_groups)
    train = jnp.ones(4)
    want = jax.jit(_toy_round)(values, states, train)
    compiled = groups.compile_round(states, train)
    assert sorted(compiled.programs) == sorted(set(groups.sizes)) and sum(groups.sizes) == 5
    got = compiled(states, train)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    again = compiled(got[0], train)  # its output is the next round's input (donated)
    jax.tree.map(np.testing.assert_array_equal, again, jax.jit(_toy_round)(values, want[0], train))
    splits = [jnp.ones(2), jnp.arange(3.0)]
    evaluated = groups.evaluate(again[0], train, splits)
    jax.tree.map(np.testing.assert_array_equal, evaluated, _toy_evaluate(values, again[0], train, splits))


def test_an_error_in_a_group_reaches_the_caller():
    _, states, groups = _toy_groups(4, 2)
    compiled = groups.compile_round(states, jnp.ones(1))

    def broken(*_):
        raise RuntimeError("out of memory in group")

    compiled.programs = {2: broken}
    with pytest.raises(RuntimeError, match="out of memory in group"):
        compiled(states, jnp.ones(1))


def test_memory_of_groups_at_once_is_their_sum():
    _, states, groups = _toy_groups(3, 2)
    compiled = groups.compile_round(states, jnp.ones(1))

    def analysed(temp):
        return types.SimpleNamespace(
            memory_analysis=lambda: types.SimpleNamespace(
                argument_size_in_bytes=5,
                temp_size_in_bytes=temp,
                output_size_in_bytes=10,
                alias_size_in_bytes=1,
            )
        )

    compiled.programs = {1: analysed(100), 2: analysed(1000)}  # groups of 1 and 2 runs
    total = compiled.memory_analysis()
    assert (total.temp_size_in_bytes, total.output_size_in_bytes, total.alias_size_in_bytes) == (1100, 20, 2)
    assert total.argument_size_in_bytes == 10


def test_groups_at_once_share_the_memory_for_runs_per_chunk():
    from fedem_jax.training.sweep import choose_runs_per_chunk

    assert choose_runs_per_chunk(10, per_run=100, requested=0, free=1000)[0] == 8  # 80 % of 1000
    chosen, note = choose_runs_per_chunk(10, per_run=100, requested=0, free=1000, groups=2)
    assert chosen == 4 and note.startswith("10 runs in 2 groups at once")  # 400 bytes per group
    assert choose_runs_per_chunk(10, per_run=100, requested=0, free=10**6, groups=2)[0] == 5  # a group
    assert choose_runs_per_chunk(10, per_run=100, requested=8, free=10**6, groups=2)[0] == 5
