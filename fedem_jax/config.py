"""Experiment configuration: one frozen dataclass, its command-line parser, and validation.

Resolution order: dataclass defaults < ``configs/<dataset>.py`` (the paper's hyperparameters)
< flags given on the command line. Every invalid value raises :class:`ConfigError` with a one-line
message naming the flag and its allowed range; ``main`` turns it into exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
from typing import Any

from fedem_jax.algorithms import registry
from fedem_jax.errors import ConfigError, check

DATASETS = ("synthetic", "cifar10", "cifar100", "emnist", "femnist", "shakespeare", "npz")
PATH_DATASETS = ("npz", "femnist", "shakespeare")  # read from --data_path
SPLITS = ("label_groups", "dirichlet", "shards", "pachinko")
MODELS = ("linear", "mlp", "cnn", "cifar10_cnn", "femnist_cnn", "lstm", "mobilenet_v2")
OPTIMIZERS = ("sgd", "adam")
CONV_IMPLS = ("xla", "matmul")
SCHEDULERS = ("constant", "sqrt", "linear", "cosine", "multi_step")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of one experiment. Help strings double as CLI documentation."""

    dataset: str = dataclasses.field(default="synthetic", metadata={"help": "dataset name"})
    method: str = dataclasses.field(default="FedEM", metadata={"help": "FL method"})
    model: str = dataclasses.field(default="", metadata={"help": "model (default: per dataset)"})
    init_from: str = dataclasses.field(
        default="", metadata={"help": "start every component from the weights in this .npz/msgpack file"}
    )
    n_learners: int = dataclasses.field(default=3, metadata={"help": "mixture components M (FedAvg: 1)"})
    n_rounds: int = dataclasses.field(default=200, metadata={"help": "communication rounds"})
    local_epochs: int = dataclasses.field(default=1, metadata={"help": "local epochs per round"})
    batch_size: int = dataclasses.field(default=128, metadata={"help": "local minibatch size"})
    lr: float = dataclasses.field(default=0.03, metadata={"help": "learning rate"})
    lr_scheduler: str = dataclasses.field(
        default="multi_step", metadata={"help": "schedule, stepped once per local epoch"}
    )
    optimizer: str = dataclasses.field(default="sgd", metadata={"help": "local optimizer"})
    momentum: float = dataclasses.field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = dataclasses.field(default=5e-4, metadata={"help": "L2 weight decay"})
    sampling_rate: float = dataclasses.field(
        default=1.0, metadata={"help": "fraction of clients sampled per round, in (0, 1]"}
    )
    log_freq: int = dataclasses.field(default=5, metadata={"help": "evaluate every N rounds"})
    seed: int = dataclasses.field(default=1234, metadata={"help": "training seed"})
    data_seed: int = dataclasses.field(
        default=12345, metadata={"help": "seed of the data generation and client split"}
    )
    workdir: str = dataclasses.field(
        default="runs/default", metadata={"help": "output folder (metrics, summary)"}
    )
    data_dir: str = dataclasses.field(
        default="", metadata={"help": "TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"}
    )
    data_path: str = dataclasses.field(
        default="",
        metadata={
            "help": "npz: a .npz file or folder of them; femnist/shakespeare: LEAF JSON file or folder"
        },
    )
    drop_last: bool = dataclasses.field(
        default=False, metadata={"help": "drop each client's last incomplete batch (reference: images)"}
    )
    test_frac: float = dataclasses.field(
        default=0.2, metadata={"help": "per-client test fraction of real datasets"}
    )
    val_frac: float = dataclasses.field(
        default=0.0, metadata={"help": "fraction of each client's train split held out for validation"}
    )
    validation: bool = dataclasses.field(
        default=False, metadata={"help": "evaluate on the validation split instead of test"}
    )
    test_clients_frac: float = dataclasses.field(
        default=0.0, metadata={"help": "fraction of clients held out of training (unseen clients)"}
    )
    unseen_em_iters: int = dataclasses.field(
        default=500, metadata={"help": "max EM iterations fitting an unseen client's pi"}
    )
    # Dataset-specific settings (ignored where they do not apply).
    n_clients: int = dataclasses.field(default=300, metadata={"help": "number of clients"})
    alpha: float = dataclasses.field(default=0.4, metadata={"help": "Dirichlet concentration"})
    dim: int = dataclasses.field(default=150, metadata={"help": "synthetic: input dimension"})
    synthetic_components: int = dataclasses.field(
        default=3, metadata={"help": "synthetic: true number of mixture components"}
    )
    noise_std: float = dataclasses.field(default=0.1, metadata={"help": "synthetic: label noise"})
    n_test_per_client: int = dataclasses.field(
        default=5000, metadata={"help": "synthetic: test samples per client"}
    )
    split: str = dataclasses.field(
        default="", metadata={"help": "client split of image datasets (default: the dataset's own)"}
    )
    shards_per_client: int = dataclasses.field(
        default=2, metadata={"help": "--split shards: label-sorted shards per client"}
    )
    data_frac: float = dataclasses.field(
        default=1.0,
        metadata={"help": "fraction of the pooled samples (femnist: of the writers) kept, in (0, 1]"},
    )
    max_samples: int = dataclasses.field(
        default=0, metadata={"help": "use only the first N pooled samples (0: all; for quick runs)"}
    )
    # Execution layout (results do not depend on it up to float rounding).
    client_chunk: int = dataclasses.field(
        default=-1,
        metadata={"help": "clients trained together: 0 vmap all, 1 sequential, k chunks (-1 auto)"},
    )
    learner_vmap: int = dataclasses.field(
        default=-1, metadata={"help": "1 vmap the M learners, 0 loop over them (-1 auto)"}
    )
    n_devices: int = dataclasses.field(
        default=0, metadata={"help": "devices to shard the client axis over (0: all available)"}
    )
    distributed: bool = dataclasses.field(
        default=False, metadata={"help": "several processes/hosts: call jax.distributed.initialize()"}
    )
    coordinator_address: str = dataclasses.field(
        default="", metadata={"help": "--distributed: host:port of process 0 (auto on TPU/SLURM/MPI)"}
    )
    num_processes: int = dataclasses.field(
        default=0, metadata={"help": "--distributed: number of processes (0: auto)"}
    )
    process_id: int = dataclasses.field(
        default=-1, metadata={"help": "--distributed: this process (-1: auto)"}
    )
    conv_impl: str = dataclasses.field(
        default="", metadata={"help": "convolution for training: xla or matmul (default: matmul on CPU)"}
    )
    micro_batch: int = dataclasses.field(
        default=-1,
        metadata={
            "help": "a client's last partial batch runs as sub-batches of this size (0: off, -1: auto)"
        },
    )
    eval_chunk: int = dataclasses.field(
        default=1024, metadata={"help": "samples per forward pass in E-step and evaluation"}
    )
    checkpoint_every: int = dataclasses.field(
        default=10, metadata={"help": "save a checkpoint every N rounds and at the end (0: never)"}
    )
    tensorboard: bool = dataclasses.field(
        default=True, metadata={"help": "write TensorBoard event files to WORKDIR/tb"}
    )
    quiet: bool = dataclasses.field(default=False, metadata={"help": "no progress bar"})
    # The method's own settings (its module's hyperparameter dataclass; see algorithms/registry.py).
    hyperparams: Any = dataclasses.field(default=None, metadata={"cli": False})

    def to_dict(self) -> dict[str, Any]:
        """Every setting as one flat dict (``config.json``, checkpoint records)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "hyperparams"}
        if self.hyperparams is not None:
            values.update(dataclasses.asdict(self.hyperparams))
        return values

    @property
    def method_info(self) -> registry.Method:
        return registry.get(self.method)


def dataset_defaults(dataset: str) -> dict[str, Any]:
    """The paper's hyperparameters for ``dataset`` from ``configs/<dataset>.py``."""
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset: unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    module = importlib.import_module(f"fedem_jax.configs.{dataset}")
    return module.get_config()


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse hook
        raise ConfigError(message)


def _cli_fields() -> list[dataclasses.Field]:
    """Flags: the experiment's fields, then every method's hyperparameters (registry)."""
    own = [f for f in dataclasses.fields(Config) if f.metadata.get("cli", True)]
    return own + list(registry.hyperparam_fields().values())


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser; every flag defaults to ``None`` so that unset flags are detectable."""
    parser = _Parser(
        prog="python -m fedem_jax.main",
        description="Federated multi-task learning under a mixture of distributions (FedEM).",
        allow_abbrev=False,
    )
    for field in _cli_fields():
        kind = getattr(field.type, "__name__", field.type)  # a type, or its name under PEP 563
        arg_type = {"int": int, "float": float, "str": str, "bool": _parse_bool}[kind]
        flag_kwargs = {"nargs": "?", "const": True} if kind == "bool" else {}
        parser.add_argument(
            f"--{field.name}",
            type=arg_type,
            default=None,
            **flag_kwargs,
            help=f"{field.metadata.get('help', '')} (default: {field.default!r})",
        )
    return parser


def make_config(**values) -> Config:
    """A validated :class:`Config` from flat settings; the method's own settings go to its
    hyperparameter dataclass, and the method's capabilities set its defaults:
    one model unless it has components, no momentum for prox-SGD methods (spec section 3)."""
    method = registry.get(values.get("method", Config.method))
    caps = method.capabilities
    if not caps.components:
        values.setdefault("n_learners", 1)
    if caps.plain_sgd:
        values.setdefault("momentum", 0.0)
    method_fields = registry.hyperparam_fields()
    hyper = {k: values.pop(k) for k in list(values) if k in method_fields}
    return validate(Config(**values, hyperparams=registry.make_hyperparams(method.name, hyper)))


def resolve(argv: list[str] | None = None) -> Config:
    """Parse ``argv``, apply dataset defaults under the explicit flags, and validate."""
    args = vars(build_parser().parse_args(argv))
    explicit = {k: v for k, v in args.items() if v is not None}
    dataset = explicit.get("dataset", Config.dataset)
    defaults = dataset_defaults(dataset)
    method = registry.get(explicit.get("method", defaults.get("method", Config.method)))
    if not method.capabilities.components:
        defaults.pop("n_learners", None)  # a single-model method: 1 unless given explicitly
    return make_config(**{**defaults, **explicit})


def validate_method(cfg: Config) -> None:
    """What the method's capabilities allow (see :class:`~fedem_jax.algorithms.registry.Capabilities`)."""
    caps, name = cfg.method_info.capabilities, cfg.method
    check(caps.components or cfg.n_learners == 1, f"--n_learners must be 1 for {name}, got {cfg.n_learners}")
    check(
        caps.batch_norm or cfg.model != "mobilenet_v2",
        f"--model mobilenet_v2 (BatchNorm) is not supported with --method {name}",
    )
    check(
        caps.unseen or cfg.test_clients_frac == 0,
        f"--test_clients_frac: unseen clients are not supported with --method {name}",
    )
    check(
        not caps.full_participation or cfg.sampling_rate == 1,
        f"--sampling_rate: {name} needs every client in every round (1.0), got {cfg.sampling_rate}",
    )
    check(
        caps.multi_process or not cfg.distributed,
        f"--distributed: {name} is not tested over several processes; use FedEM, FedAvg or FedProx",
    )
    if cfg.hyperparams is not None:
        cfg.hyperparams.validate()


def validate(cfg: Config) -> Config:
    """Check every field; raise :class:`ConfigError` naming the flag and its allowed range."""

    def one_of(name: str, value: str, valid: tuple[str, ...]) -> None:
        check(value in valid, f"--{name}: unknown value {value!r}; valid: {', '.join(valid)}")

    one_of("dataset", cfg.dataset, DATASETS)
    if cfg.model:
        one_of("model", cfg.model, MODELS)
    one_of("optimizer", cfg.optimizer, OPTIMIZERS)
    if cfg.conv_impl:
        one_of("conv_impl", cfg.conv_impl, CONV_IMPLS)
    one_of("lr_scheduler", cfg.lr_scheduler, SCHEDULERS)
    if cfg.split:
        one_of("split", cfg.split, SPLITS)
    check(cfg.shards_per_client >= 1, f"--shards_per_client must be >= 1, got {cfg.shards_per_client}")
    check(cfg.n_learners >= 1, f"--n_learners must be >= 1, got {cfg.n_learners}")
    validate_method(cfg)
    check(cfg.n_rounds >= 1, f"--n_rounds must be >= 1, got {cfg.n_rounds}")
    check(cfg.local_epochs >= 1, f"--local_epochs must be >= 1, got {cfg.local_epochs}")
    check(cfg.batch_size >= 1, f"--batch_size must be >= 1, got {cfg.batch_size}")
    check(cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}")
    check(0 <= cfg.momentum < 1, f"--momentum must be in [0, 1), got {cfg.momentum}")
    check(cfg.weight_decay >= 0, f"--weight_decay must be >= 0, got {cfg.weight_decay}")
    check(0 < cfg.sampling_rate <= 1, f"--sampling_rate must be in (0, 1], got {cfg.sampling_rate}")
    check(cfg.log_freq >= 1, f"--log_freq must be >= 1, got {cfg.log_freq}")
    check(0 < cfg.test_frac < 1, f"--test_frac must be in (0, 1), got {cfg.test_frac}")
    check(0 <= cfg.val_frac < 1, f"--val_frac must be in [0, 1), got {cfg.val_frac}")
    check(
        0 <= cfg.test_clients_frac < 1,
        f"--test_clients_frac must be in [0, 1), got {cfg.test_clients_frac}",
    )
    check(not cfg.validation or cfg.val_frac > 0, "--validation needs --val_frac in (0, 1), e.g. 0.25")
    check(cfg.unseen_em_iters >= 1, f"--unseen_em_iters must be >= 1, got {cfg.unseen_em_iters}")
    check(cfg.n_clients >= 1, f"--n_clients must be >= 1, got {cfg.n_clients}")
    check(cfg.alpha > 0, f"--alpha must be > 0, got {cfg.alpha}")
    check(cfg.dim >= 1, f"--dim must be >= 1, got {cfg.dim}")
    check(
        cfg.synthetic_components >= 1,
        f"--synthetic_components must be >= 1, got {cfg.synthetic_components}",
    )
    check(cfg.noise_std >= 0, f"--noise_std must be >= 0, got {cfg.noise_std}")
    check(
        cfg.n_test_per_client >= 1,
        f"--n_test_per_client must be >= 1, got {cfg.n_test_per_client}",
    )
    check(0 < cfg.data_frac <= 1, f"--data_frac must be in (0, 1], got {cfg.data_frac}")
    check(cfg.max_samples >= 0, f"--max_samples must be >= 0, got {cfg.max_samples}")
    check(cfg.client_chunk >= -1, f"--client_chunk must be >= -1, got {cfg.client_chunk}")
    check(cfg.learner_vmap in (-1, 0, 1), f"--learner_vmap must be -1, 0 or 1, got {cfg.learner_vmap}")
    check(cfg.checkpoint_every >= 0, f"--checkpoint_every must be >= 0, got {cfg.checkpoint_every}")
    check(cfg.n_devices >= 0, f"--n_devices must be >= 0, got {cfg.n_devices}")
    check(
        not cfg.distributed or cfg.test_clients_frac == 0,
        "--distributed: unseen clients (--test_clients_frac) are not supported yet",
    )
    check(cfg.num_processes >= 0, f"--num_processes must be >= 0, got {cfg.num_processes}")
    check(cfg.process_id >= -1, f"--process_id must be >= 0 (or -1: auto), got {cfg.process_id}")
    check(cfg.micro_batch >= -1, f"--micro_batch must be >= -1, got {cfg.micro_batch}")
    check(cfg.eval_chunk >= 1, f"--eval_chunk must be >= 1, got {cfg.eval_chunk}")
    check(
        cfg.dataset not in PATH_DATASETS or bool(cfg.data_path),
        f"--data_path is required with --dataset {cfg.dataset}",
    )
    _check_workdir(cfg.workdir)
    return cfg


def _check_workdir(workdir: str) -> None:
    """Fail early if ``workdir`` cannot be created or written."""
    if not workdir:
        raise ConfigError("--workdir must not be empty")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--workdir: cannot create {workdir!r} ({err.strerror})") from None
    if not os.access(workdir, os.W_OK):
        raise ConfigError(f"--workdir: {workdir!r} is not writable")
