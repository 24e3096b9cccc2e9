"""Wiring: build an experiment's model, client update, layout and algorithm once from its config.

The loop (:mod:`fedem_jax.training.loop`) only runs what this module builds; neither knows method names:
the method comes from the registry (:mod:`fedem_jax.algorithms.registry`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import optax

from fedem_jax.algorithms.base import Algorithm, Context, n_sampled_clients, state_specs
from fedem_jax.core.client_update import ClientUpdate
from fedem_jax.core.optim import lr_schedule, make_direction
from fedem_jax.data import FederatedData
from fedem_jax.data.registry import DATASETS
from fedem_jax.data.sharding import client_mesh
from fedem_jax.errors import ConfigError
from fedem_jax.execution import memory
from fedem_jax.execution.cohort import cohort_capacity, cohort_rounds
from fedem_jax.execution.layout import CLIENT_SPEC, REPLICATED, Layout
from fedem_jax.execution.sweep_groups import SweepGroups
from fedem_jax.models import MODELS, STATEFUL_MODELS, TORCH_OWN_INIT, build_model, input_problem
from fedem_jax.models.pretrained import load_weights
from fedem_jax.settings.schema import Config
from fedem_jax.training import accounting

AUTO_MICRO_BATCH = 32


def resolve_layout(cfg: Config, model_name: str) -> tuple[int, bool]:
    """``(client_chunk, learner_vmap)``; ``-1`` picks the measured per-backend default.

    Measured on CPU (``benchmarks/layouts.py``, docs/performance.md): a sequential client loop wins for every
    model, because it really skips the masked steps of small clients; learners are vmapped for
    the linear model and looped for conv nets. On GPU/TPU everything is vmapped.
    """
    on_cpu = jax.default_backend() == "cpu"
    small_model = model_name in MODELS and MODELS[model_name].vmap_learners_on_cpu
    client_chunk = cfg.layout.client_chunk
    if client_chunk == -1:
        client_chunk = 1 if on_cpu else 0
    learner_vmap = cfg.layout.learner_vmap
    if learner_vmap == -1:
        learner_vmap = 0 if (on_cpu and not small_model) else 1
    return client_chunk, bool(learner_vmap)


def resolve_micro_batch(cfg: Config, client_chunk: int, batch_size: int) -> int:
    """``--micro_batch``; auto (-1): 32 when clients run sequentially (only that layout skips the
    unused sub-batches), else off. See ``benchmarks/efficiency.py``."""
    if cfg.layout.micro_batch >= 0:
        return cfg.layout.micro_batch
    return AUTO_MICRO_BATCH if client_chunk == 1 and batch_size > AUTO_MICRO_BATCH else 0


def effective_batch_size(cfg: Config, data: FederatedData) -> int:
    """``--batch_size`` capped at the largest client's train set: a larger batch is all padding
    (still one step per epoch on all of a client's samples, the same update, many times slower)."""
    return max(1, min(cfg.training.batch_size, data.train.max_count))


def resolve_devices(cfg: Config) -> int:
    """Devices to shard the client axis over: ``--n_devices`` (0: all)."""
    available = jax.device_count()
    wanted = available if cfg.layout.n_devices == 0 else cfg.layout.n_devices
    if wanted > available:
        raise ConfigError(
            f"--n_devices {wanted}: only {available} {jax.default_backend()} device(s) available"
        )
    return wanted


def make_layout(
    cfg: Config, model_name: str, n_devices: int = 1, runs_vmapped: bool = False, batch_size: int = 0
) -> Layout:
    client_chunk, learner_vmap = resolve_layout(cfg, model_name)
    return Layout(
        client_chunk=client_chunk,
        learner_vmap=learner_vmap,
        micro_batch=resolve_micro_batch(cfg, client_chunk, batch_size or cfg.training.batch_size),
        mesh=client_mesh(n_devices) if n_devices > 1 else None,
        runs_vmapped=runs_vmapped,
    )


def fit_clients_to_memory(cfg: Config, layout: Layout, model, stateful: bool, data, batch: int):
    """``(layout, info)``: on GPU/TPU with the automatic layout, all clients are vmapped only if
    their training steps fit in memory, else as many as fit at a time (MobileNetV2 on the
    80-client CIFAR-10 split: about 0.5 GiB per learner and client, 118 GiB for all of them).
    ``info``: why, and one client's step in bytes (a sweep counts it per run)."""
    if cfg.layout.client_chunk != -1 or layout.client_chunk != 0 or jax.default_backend() == "cpu":
        return layout, {}
    per_learner = memory.training_step_bytes(model, stateful, data.train.x, batch)
    per_client = per_learner * (cfg.model.n_learners if layout.learner_vmap else 1)
    clients = -(-data.n_clients // layout.n_devices)
    chunk, why = memory.client_chunk_that_fits(per_client, clients, memory.free_bytes())
    fit = {"client_chunk_why": why, "client_step_bytes": per_client}
    return dataclasses.replace(layout, client_chunk=chunk), fit


def make_update(
    cfg: Config, data: FederatedData, model_name: str, layout: Layout, batch_size: int = 0
) -> ClientUpdate:
    """The local training of ``cfg`` (see :class:`fedem_jax.core.client_update.ClientUpdate`);
    ``batch_size`` as in :func:`update_for_model`."""
    model = build_model(model_name, data.task.output_dim, cfg.model.conv_impl)
    # Forward-only passes (E-step, evaluation) use XLA's convolution, the fastest there on
    # every backend; the parameters of both implementations are the same pytree.
    forward_model = build_model(model_name, data.task.output_dim, "xla")
    stateful = model_name in STATEFUL_MODELS
    return update_for_model(cfg, data.task, model, layout, forward_model, stateful, batch_size)


def update_for_model(
    cfg: Config, task, model, layout: Layout, forward_model=None, stateful=False, batch_size=0
) -> ClientUpdate:
    """The :class:`ClientUpdate` of ``cfg`` with any flax ``model`` (``stateful``: it has
    BatchNorm statistics and takes ``train=`` and the batch's sample ``mask=``);
    ``forward_model`` computes the same function for forward-only passes (default: ``model``);
    ``batch_size``: the one to use, if not ``--batch_size`` (see :func:`effective_batch_size`)."""
    forward_model = forward_model or model
    direction = make_direction(cfg.training.optimizer, cfg.training.momentum, cfg.training.weight_decay)
    if stateful:  # BatchNorm statistics: no gradient step, no decay; replaced after each step

        def apply_fn(variables, x, mask):
            return model.apply(variables, x, train=True, mask=mask, mutable=["batch_stats"])

        def forward_fn(variables, x):
            return model.apply(variables, x, train=False)

        direction = optax.masked(direction, lambda v: {"params": True, "batch_stats": False})
    else:

        def apply_fn(params, x):
            return model.apply({"params": params}, x)

        def forward_fn(params, x):
            return forward_model.apply({"params": params}, x)

    return ClientUpdate(
        apply_fn=apply_fn,
        forward_fn=forward_fn,
        stateful=stateful,
        per_sample_loss=task.per_sample_loss,
        direction=direction,
        schedule=lr_schedule(cfg.training.lr_scheduler, cfg.training.lr, cfg.training.n_rounds),
        batch_size=batch_size or cfg.training.batch_size,
        local_epochs=cfg.training.local_epochs,
        drop_last=cfg.training.drop_last,
        layout=layout,
        fresh_opt=cfg.training.client_momentum == "fresh",
    )


def on_layout(algorithm: Algorithm, layout: Layout) -> Algorithm:
    """``algorithm`` whose round and evaluation run over the layout's mesh: client fields of the
    state and the data sharded, the rest replicated (a no-op without a mesh)."""
    if layout.mesh is None:
        return algorithm

    def round_fn(state, train):
        specs = state_specs(state)

        def block(state, train):
            new, metrics = algorithm.round(state, train)
            participants = metrics.pop("participants")
            return new, metrics, participants

        run = layout.shard(block, (specs, CLIENT_SPEC), (specs, REPLICATED, CLIENT_SPEC))
        new, metrics, participants = run(state, train)
        return new, {**metrics, "participants": participants}

    def evaluate(state, split):
        return layout.shard(algorithm.evaluate, (state_specs(state), CLIENT_SPEC), CLIENT_SPEC)(state, split)

    return algorithm._replace(round=round_fn, evaluate=evaluate)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What :func:`build` makes: the algorithm (on its layout), the layout and a description."""

    model: object
    ctx: Context  # what the method's factory was given
    algorithm: Algorithm  # round and evaluate already run over the layout's mesh
    raw: Algorithm  # the method's functions for one block of clients
    layout: Layout
    info: dict  # model, layout and devices, for the start-up line and summary.json
    runs: list[dict] | None = None  # a sweep's settings per run: the state has a leading runs axis
    sweep_groups: SweepGroups | None = None  # a sweep on CPU: its runs in groups at once

    def compile_round(self, state, train):
        """The round compiled for ``state``: ``(state, train) -> (state, metrics)``, the state donated."""
        if self.sweep_groups is not None:
            return self.sweep_groups.compile_round(state, train)
        return jax.jit(self.algorithm.round, donate_argnums=0).lower(state, train).compile()

    def evaluator(self):
        """:meth:`evaluate_splits`, jitted (compiled at its first call)."""
        return self.sweep_groups.evaluate if self.sweep_groups is not None else jax.jit(self.evaluate_splits)

    def evaluate_splits(self, state, train, splits):
        """Per-client stats of ``splits``; methods that adapt models first (FedAvg+) do it once."""
        splits = list(splits)
        evaluate_all = functools.partial(stats_of_splits, self.raw)
        if self.layout.mesh is None:
            return evaluate_all(state, train, splits)
        specs = (state_specs(state), CLIENT_SPEC, [CLIENT_SPEC] * len(splits))
        return self.layout.shard(evaluate_all, specs, [CLIENT_SPEC] * len(splits))(state, train, splits)


def stats_of_splits(algorithm: Algorithm, state, train, splits) -> list:
    """Per-client stats of each of ``splits`` after the algorithm's ``prepare_eval`` (once)."""
    view = algorithm.prepare_eval(state, train)
    return [algorithm.evaluate(view, split) for split in splits]


def make_context(cfg: Config, data: FederatedData, model, update: ClientUpdate, model_name="") -> Context:
    """What the method's factory is given (the DP noise multiplier calibrated here, once)."""
    # MobileNetV2's own initialisation is already torchvision's (kaiming-normal fan-out convolutions).
    init_scheme = "flax" if model_name in TORCH_OWN_INIT else cfg.model.init
    return Context(
        model=model,
        task=data.task,
        update=update,
        n_learners=cfg.model.n_learners,
        n_clients=data.n_clients,
        sampling_rate=cfg.training.sampling_rate,
        seed=cfg.training.seed,
        data_seed=cfg.data.data_seed,
        eval_chunk=cfg.layout.eval_chunk,
        init_weights=load_weights(cfg.model.init_from) if cfg.model.init_from else None,
        init_from=cfg.model.init_from,
        init_scheme=init_scheme,
        sampling=cfg.training.sampling,
        n_samples=int(np.asarray(data.train.counts).sum()),
        privacy=privacy.mechanism if (privacy := accounting.plan(cfg, data.train.counts)) else None,
    )


def build(cfg: Config, data: FederatedData, n_devices: int = 1, model=None, runs_vmapped=False) -> Experiment:
    """Model, client update, layout and the ``cfg.method`` algorithm on ``data``.

    With ``n_devices > 1`` the algorithm expects data laid out by ``shard_data(data, layout.mesh)``
    and a state placed by :func:`place_state`. ``model``: a flax module of your own instead of
    ``cfg.model``'s (one with BatchNorm takes ``train=`` and ``mask=``, as MobileNetV2 does).
    """
    batch = effective_batch_size(cfg, data)
    if model is None:
        model_name = cfg.model.name or DATASETS[cfg.data.dataset].model_for(data)
        problem = input_problem(model_name, data.train.x.shape[1:], data.task.sequence)
        if problem:  # before anything is compiled
            raise ConfigError(problem)
        model = build_model(model_name, data.task.output_dim, cfg.model.conv_impl)
        layout = make_layout(cfg, model_name, n_devices, runs_vmapped, batch)
        stateful = model_name in STATEFUL_MODELS
        layout, fit = fit_clients_to_memory(cfg, layout, model, stateful, data, batch)
        update = make_update(cfg, data, model_name, layout, batch)
    else:
        model_name = type(model).__name__
        layout = make_layout(cfg, model_name, n_devices, runs_vmapped, batch)
        variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), data.train.x[:1])
        stateful = "batch_stats" in variables
        layout, fit = fit_clients_to_memory(cfg, layout, model, stateful, data, batch)
        update = update_for_model(cfg, data.task, model, layout, stateful=stateful, batch_size=batch)
    ctx = make_context(cfg, data, model, update, model_name)
    if cfg.training.cohort:  # the round is given its cohort: the draw is made before (with ctx)
        if n_devices > 1 and cfg.training.federation == "device":
            raise ConfigError(
                "--cohort runs on one device (or on several with --federation host): add --n_devices 1"
            )
        raw = cfg.method_info.factory(dataclasses.replace(ctx, presampled=True), cfg.hyperparams)
        if cfg.training.federation == "device":  # host: the session gathers the cohorts
            raw = on_cohorts(raw, ctx, data)
    else:
        raw = cfg.method_info.factory(ctx, cfg.hyperparams)
    info = {
        "devices": n_devices,
        "model": model_name,
        "conv_impl": getattr(model, "conv_impl", None),
        "client_chunk": layout.client_chunk,
        "learner_vmap": layout.learner_vmap,
        "batch_size": update.batch_size,
    }
    info.update(fit)
    return Experiment(model, ctx, on_layout(raw, layout), raw, layout, info)


def on_cohorts(algorithm: Algorithm, ctx: Context, data: FederatedData) -> Algorithm:
    """``algorithm`` whose rounds compute only the round's ``K`` sampled clients (``--cohort``)."""
    k = n_sampled_clients(ctx.n_clients, ctx.sampling_rate)
    return cohort_rounds(algorithm, ctx, k, cohort_capacity(np.asarray(data.train.counts), k))
