"""Experiment settings: frozen dataclasses in sections, built from flat settings by
:func:`make_config` (the checks of every value are in :mod:`fedem_jax.settings.checks`).

Resolution order: dataclass defaults < ``configs/<dataset>.py`` (the paper's hyperparameters,
:mod:`fedem_jax.settings.presets`) < settings given explicitly (flags, or keyword arguments of
``fedem_jax.config``). Every invalid value raises :class:`ConfigError` with a one-line message
naming the flag and its allowed range; ``main`` turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

from fedem_jax.algorithms import registry
from fedem_jax.errors import check
from fedem_jax.settings.checks import validate


def setting(default, help: str, flag: str = ""):  # noqa: A002 - the CLI's word
    """A configuration field: its default, its ``--help`` text and (if not its name) its flag."""
    metadata = {"help": help, "flag": flag} if flag else {"help": help}
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag", field.name)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data, how it is split into clients and into train / validation / test."""

    dataset: str = setting("synthetic", "dataset (each has presets: the paper's hyperparameters)")
    data_dir: str = setting("", "TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    data_path: str = setting(
        "",
        "npz: a .npz file or folder of them; femnist/shakespeare: LEAF JSON file or folder; store: the "
        "folder written by python -m fedem_jax.data.store",
    )
    data_seed: int = setting(12345, "seed of the data generation and client split")
    n_clients: int = setting(300, "number of clients")
    alpha: float = setting(0.4, "Dirichlet concentration")
    dim: int = setting(150, "synthetic: input dimension")
    synthetic_components: int = setting(3, "synthetic: true number of mixture components")
    noise_std: float = setting(0.1, "synthetic: label noise")
    n_test_per_client: int = setting(5000, "synthetic: test samples per client")
    split: str = setting("", "client split of image datasets (default: the dataset's own)")
    shards_per_client: int = setting(2, "--split shards: label-sorted shards per client")
    classes_per_client: int = setting(2, "--split classes: distinct labels per client")
    data_frac: float = setting(
        1.0, "fraction of the pooled samples (femnist: of the writers) kept, in (0, 1]"
    )
    max_samples: int = setting(0, "use only the first N pooled samples (0: all; for quick runs)")
    remap_labels: bool = setting(False, "npz: map the label ids present to 0..K-1 (for sparse ids)")
    test_frac: float = setting(0.2, "per-client test fraction of real datasets")
    val_frac: float = setting(0.0, "fraction of each client's train split held out for validation")
    test_clients_frac: float = setting(0.0, "fraction of clients held out of training (unseen clients)")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model of one component and how many components there are."""

    name: str = setting("", "model (default: the dataset's own)", flag="model")
    n_learners: int = setting(3, "mixture components M (FedAvg: 1)")
    init: str = setting(
        "flax", "initialisation: flax (lecun normal, zero biases) or torch (PyTorch's defaults)"
    )
    init_from: str = setting(
        "",
        "start the components from the weights in a local torchvision .pth, .npz or flax msgpack file: "
        "one set for all, or one per component stacked on a leading axis of size M",
    )
    conv_impl: str = setting(
        "", "convolution for training: xla or matmul (default: matmul on CPU and for mobilenet_v2)"
    )


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Rounds, client sampling and the local optimizer (spec section 3)."""

    n_rounds: int = setting(200, "communication rounds (exactly this many)")
    sampling_rate: float = setting(1.0, "fraction of clients sampled per round, in (0, 1]")
    sampling: str = setting(
        "fixed",
        "client sampling: fixed (exactly round(rate x N) clients a round) or poisson (each client "
        "independently with probability --sampling_rate, as DP accounting assumes)",
    )
    cohort: bool = setting(
        False,
        "a round computes only its sampled clients, gathered into [K, ...] arrays (--sampling_rate < 1, "
        "fixed sampling, one device): its cost follows K, not the federation",
    )
    federation: str = setting(
        "device",
        "where the federation's data and per-client state live: device (all of it) or host (host memory, "
        "or disk with --dataset store; each round's cohort is moved to the device: needs --cohort)",
    )
    local_epochs: int = setting(1, "local epochs per round")
    batch_size: int = setting(
        128, "local minibatch size (capped at the largest client's train set, saying so)"
    )
    drop_last: bool = setting(
        False, "drop each client's last incomplete batch unless it is its only one (reference: images)"
    )
    optimizer: str = setting(
        "sgd", "local optimizer: sgd (torch semantics: weight decay before momentum) or adam"
    )
    lr: float = setting(0.03, "learning rate")
    lr_scheduler: str = setting(
        "multi_step",
        "learning-rate schedule, stepped once per local epoch on each client's own counter: constant, sqrt, "
        "linear, cosine (period 200), multi_step (x0.1 at n_rounds/2 and 3 n_rounds/4)",
    )
    momentum: float = setting(0.9, "SGD momentum")
    client_momentum: str = setting(
        "persistent",
        "local optimizer state across rounds: persistent (kept per client, as the reference) or fresh "
        "(restarted every round, as in cross-device FL: no per-client copy is stored)",
    )
    weight_decay: float = setting(5e-4, "L2 weight decay")
    seed: int = setting(1234, "training seed (initialisation, client sampling, shuffles)")


@dataclasses.dataclass(frozen=True)
class PrivacyConfig:
    """User-level differential privacy of the shared models (``fedem_jax/core/privacy.py``)."""

    dp_clip: float = setting(
        0.0, "user-level DP: clip each client's update to this L2 norm and add Gaussian noise (0: off)"
    )
    dp_epsilon: float = setting(
        0.0, "DP: target epsilon at --n_rounds; the noise multiplier is calibrated before training"
    )
    dp_delta: float = setting(0.0, "DP: delta (0: 1 / n_clients^1.1)")
    noise_multiplier: float = setting(
        -1.0, "DP: noise standard deviation / sensitivity, instead of --dp_epsilon (epsilon reported)"
    )
    dp_per_component: bool = setting(
        False, "DP: clip each component's update to dp_clip / sqrt(M) (default: all jointly)"
    )
    dp_weighting: str = setting(
        "uniform", "DP: client weights of the average: uniform (1/N) or samples (n_t/n, sizes public)"
    )
    dp_accountant: str = setting("rdp", "DP: accountant of dp-accounting: rdp or pld")
    dp_clip_quantile: float = setting(
        0.0, "DP: adaptive clipping to this quantile of the update norms, e.g. 0.5 (0: --dp_clip fixed)"
    )
    dp_clip_lr: float = setting(0.2, "DP adaptive clipping: the clip's geometric step per round (eta)")
    dp_clip_count_noise: float = setting(
        -1.0, "DP adaptive clipping: noise std on the count of unclipped clients (-1: expected cohort / 20)"
    )


@dataclasses.dataclass(frozen=True)
class LayoutConfig:
    """How the computation is laid out; results do not depend on it up to float rounding."""

    client_chunk: int = setting(
        -1,
        "clients trained together: 0 vmap all, 1 sequential, k chunks of k (-1 auto: 1 on CPU; on GPU/TPU "
        "all, or as many as fit in memory)",
    )
    learner_vmap: int = setting(-1, "1 vmap the M learners, 0 loop over them (-1 auto)")
    micro_batch: int = setting(
        -1, "a client's last partial batch runs as sub-batches of this size (0: off, -1: auto)"
    )
    eval_chunk: int = setting(1024, "samples per forward pass in E-step and evaluation")
    runs_per_chunk: int = setting(0, "sweeps: runs vmapped together (0: from a memory estimate)")
    parallel_runs: int = setting(
        0,
        "sweeps: groups of runs executed at once, one thread each (0: one per usable CPU core on CPU, a "
        "container's CPU quota included, except conv nets; 1 on GPU/TPU)",
    )
    n_devices: int = setting(0, "devices to shard the client axis over (0: all available)")
    distributed: bool = setting(False, "several processes/hosts: call jax.distributed.initialize()")
    coordinator_address: str = setting("", "--distributed: host:port of process 0 (auto on TPU/SLURM/MPI)")
    num_processes: int = setting(0, "--distributed: number of processes (0: auto)")
    process_id: int = setting(-1, "--distributed: this process (-1: auto)")
    distributed_timeout: int = setting(300, "--distributed: seconds to wait for every process to join")


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Evaluation cadence, what is written where, checkpoints."""

    workdir: str = setting("runs/default", "output folder (config, metrics, summary, checkpoints, plots)")
    log_freq: int = setting(5, "evaluate every N rounds (and after the last)")
    validation: bool = setting(False, "evaluate on the validation split instead of test")
    eval_clients: int = setting(
        0, "--federation host: evaluate this many clients, a fixed random subset (0: all, in chunks)"
    )
    select_metric: str = setting(
        "accuracy", "sweeps: metric naming the best setting (accuracy, accuracy_bottom10, loss)"
    )
    unseen_em_iters: int = setting(500, "max EM iterations fitting an unseen client's pi")
    checkpoint_every: int = setting(10, "save a checkpoint every N rounds and at the end (0: never)")
    tensorboard: bool = setting(True, "write TensorBoard event files to WORKDIR/tb")
    plots: bool = setting(
        True, "draw partition.png at the start, mixture.png and clients_over_time.png at the end"
    )
    overwrite: bool = setting(
        False, "start over in a workdir of another experiment (old checkpoints set aside)"
    )
    quiet: bool = setting(False, "no progress bar or start-up lines: only the final line")


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "privacy": PrivacyConfig,
    "layout": LayoutConfig,
    "output": OutputConfig,
}


@dataclasses.dataclass(frozen=True)
class Config:
    """One experiment: the method, a section per concern, and the method's own hyperparameters
    (its module's dataclass; see ``algorithms/registry.py``). Flags stay flat: ``--lr`` is
    ``cfg.training.lr``, ``--model`` is ``cfg.model.name``."""

    method: str = setting("FedEM", "FL method")
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    privacy: PrivacyConfig = dataclasses.field(default_factory=PrivacyConfig)
    layout: LayoutConfig = dataclasses.field(default_factory=LayoutConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    hyperparams: Any = None
    # Settings given as lists, ``((flag, (value, ...)), ...)``: the runs of a sweep are their grid
    # (see :mod:`fedem_jax.training.sweep`). The sections hold each list's first value.
    sweep: tuple = ()

    def to_dict(self) -> dict[str, Any]:
        """Every setting as one flat dict by flag name (``config.json``, checkpoint records); a
        swept setting is its list of values."""
        values: dict[str, Any] = {"method": self.method}
        for section in SECTIONS:
            part = getattr(self, section)
            values.update({flag_name(f): getattr(part, f.name) for f in dataclasses.fields(part)})
        if self.hyperparams is not None:
            values.update(dataclasses.asdict(self.hyperparams))
        values.update({flag: list(options) for flag, options in self.sweep})
        return values

    def runs(self) -> list[dict[str, Any]]:
        """The settings of every run of the sweep, ``[{flag: value}]`` (``[{}]``: a single run).
        The grid varies the last swept flag fastest; ``seed`` is always last."""
        flags = [flag for flag, _ in self.sweep]
        return [
            dict(zip(flags, combo, strict=True)) for combo in itertools.product(*(v for _, v in self.sweep))
        ]

    def for_run(self, settings: dict[str, Any]) -> Config:
        """The single-run config of one run of the sweep."""
        flat = {k: v for k, v in self.to_dict().items() if not isinstance(v, list)}
        return make_config(**{**flat, **settings})

    def replace(self, **values) -> Config:
        """A validated copy with some flat settings changed (``cfg.replace(lr=0.1, n_rounds=5)``)."""
        return make_config(**{**self.to_dict(), **values})

    @property
    def method_info(self) -> registry.Method:
        return registry.get(self.method)


def flag_defaults() -> dict[str, Any]:
    """Every flag's default (before dataset defaults), by flag name."""
    values = {flag_name(f): f.default for _, f in section_fields()}
    values.update({name: f.default for name, f in registry.hyperparam_fields().items()})
    return values


def section_fields() -> list[tuple[str, dataclasses.Field]]:
    """``(section, field)`` of every experiment setting, in CLI order."""
    return [(name, f) for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _sections_from_flat(values: dict[str, Any]) -> dict[str, Any]:
    """``{section: SectionConfig}`` from flat flag values (absent ones keep their defaults)."""
    parts = {}
    for name, cls in SECTIONS.items():
        own = {f.name: values.pop(flag_name(f)) for f in dataclasses.fields(cls) if flag_name(f) in values}
        parts[name] = cls(**own)
    if values:
        raise TypeError(f"unknown settings: {', '.join(sorted(values))}")
    return parts


def make_config(**values) -> Config:
    """A validated :class:`Config` from flat settings; the method's own settings go to its
    hyperparameter dataclass, and the method's capabilities set its defaults:
    one model unless it has components, no momentum for prox-SGD methods (spec section 3)."""
    method = registry.get(values.get("method", Config.method))
    if "seeds" in values:  # --seeds: several seeds are a list of --seed
        check("seed" not in values, "give --seed or --seeds, not both")
        values["seed"] = values.pop("seeds")
    for flag, value in values.items():  # before any range check: --mu nan is not "below 0"
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, float):
                check(math.isfinite(item), f"--{flag} must be a finite number, got {item}")
    caps = method.capabilities
    if not caps.components:
        values.setdefault("n_learners", 1)
    if caps.plain_sgd:
        values.setdefault("momentum", 0.0)
    sweep = _sweep_axes(values)
    method_fields = registry.hyperparam_fields()
    hyper = {k: values.pop(k) for k in list(values) if k in method_fields}
    name = values.pop("method", Config.method)
    hyperparams = registry.make_hyperparams(method.name, hyper)
    cfg = validate(Config(method=name, **_sections_from_flat(values), hyperparams=hyperparams))
    if sweep:
        check(
            cfg.training.federation == "device",
            "--federation host runs one setting at a time (no lists of values) for now",
        )
        cfg = dataclasses.replace(cfg, sweep=sweep)
        for flag, options in sweep:  # every value of every list is valid on its own
            for value in options[1:]:
                cfg.for_run({flag: value})
    return cfg


def sweepable_flags() -> tuple[str, ...]:
    """Settings that may be lists: they change values, never the program's shapes."""
    methods = [name for name, f in registry.hyperparam_fields().items() if f.metadata.get("sweep", True)
               and getattr(f.type, "__name__", f.type) == "float"]  # fmt: skip
    return (*SWEEPABLE_TRAINING, *methods)


SWEEPABLE_TRAINING = ("lr", "momentum", "weight_decay", "seed")


def _sweep_axes(values: dict[str, Any]) -> tuple:
    """Pop the list-valued settings of ``values`` (their first value stays) into sweep axes."""
    lists = {k: tuple(v) for k, v in values.items() if isinstance(v, list | tuple)}
    if not lists:
        return ()
    allowed = sweepable_flags()
    for flag, options in lists.items():
        check(
            flag in allowed,
            f"--{flag} takes one value, got {len(options)}: it changes the program's shapes or data; "
            f"lists are allowed for --seeds and --{', --'.join(f for f in allowed if f != 'seed')}",
        )
        check(len(set(options)) == len(options), f"--{flag} lists a value twice: {list(options)}")
        values[flag] = options[0]
    order = [flag for flag in allowed if flag in lists and flag != "seed"]
    order += ["seed"] if "seed" in lists else []
    return tuple((flag, lists[flag]) for flag in order if len(lists[flag]) > 1)
