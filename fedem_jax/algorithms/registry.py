"""Every method by name: its factory, its hyperparameters and what it can do.

A method is one module that defines a :class:`Method` (or several, for variants of one engine);
adding it here is one line in ``_MODULES``. The command line, the configuration's validation and
the experiment loop read this registry and never compare method names themselves.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from fedem_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a method supports; validation and the loop decide from these alone."""

    components: bool = False  # trains M mixture components (else exactly one model: n_learners 1)
    personal: bool = False  # clients are evaluated with models of their own
    unseen: bool = False  # clients held out of training can be evaluated (a shared model)
    full_participation: bool = False  # needs every client in every round
    batch_norm: bool = True  # supports models with BatchNorm statistics (mobilenet_v2)
    plain_sgd: bool = False  # no local momentum unless --momentum is given (prox-SGD: spec section 3)
    multi_process: bool = False  # tested with --distributed over several processes
    # The round branches (lax.cond) on values that differ between the runs of a sweep, and the
    # branch is costly (clustered: a split): a sweep then loops over its runs instead of vmapping
    # them, since a vmapped cond with a per-run predicate computes both branches for every run.
    sweep_vmap: bool = True


@dataclasses.dataclass(frozen=True)
class NoHyperparams:
    """A method without settings of its own."""

    def validate(self) -> None:
        return None


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    factory: Callable  # (Context, hyperparams) -> Algorithm
    summary: str  # one line for --help and the README
    hyperparams: type = NoHyperparams  # frozen dataclass with a validate() method
    capabilities: Capabilities = Capabilities()


def hyperparam(default, help: str, sweep: bool = True):  # noqa: A002 - the CLI's word
    """A hyperparameter field: its default and its ``--help`` text. A float may be given as a list
    (a sweep, traced as one program) unless ``sweep=False`` (used on the host, e.g. to draw a graph)."""
    return dataclasses.field(default=default, metadata={"help": help, "sweep": sweep})


# One line per method module; each defines METHODS, a tuple of Method.
_MODULES = (
    "fedem",  # FedEM, FedAvg, FedProx, FedAdam, FedYogi
    "fedavg_plus",
    "local",
    "pfedme",
    "pfedme_moreau",
    "clustered",
    "apfl",
    "afl",
    "qffl",
    "l2sgd",
    "decentralized",
    "ditto",
    "fedrep",  # FedPer, FedRep
    "scaffold",
    "fedbn",
)


def _load() -> dict[str, Method]:
    methods: dict[str, Method] = {}
    for module in _MODULES:
        for method in importlib.import_module(f"fedem_jax.algorithms.{module}").METHODS:
            if method.name in methods:
                raise RuntimeError(f"method {method.name!r} registered twice")
            methods[method.name] = method
    return methods


_METHODS: dict[str, Method] | None = None


def methods() -> dict[str, Method]:
    """Name -> :class:`Method`, in registration order."""
    global _METHODS
    if _METHODS is None:
        _METHODS = _load()
    return _METHODS


def get(name: str) -> Method:
    registered = methods()
    if name not in registered:
        raise ConfigError(f"--method: unknown value {name!r}; valid: {', '.join(registered)}")
    return registered[name]


def hyperparam_fields() -> dict[str, dataclasses.Field]:
    """Every method's hyperparameter fields by name; a name shared by methods has one type."""
    fields: dict[str, dataclasses.Field] = {}
    for method in methods().values():
        for field in dataclasses.fields(method.hyperparams):
            known = fields.get(field.name)
            if known is not None and (known.type, known.default) != (field.type, field.default):
                raise RuntimeError(f"hyperparameter {field.name!r} declared differently by two methods")
            fields[field.name] = field
    return fields


def make_hyperparams(name: str, values: dict[str, Any]):
    """The method's hyperparameters from ``values`` (other methods' settings are ignored)."""
    cls = get(name).hyperparams
    own = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
    params = cls(**own)
    params.validate()
    return params
