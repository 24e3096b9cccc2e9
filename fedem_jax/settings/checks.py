"""Every value of a :class:`~fedem_jax.settings.schema.Config` checked: one :class:`ConfigError`
naming the flag and its allowed range (``main`` turns it into exit code 2). The names a flag takes
are those of the registry that owns them (datasets and splits, models and convolutions,
optimizers and schedules, methods), never listed here again.

Functions take the config and its sections by duck typing (this module does not import the
schema, which imports it)."""

from __future__ import annotations

import math

from fedem_jax.core.optim import OPTIMIZERS, SCHEDULES
from fedem_jax.core.privacy import ACCOUNTANTS, WEIGHTINGS
from fedem_jax.data.registry import DATASETS, SPLITS
from fedem_jax.errors import check
from fedem_jax.models.convolution import CONV_IMPLS
from fedem_jax.models.zoo import INITS, MODELS

SAMPLINGS = ("fixed", "poisson")
CLIENT_MOMENTUM = ("persistent", "fresh")
FEDERATIONS = ("device", "host")
SELECT_METRICS = ("accuracy", "accuracy_bottom10", "loss")  # --select_metric: sweeps' best setting
MAX_INT = 2**31 - 1  # rounds, epochs and their products are counted in int32 on the device
# Seeds are int32 in a sweep and 32-bit in JAX's keys: larger ones would collide with smaller ones.
MAX_SEED = MAX_INT


def validate_method(cfg) -> None:
    """What the method's capabilities allow (see :class:`~fedem_jax.algorithms.registry.Capabilities`)."""
    caps, name = cfg.method_info.capabilities, cfg.method
    n_learners = cfg.model.n_learners
    check(caps.components or n_learners == 1, f"--n_learners must be 1 for {name}, got {n_learners}")
    model = cfg.model.name
    check(
        caps.batch_norm or not (model in MODELS and MODELS[model].stateful),
        f"--model {model} (BatchNorm) is not supported with --method {name}",
    )
    check(
        caps.unseen or cfg.data.test_clients_frac == 0,
        f"--test_clients_frac: unseen clients are not supported with --method {name}",
    )
    check(
        not caps.full_participation or cfg.training.sampling_rate == 1,
        f"--sampling_rate: {name} needs every client in every round (1.0), got {cfg.training.sampling_rate}",
    )
    check(
        caps.dp or cfg.privacy.dp_clip == 0,
        f"--dp_clip: {name} does not support user-level DP: {caps.no_dp_why}",
    )
    check(
        caps.dp_adaptive or cfg.privacy.dp_clip_quantile == 0,
        f"--dp_clip_quantile: {name} keeps a fixed clip (its capabilities lack dp_adaptive); "
        "drop --dp_clip_quantile",
    )
    check(
        caps.dp or cfg.training.sampling == "fixed",
        f"--sampling poisson: {name} supports fixed-size sampling only (Poisson: the methods with --dp_clip)",
    )
    check(
        caps.cohort or not cfg.training.cohort,
        f"--cohort: {name} does not run cohort rounds (its round reads clients that are not sampled)",
    )
    check(
        not cfg.training.cohort or cfg.training.sampling == "fixed",
        "--cohort needs --sampling fixed (a cohort has a fixed size K)",
    )
    check(
        not cfg.training.cohort or cfg.layout.n_devices <= 1 or cfg.training.federation == "host",
        "--cohort runs on one device (or on several with --federation host): add --n_devices 1",
    )
    check(
        not cfg.training.cohort or not cfg.layout.distributed or cfg.training.federation == "host",
        "--cohort over several processes (--distributed) needs --federation host",
    )
    check(
        caps.multi_process or not cfg.layout.distributed,
        f"--distributed: {name} is not tested over several processes; use FedEM, FedAvg or FedProx",
    )
    if cfg.hyperparams is not None:
        cfg.hyperparams.validate()


def validate(cfg):
    """Check every field; raise :class:`ConfigError` naming the flag and its allowed range."""
    for flag, value in cfg.to_dict().items():  # --lr inf, --mu nan: refused, whatever the range
        if isinstance(value, float):
            check(math.isfinite(value), f"--{flag} must be a finite number, got {value}")
    _validate_data(cfg.data)
    _validate_model(cfg.model)
    validate_method(cfg)
    _validate_training(cfg.training)
    _validate_privacy(cfg.privacy, cfg.training)
    _validate_layout(cfg.layout)
    _validate_output(cfg.output)
    for flag, value in cfg.to_dict().items():  # what the ranges above leave open
        if isinstance(value, int) and not isinstance(value, bool):  # counters are int32 on the device
            check(abs(value) <= MAX_INT, f"--{flag} must be at most {MAX_INT}, got {value}")
    check(
        not cfg.output.validation or cfg.data.val_frac > 0,
        "--validation needs --val_frac in (0, 1), e.g. 0.25",
    )
    _validate_host(cfg)
    check(
        not cfg.layout.distributed or cfg.data.test_clients_frac == 0,
        "--distributed: unseen clients (--test_clients_frac) are not supported yet",
    )
    return cfg


def _validate_host(cfg) -> None:
    """``--federation host`` and what it does not support yet."""
    _at_least("eval_clients", cfg.output.eval_clients, 0)
    host = cfg.training.federation == "host"
    check(host or cfg.output.eval_clients == 0, "--eval_clients needs --federation host")


def _one_of(name: str, value: str, valid: tuple[str, ...]) -> None:
    check(value in valid, f"--{name}: unknown value {value!r}; valid: {', '.join(valid)}")


def _at_least(name: str, value, low) -> None:
    check(value >= low, f"--{name} must be >= {low}, got {value}")


def _in_range(name: str, value, low, high, closed_low: bool, closed_high: bool) -> None:
    ok = (low <= value if closed_low else low < value) and (value <= high if closed_high else value < high)
    bounds = f"{'[' if closed_low else '('}{low}, {high}{']' if closed_high else ')'}"
    check(ok, f"--{name} must be in {bounds}, got {value}")


def _check_seed(name: str, value: int) -> None:
    check(0 <= value <= MAX_SEED, f"--{name} must be an integer in [0, {MAX_SEED}], got {value}")


def _validate_data(d) -> None:
    _one_of("dataset", d.dataset, tuple(DATASETS))
    if d.split:
        _one_of("split", d.split, tuple(SPLITS))
    for name in (
        "shards_per_client",
        "classes_per_client",
        "n_clients",
        "dim",
        "synthetic_components",
        "n_test_per_client",
    ):
        _at_least(name, getattr(d, name), 1)
    _check_seed("data_seed", d.data_seed)
    _at_least("max_samples", d.max_samples, 0)
    _at_least("noise_std", d.noise_std, 0)
    check(d.alpha > 0, f"--alpha must be > 0, got {d.alpha}")
    _in_range("test_frac", d.test_frac, 0, 1, False, False)
    _in_range("val_frac", d.val_frac, 0, 1, True, False)
    _in_range("test_clients_frac", d.test_clients_frac, 0, 1, True, False)
    _in_range("data_frac", d.data_frac, 0, 1, False, True)


def check_data_path(d) -> None:
    """A dataset read from files needs ``--data_path`` (checked where the data will be loaded:
    a session given its data needs none)."""
    check(
        not DATASETS[d.dataset].reads_path or bool(d.data_path),
        f"--data_path is required with --dataset {d.dataset}",
    )


def _validate_model(m) -> None:
    if m.name:
        _one_of("model", m.name, tuple(MODELS))
    if m.conv_impl:
        _one_of("conv_impl", m.conv_impl, CONV_IMPLS)
    _one_of("init", m.init, INITS)
    _at_least("n_learners", m.n_learners, 1)


def _validate_training(t) -> None:
    _check_seed("seed", t.seed)
    _one_of("optimizer", t.optimizer, tuple(OPTIMIZERS))
    _one_of("lr_scheduler", t.lr_scheduler, tuple(SCHEDULES))
    for name in ("n_rounds", "local_epochs", "batch_size"):
        _at_least(name, getattr(t, name), 1)
    epochs = t.n_rounds * t.local_epochs  # a client's epoch counter, the lr schedule's clock
    check(epochs <= MAX_INT, f"--n_rounds x --local_epochs must be at most {MAX_INT}, got {epochs}")
    check(t.lr > 0, f"--lr must be > 0, got {t.lr}")
    _in_range("momentum", t.momentum, 0, 1, True, False)
    _at_least("weight_decay", t.weight_decay, 0)
    _in_range("sampling_rate", t.sampling_rate, 0, 1, False, True)
    _one_of("sampling", t.sampling, SAMPLINGS)
    _one_of("client_momentum", t.client_momentum, CLIENT_MOMENTUM)
    _one_of("federation", t.federation, FEDERATIONS)
    check(
        t.federation == "device" or t.cohort,
        "--federation host needs --cohort (rounds move only their cohort)",
    )


def _validate_privacy(p, t) -> None:
    _at_least("dp_clip", p.dp_clip, 0)
    _one_of("dp_weighting", p.dp_weighting, WEIGHTINGS)
    _one_of("dp_accountant", p.dp_accountant, ACCOUNTANTS)
    _in_range("dp_clip_quantile", p.dp_clip_quantile, 0, 1, True, False)
    _in_range("dp_clip_lr", p.dp_clip_lr, 0, 10, False, True)
    check(
        p.dp_clip_count_noise > 0 or p.dp_clip_count_noise == -1,
        f"--dp_clip_count_noise must be > 0 (or -1: expected cohort / 20), got {p.dp_clip_count_noise}",
    )
    check(
        p.dp_clip_quantile == 0 or not p.dp_per_component,
        "--dp_clip_quantile: adaptive clipping bounds all components jointly; drop --dp_per_component",
    )
    if p.dp_clip == 0:
        unused = [f"--{n}" for n in ("dp_epsilon", "dp_delta", "dp_clip_quantile") if getattr(p, n) != 0]
        unused += ["--noise_multiplier"] if p.noise_multiplier != -1 else []
        check(not unused, f"{', '.join(unused)}: DP is off; give --dp_clip C (> 0) to turn it on")
        return
    check(p.dp_epsilon >= 0, f"--dp_epsilon must be > 0, got {p.dp_epsilon}")
    check(
        p.noise_multiplier >= 0 or p.noise_multiplier == -1,
        f"--noise_multiplier must be >= 0, got {p.noise_multiplier}",
    )
    check(
        (p.dp_epsilon > 0) != (p.noise_multiplier >= 0),
        "--dp_clip: give --dp_epsilon (a target, > 0) or --noise_multiplier (>= 0), one of the two",
    )
    _in_range("dp_delta", p.dp_delta, 0, 1, True, False)
    check(
        t.sampling == "poisson" or t.sampling_rate == 1,
        "--dp_clip with --sampling_rate < 1 needs --sampling poisson (the accountant's privacy "
        "amplification by sampling assumes each client is sampled independently)",
    )


def _validate_layout(lay) -> None:
    _at_least("client_chunk", lay.client_chunk, -1)
    check(lay.learner_vmap in (-1, 0, 1), f"--learner_vmap must be -1, 0 or 1, got {lay.learner_vmap}")
    _at_least("micro_batch", lay.micro_batch, -1)
    _at_least("eval_chunk", lay.eval_chunk, 1)
    _at_least("runs_per_chunk", lay.runs_per_chunk, 0)
    _at_least("parallel_runs", lay.parallel_runs, 0)
    _at_least("n_devices", lay.n_devices, 0)
    _at_least("num_processes", lay.num_processes, 0)
    check(lay.process_id >= -1, f"--process_id must be >= 0 (or -1: auto), got {lay.process_id}")
    check(
        lay.num_processes == 0 or lay.process_id < lay.num_processes,
        f"--process_id {lay.process_id} must be below --num_processes {lay.num_processes}",
    )
    _at_least("distributed_timeout", lay.distributed_timeout, 1)
    if lay.coordinator_address:
        _check_address(lay.coordinator_address)


def _check_address(address: str) -> None:
    """``host:port`` (``[v6 address]:port`` too), the port in 1..65535."""
    host, _, port = address.rpartition(":")
    check(
        bool(host) and port.isdigit() and 0 < int(port) < 65536,
        f"--coordinator_address must be host:port (e.g. 10.0.0.1:1234), got {address!r}",
    )


def _validate_output(o) -> None:
    _at_least("log_freq", o.log_freq, 1)
    _one_of("select_metric", o.select_metric, SELECT_METRICS)
    _at_least("unseen_em_iters", o.unseen_em_iters, 1)
    _at_least("checkpoint_every", o.checkpoint_every, 0)
    _check_workdir(o.workdir)


def _check_workdir(workdir: str) -> None:
    """Only the name: the folder is created (and checked) when a run starts, not when a
    configuration is validated."""
    check(bool(workdir), "--workdir must not be empty")


def choices() -> dict[str, tuple[str, ...]]:
    """``{flag: valid names}`` of every setting that takes a name, from the registries."""
    return {
        "dataset": tuple(DATASETS),
        "split": tuple(SPLITS),
        "model": tuple(MODELS),
        "init": tuple(INITS),
        "conv_impl": tuple(CONV_IMPLS),
        "optimizer": tuple(OPTIMIZERS),
        "lr_scheduler": tuple(SCHEDULES),
        "sampling": SAMPLINGS,
        "client_momentum": CLIENT_MOMENTUM,
        "dp_weighting": WEIGHTINGS,
        "dp_accountant": ACCOUNTANTS,
        "select_metric": SELECT_METRICS,
    }
