"""Many runs of one experiment as one compiled program: a leading ``runs`` axis on the state.

``--seeds 1,2,3`` or a list for a scalar setting (``--lr 0.01,0.03``, ``--mu 0.01,0.1``; see
``config.sweepable_flags``) makes a sweep: the grid of every list (``Config.runs()``). The state
of every run is stacked on a leading axis and one round of all of them is one jitted function:
each run's algorithm is built *inside* the trace from a config whose swept settings are that
run's traced scalars, so what a setting changes (initialisation and sampling keys, learning rate,
momentum, a method's coefficient) is computed per run while the data is loaded, placed and
compiled once. The client split stays the ``--data_seed``'s. Runs are processed ``runs_per_chunk``
at a time (``lax.map`` with a batch size: vmapped within a chunk, a loop over chunks), chosen from
an estimate of their memory; on CPU they are also cut into ``--parallel_runs`` groups executed at
once, one thread per core (:mod:`fedem_jax.execution.sweep_groups`).

A config without lists is not a sweep and runs exactly as before (no runs axis).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from fedem_jax.algorithms.base import Algorithm
from fedem_jax.data import FederatedData
from fedem_jax.errors import ConfigError
from fedem_jax.execution import memory, sweep_groups
from fedem_jax.models import CONV_MODELS
from fedem_jax.settings.schema import SECTIONS, Config, flag_name
from fedem_jax.training.experiment import Experiment, build, stats_of_splits

STATE_COPIES = 4  # peak working copies of one run's state in a round (in, out, local copies, grads)


def _field_of(flag: str) -> tuple[str, str]:
    """``(section, field)`` of a flag of the config's sections, or ``("hyperparams", flag)``."""
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            if flag_name(field) == flag:
                return section, field.name
    return "hyperparams", flag


def traced_config(cfg: Config, values: dict) -> Config:
    """``cfg`` with each swept setting replaced by its (traced) value for one run; not validated
    (every value was validated when the config was made)."""
    changes: dict[str, dict] = {}
    for flag, value in values.items():
        section, name = _field_of(flag)
        changes.setdefault(section, {})[name] = value
    parts = {
        section: dataclasses.replace(getattr(cfg, section), **fields) for section, fields in changes.items()
    }
    return dataclasses.replace(cfg, sweep=(), **parts)


def pin_layout(cfg: Config, layout) -> Config:
    """``cfg`` with the automatic layout settings replaced by those ``layout`` resolved to, so
    that every run's traced build uses the layout decided once (on GPU/TPU from free memory,
    which the state allocated since then would change) without estimating it again."""
    pinned = dataclasses.replace(
        cfg.layout,
        client_chunk=layout.client_chunk,
        learner_vmap=int(layout.learner_vmap),
        micro_batch=layout.micro_batch,
    )
    return dataclasses.replace(cfg, layout=pinned)


def run_values(cfg: Config) -> dict[str, np.ndarray]:
    """``{flag: [R] array}``: every run's value of each swept setting (ints stay int32)."""
    runs = cfg.runs()
    values = {}
    for flag, _ in cfg.sweep:
        column = [run[flag] for run in runs]
        kind = np.int32 if all(isinstance(v, int) for v in column) else np.float32
        values[flag] = np.asarray(column, kind)
    return values


def choose_runs_per_chunk(n_runs: int, per_run: int, requested: int, free=None, groups: int = 1):
    """Runs vmapped together: ``requested`` if set, else as many as fit in 80 % of the free
    memory at ``per_run`` bytes each (:func:`run_bytes`; a rough model, the data is shared), the
    memory shared by ``groups`` groups of runs executed at once (``execution.sweep_groups``)."""
    free = memory.free_bytes() if free is None else free
    budget = int(0.8 * (free if free is not None else 8 << 30)) // groups
    in_group = -(-n_runs // groups)
    if requested > 0:
        chosen = min(requested, in_group)
        why = "--runs_per_chunk"
    else:
        chosen = max(1, min(in_group, budget // max(per_run, 1)))
        why = "memory estimate"
    at_once, usable = "", f"{budget / 2**30:.1f} GiB usable"
    if groups > 1:
        at_once = f"{n_runs} runs in {groups} groups at once (one thread each), "
        usable += " per group"
    note = (
        f"{at_once}{chosen} of {in_group} runs per vmapped chunk ({why}: about "
        f"{per_run / 2**20:.1f} MiB per run, {usable})"
    )
    return chosen, note


def run_bytes(one_state, info: dict, n_clients: int) -> int:
    """One run's working memory: ``STATE_COPIES`` copies of its state, and on GPU/TPU the
    training steps of the clients it vmaps (``experiment.fit_clients_to_memory``)."""
    clients_at_once = info["client_chunk"] or n_clients
    return STATE_COPIES * memory.tree_bytes(one_state) + info.get("client_step_bytes", 0) * clients_at_once


# With clients one at a time and at most this share sampled, a sweep loops its runs rather than
# vmapping them (benchmarks/sweep_throughput.py --looped: rounds 2.4x faster at 0.1, 1.4x at 0.5).
LOOP_RUNS_BELOW_RATE = 0.5


def build_sweep(cfg: Config, data: FederatedData) -> Experiment:
    """An :class:`Experiment` whose algorithm works on states with a leading ``runs`` axis; on CPU
    its round and evaluation run groups of runs at once (``execution.sweep_groups``)."""
    if cfg.layout.n_devices > 1 or (cfg.layout.n_devices == 0 and jax.device_count() > 1):
        raise ConfigError("a sweep (lists or --seeds) runs on one device: add --n_devices 1")
    base = build(cfg, data)
    cfg = pin_layout(cfg, base.layout)
    values = {k: jnp.asarray(v) for k, v in run_values(cfg).items()}
    n_runs = len(cfg.runs())
    can_vmap = cfg.method_info.capabilities.sweep_vmap

    def raw_for(run, vmapped=True):
        return build(traced_config(cfg, run), data, runs_vmapped=vmapped).raw

    one_state = jax.eval_shape(lambda: raw_for(jax.tree.map(lambda v: v[0], values)).init(data))
    requested = cfg.layout.runs_per_chunk if can_vmap else 1
    conv_on_cpu = jax.default_backend() == "cpu" and base.info["model"] in CONV_MODELS
    # Clients one at a time skip those not sampled (a cond); vmapped runs compute every client's
    # update (who takes part differs between runs), 1 / sampling_rate the work. Cohort rounds
    # compute only the sampled clients either way.
    sampled_one_by_one = (
        base.layout.client_chunk == 1
        and cfg.training.sampling_rate <= LOOP_RUNS_BELOW_RATE
        and not cfg.training.cohort
    )
    if requested == 0 and (conv_on_cpu or sampled_one_by_one):  # measured: conv nets on CPU, 0.56x
        requested = 1
    groups = sweep_groups.group_count(cfg.layout.parallel_runs, n_runs, one_run_fills_the_cores=conv_on_cpu)
    per_run = run_bytes(one_state, base.info, data.n_clients)
    chunk, note = choose_runs_per_chunk(n_runs, per_run, requested, groups=groups)
    if not can_vmap:
        note += f"; {cfg.method} branches per run, so its runs are looped, not vmapped"
    elif conv_on_cpu and not cfg.layout.runs_per_chunk:
        note += "; a conv net on CPU: runs looped (benchmarks/sweep_throughput.py measured vmapping slower)"
    elif sampled_one_by_one and not cfg.layout.runs_per_chunk:
        note += "; clients sampled one at a time: runs looped, so each skips its unsampled clients"
    vmapped = chunk > 1

    def over_runs(name):
        """``(values, states, *args)``: the algorithm's ``name`` for every run of ``values``."""

        def fn(values, states, *args):
            def one(run_and_state):
                run, state = run_and_state
                return getattr(raw_for(run, vmapped), name)(state, *args)

            return map_runs(one, (values, states))

        return fn

    def map_runs(fn, xs):
        """``fn`` over the runs: vmapped ``chunk`` at a time, or a plain loop for chunks of one
        (a vmap of size one would still turn a ``cond`` into a ``select``)."""
        return jax.lax.map(fn, xs) if chunk == 1 else jax.lax.map(fn, xs, batch_size=chunk)

    def init(data):
        return jax.vmap(lambda run: raw_for(run).init(data))(values)

    def algorithm_of(values) -> Algorithm:
        """The algorithm of the runs of ``values`` (all of them, or one group's)."""
        return Algorithm(
            init=init,
            round=functools.partial(over_runs("round"), values),
            evaluate=functools.partial(over_runs("evaluate"), values),
            prepare_eval=functools.partial(over_runs("prepare_eval"), values),
            evaluate_unseen=(
                functools.partial(over_runs("evaluate_unseen"), values)
                if base.raw.evaluate_unseen is not None
                else None
            ),
        )

    algorithm = algorithm_of(values)
    grouped = None
    if groups > 1:
        grouped = sweep_groups.SweepGroups(
            values,
            groups,
            round_fn=over_runs("round"),
            evaluate_fn=lambda values, *args: stats_of_splits(algorithm_of(values), *args),
        )
    info = {**base.info, "runs": n_runs, "runs_per_chunk": chunk, "parallel_runs": groups, "runs_note": note}
    return dataclasses.replace(
        base, algorithm=algorithm, raw=algorithm, info=info, runs=cfg.runs(), sweep_groups=grouped
    )


def summarize_runs(history: list[dict], runs: list[dict], diverged: dict[int, int], cfg: Config) -> dict:
    """A sweep's summary: every metric of the last evaluation as its mean over the runs that did not
    diverge, ``<metric>_std`` (sample standard deviation), the per-run list, and for a grid of
    settings the ``best`` one by ``--select_metric`` on the evaluation split, averaged over seeds."""
    flags = [flag for flag, _ in cfg.sweep]
    finals = {row["run"]: row for row in history}  # rows are in round order: the last one wins
    alive = [i for i in range(len(runs)) if i not in diverged]
    skip = {"round", "run", *flags, "seconds_per_round", "eval_seconds"}
    keys = [k for k, v in finals[alive[0]].items() if k not in skip and isinstance(v, int | float)]
    summary: dict = {}
    for key in keys:
        values = np.array([finals[i][key] for i in alive], np.float64)
        summary[key] = float(values.mean())
        summary[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    summary["n_runs"], summary["n_diverged"] = len(runs), len(diverged)
    summary["runs"] = [
        {
            "run": i,
            **runs[i],
            **({"diverged_at": diverged[i]} if i in diverged else {k: finals[i][k] for k in keys}),
        }
        for i in range(len(runs))
    ]
    best = best_setting(finals, runs, alive, cfg)
    if best is not None:
        summary["best"] = best
    return summary


def best_setting(finals: dict, runs: list[dict], alive: list[int], cfg: Config) -> dict | None:
    """The setting (seeds averaged) with the best ``--select_metric`` on the evaluation split."""
    grid_flags = [flag for flag, _ in cfg.sweep if flag != "seed"]
    if not grid_flags:
        return None
    split = "val" if cfg.output.validation else "test"
    metric = f"{split}_{cfg.output.select_metric}"
    groups: dict[tuple, list[float]] = {}
    for i in alive:
        groups.setdefault(tuple(runs[i][f] for f in grid_flags), []).append(finals[i][metric])
    means = {setting: float(np.mean(values)) for setting, values in groups.items()}
    pick = min if cfg.output.select_metric == "loss" else max
    setting = pick(means, key=means.get)
    best = {"by": metric, "value": means[setting], **dict(zip(grid_flags, setting, strict=True))}
    if not cfg.output.validation:
        best["note"] = "chosen on the test split; tune with --validation --val_frac F instead"
    return best
