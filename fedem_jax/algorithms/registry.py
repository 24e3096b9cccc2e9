"""Every method by name: its factory, its hyperparameters and what it can do.

A method is one module that defines a :class:`Method` (or several, for variants of one engine).
The package's own are listed in ``_MODULES``; a method of your own, defined in any module, is
added with :func:`register` (``fedem_jax.register``), or by an installed package through the
entry-point group ``fedem_jax.methods`` (see :mod:`fedem_jax.algorithms.plugins`). The command
line, the configuration's validation and the training loop read this registry and never compare
method names themselves.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
from collections.abc import Callable
from typing import Any

from fedem_jax.algorithms import plugins
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
    # User-level DP (--dp_clip) and Poisson sampling: the round sends the server only a clipped,
    # noised weighted sum of client updates (fedem_jax/core/privacy.py). Else, why not (one line).
    dp: bool = False
    # Adaptive clipping (--dp_clip_quantile): the round keeps the clip in its state and moves it.
    dp_adaptive: bool = False
    # --cohort: the round only reads and writes the sampled clients' state, and the federation
    # only through n_t / n (execution/cohort.py gathers the sampled clients for it).
    cohort: bool = False
    no_dp_why: str = "its round is not built on the clipped, noised sum of client updates yet"


@dataclasses.dataclass(frozen=True)
class NoHyperparams:
    """A method without settings of its own."""

    def validate(self) -> None:
        return None


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    factory: Callable  # (Context, hyperparams) -> Algorithm
    summary: str  # one line for --help, the README and the docs
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
_OWN: frozenset[str] = frozenset()  # the package's own methods' names


def methods() -> dict[str, Method]:
    """Name -> :class:`Method`, in registration order: the package's own, then those of installed
    plug-ins (entry points ``fedem_jax.methods``), then those registered at run time."""
    global _METHODS, _OWN
    if _METHODS is None:
        _METHODS = _load()
        _OWN = frozenset(_METHODS)
        for label, obj in plugins.entry_point_objects():
            register_all(obj, label)
    return _METHODS


def register_all(obj, label: str) -> None:
    """Register what a plug-in offers: a :class:`Method`, a list of them, or a module's ``METHODS``."""
    if isinstance(obj, Method):
        found = [obj]
    elif isinstance(obj, types.ModuleType):
        found = list(getattr(obj, "METHODS", ()))
    elif isinstance(obj, list | tuple):
        found = list(obj)
    else:
        raise ConfigError(f"{label}: expected a Method, a list of them or a module with METHODS")
    for method in found:
        try:
            register(method)
        except ConfigError as err:
            raise ConfigError(f"{label}: {err}") from None


def load_plugins(specs: list[str]) -> None:
    """``--plugin``: import each module or ``.py`` file and register the methods it defines (a
    module may also call ``fedem_jax.register`` itself)."""
    for label, module in plugins.import_plugins(specs):
        register_all(module, label)


def register(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to the registry, so that ``Session``, ``run`` and ``--method`` know it;
    registering the same object again does nothing, another method of a known name is refused
    unless ``replace``. Returns ``method`` (usable as a decorator-free one-liner at module level)."""
    _check_method(method)
    registered = methods()
    known = registered.get(method.name)
    if known is method:
        return method
    if known is not None and not replace:
        raise ConfigError(
            f"a method named {method.name!r} is registered already (pass replace=True to replace it)"
        )
    previous = dict(registered)
    registered[method.name] = method
    try:
        hyperparam_fields()  # a flag shared with another method must have one type and default
    except RuntimeError as err:
        registered.clear()
        registered.update(previous)
        raise ConfigError(f"cannot register {method.name!r}: {err}") from None
    return method


def unregister(name: str) -> None:
    """Remove a method registered at run time (the package's own cannot be removed)."""
    registered = methods()
    if name in _OWN:
        raise ConfigError(f"{name!r} is one of fedem_jax's own methods; it cannot be unregistered")
    registered.pop(name, None)


def _check_method(method) -> None:
    if not isinstance(method, Method):
        raise ConfigError(f"register() takes a fedem_jax Method, got {type(method).__name__}")
    if not (isinstance(method.name, str) and method.name and method.name.strip() == method.name):
        raise ConfigError(
            f"a method's name must be a non-empty string without spaces around it, got {method.name!r}"
        )
    if not callable(method.factory):
        raise ConfigError(
            f"method {method.name!r}: its factory must be callable (ctx, hyperparams) -> Algorithm"
        )
    if not (dataclasses.is_dataclass(method.hyperparams) and hasattr(method.hyperparams, "validate")):
        raise ConfigError(f"method {method.name!r}: hyperparams must be a dataclass with a validate() method")
    if not isinstance(method.capabilities, Capabilities):
        raise ConfigError(f"method {method.name!r}: capabilities must be a Capabilities")


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
