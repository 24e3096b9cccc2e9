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

DATASETS = ("synthetic", "cifar10", "cifar100", "emnist", "femnist", "shakespeare", "npz")
PATH_DATASETS = ("npz", "femnist", "shakespeare")  # read from --data_path
SPLITS = ("label_groups", "dirichlet", "shards", "pachinko")
METHODS = (
    "FedEM", "FedAvg", "FedAvg+", "FedProx", "local", "pFedMe", "clustered", "APFL", "AFL", "q-FFL",
    "L2SGD", "D-FedEM", "pFedMe-true",
)  # fmt: skip
SINGLE_MODEL_METHODS = (
    "FedAvg",
    "FedAvg+",
    "FedProx",
    "local",
    "pFedMe",
    "clustered",
    "APFL",
    "AFL",
    "q-FFL",
    "L2SGD",
    "pFedMe-true",
)
# Evaluated on per-client models: no shared model to give to unseen clients.
PERSONAL_METHODS = ("FedAvg+", "local", "pFedMe", "clustered", "APFL", "L2SGD", "D-FedEM", "pFedMe-true")
MESH_METHODS = ("FedEM", "FedAvg", "FedProx")  # the client axis can be sharded over devices
FULL_PARTICIPATION_METHODS = ("clustered", "D-FedEM")
PROX_METHODS = ("FedProx", "pFedMe")  # prox_sgd: momentum 0 unless set
MODELS = ("linear", "mlp", "cnn", "cifar10_cnn", "femnist_cnn", "lstm", "mobilenet_v2")
OPTIMIZERS = ("sgd", "adam")
CONV_IMPLS = ("xla", "matmul")
SCHEDULERS = ("constant", "sqrt", "linear", "cosine", "multi_step")


class ConfigError(ValueError):
    """A user-facing configuration problem; the message is printed without a traceback."""


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
    mu: float = dataclasses.field(default=0.01, metadata={"help": "FedProx, pFedMe: proximal coefficient"})
    q: float = dataclasses.field(default=1.0, metadata={"help": "q-FFL: fairness exponent q >= 0"})
    lr_lambda: float = dataclasses.field(
        default=0.01, metadata={"help": "AFL: step size of the ascent on the client weights lambda"}
    )
    tol_1: float = dataclasses.field(
        default=0.4, metadata={"help": "clustered: split when the mean update norm is below this"}
    )
    tol_2: float = dataclasses.field(
        default=1.6, metadata={"help": "clustered: ... and the largest client update norm is above this"}
    )
    apfl_alpha: float = dataclasses.field(
        default=0.5, metadata={"help": "APFL: initial interpolation weight of the local model, in [0, 1]"}
    )
    learn_alpha: bool = dataclasses.field(default=True, metadata={"help": "APFL: learn alpha per client"})
    penalty: float = dataclasses.field(
        default=1.0, metadata={"help": "L2SGD: penalty lambda pulling local models to their mean"}
    )
    comm_prob: float = dataclasses.field(
        default=0.2, metadata={"help": "L2SGD: probability p of an averaging step, in (0, 1]"}
    )
    pfedme_lambda: float = dataclasses.field(
        default=15.0, metadata={"help": "pFedMe-true: Moreau-envelope regularisation lambda"}
    )
    pfedme_k: int = dataclasses.field(default=5, metadata={"help": "pFedMe-true: inner steps K per batch"})
    personal_lr: float = dataclasses.field(
        default=0.09, metadata={"help": "pFedMe-true: step size of the inner (personalised) steps"}
    )
    beta: float = dataclasses.field(default=1.0, metadata={"help": "pFedMe-true: server mixing beta"})
    graph_p: float = dataclasses.field(
        default=0.5, metadata={"help": "D-FedEM: edge probability of the Erdos-Renyi graph"}
    )
    tune_epochs: int = dataclasses.field(
        default=1, metadata={"help": "FedAvg+: local fine-tuning epochs before each evaluation"}
    )
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


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser; every flag defaults to ``None`` so that unset flags are detectable."""
    parser = _Parser(
        prog="python -m fedem_jax.main",
        description="Federated multi-task learning under a mixture of distributions (FedEM).",
    )
    for field in dataclasses.fields(Config):
        arg_type = {"int": int, "float": float, "str": str, "bool": _parse_bool}[field.type]
        flag_kwargs = {"nargs": "?", "const": True} if field.type == "bool" else {}
        parser.add_argument(
            f"--{field.name}",
            type=arg_type,
            default=None,
            **flag_kwargs,
            help=f"{field.metadata.get('help', '')} (default: {field.default!r})",
        )
    return parser


def resolve(argv: list[str] | None = None) -> Config:
    """Parse ``argv``, apply dataset defaults under the explicit flags, and validate."""
    args = vars(build_parser().parse_args(argv))
    explicit = {k: v for k, v in args.items() if v is not None}
    dataset = explicit.get("dataset", Config.dataset)
    values = {**dataset_defaults(dataset), **explicit}
    if values.get("method") in SINGLE_MODEL_METHODS and "n_learners" not in explicit:
        values["n_learners"] = 1
    if values.get("method") in PROX_METHODS and "momentum" not in explicit:
        values["momentum"] = 0.0  # prox_sgd: no momentum (spec section 3)
    return validate(Config(**values))


def validate(cfg: Config) -> Config:
    """Check every field; raise :class:`ConfigError` naming the flag and its allowed range."""

    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    def one_of(name: str, value: str, valid: tuple[str, ...]) -> None:
        check(value in valid, f"--{name}: unknown value {value!r}; valid: {', '.join(valid)}")

    one_of("dataset", cfg.dataset, DATASETS)
    one_of("method", cfg.method, METHODS)
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
    check(
        not (cfg.model == "mobilenet_v2" and cfg.method in ("APFL", "pFedMe-true")),
        f"--model mobilenet_v2 (BatchNorm) is not supported with --method {cfg.method}",
    )
    check(
        cfg.method not in SINGLE_MODEL_METHODS or cfg.n_learners == 1,
        f"--n_learners must be 1 for {cfg.method}, got {cfg.n_learners}",
    )
    check(cfg.mu >= 0, f"--mu must be >= 0, got {cfg.mu}")
    check(cfg.tune_epochs >= 1, f"--tune_epochs must be >= 1, got {cfg.tune_epochs}")
    check(
        cfg.method not in PERSONAL_METHODS or cfg.test_clients_frac == 0,
        f"--test_clients_frac: unseen clients are not supported with --method {cfg.method}",
    )
    check(
        cfg.method in MESH_METHODS or cfg.n_devices <= 1,
        f"--n_devices: {cfg.method} runs on one device; use --n_devices 1",
    )
    check(
        cfg.method not in FULL_PARTICIPATION_METHODS or cfg.sampling_rate == 1,
        f"--sampling_rate: {cfg.method} needs every client in every round (1.0), got {cfg.sampling_rate}",
    )
    check(cfg.method != "pFedMe" or cfg.mu > 0, f"--mu must be > 0 for pFedMe, got {cfg.mu}")
    check(cfg.q >= 0, f"--q must be >= 0, got {cfg.q}")
    check(cfg.lr_lambda >= 0, f"--lr_lambda must be >= 0, got {cfg.lr_lambda}")
    check(
        cfg.tol_1 >= 0 and cfg.tol_2 >= 0, f"--tol_1 and --tol_2 must be >= 0, got {cfg.tol_1}, {cfg.tol_2}"
    )
    check(0 <= cfg.apfl_alpha <= 1, f"--apfl_alpha must be in [0, 1], got {cfg.apfl_alpha}")
    check(cfg.penalty >= 0, f"--penalty must be >= 0, got {cfg.penalty}")
    check(0 < cfg.comm_prob <= 1, f"--comm_prob must be in (0, 1], got {cfg.comm_prob}")
    check(0 < cfg.graph_p <= 1, f"--graph_p must be in (0, 1], got {cfg.graph_p}")
    check(cfg.pfedme_lambda > 0, f"--pfedme_lambda must be > 0, got {cfg.pfedme_lambda}")
    check(cfg.pfedme_k >= 1, f"--pfedme_k must be >= 1, got {cfg.pfedme_k}")
    check(cfg.personal_lr > 0, f"--personal_lr must be > 0, got {cfg.personal_lr}")
    check(cfg.beta > 0, f"--beta must be > 0, got {cfg.beta}")
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
        not cfg.distributed or cfg.method in MESH_METHODS,
        f"--distributed: {cfg.method} runs in one process; use FedEM, FedAvg or FedProx",
    )
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
