"""fedem_jax: FedEM (Marfoq et al., NeurIPS 2021) and its baselines as pure, jitted JAX functions.

The public API::

    import fedem_jax

    cfg = fedem_jax.config("synthetic", n_clients=50, n_rounds=20)   # presets applied, validated
    session = fedem_jax.Session(cfg)                                  # builds and compiles once
    for row in session.rounds(eval_every=5):
        print(row["round"], row["test_accuracy"])
    session.pi                                                        # [clients, components]

    fedem_jax.run(cfg)              # what the command line does: session + default callbacks
    fedem_jax.register(my_method)   # a Method of your own, then method="MyMethod" / --method
    fedem_jax.methods()             # every registered method by name

Names are resolved on first use, so ``import fedem_jax`` (and ``python -m fedem_jax.main``, which
installs its signal handlers before JAX loads) stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    # settings
    "config": "fedem_jax.settings.presets",
    "Config": "fedem_jax.settings.schema",
    "make_config": "fedem_jax.settings.schema",
    # data
    "load_dataset": "fedem_jax.data",
    "FederatedData": "fedem_jax.data",
    "ClientSplit": "fedem_jax.data",
    "build_split": "fedem_jax.data",
    "DATASETS": "fedem_jax.data.registry",
    # training
    "Session": "fedem_jax.training.session",
    "run": "fedem_jax.training.loop",
    "Callback": "fedem_jax.training.callbacks",
    "default_callbacks": "fedem_jax.training.callbacks",
    # methods
    "register": "fedem_jax.algorithms.registry",
    "unregister": "fedem_jax.algorithms.registry",
    "methods": "fedem_jax.algorithms.registry",
    "Method": "fedem_jax.algorithms.registry",
    "Capabilities": "fedem_jax.algorithms.registry",
    "hyperparam": "fedem_jax.algorithms.registry",
    "Algorithm": "fedem_jax.algorithms.base",
    "Context": "fedem_jax.algorithms.base",
    # models
    "MODELS": "fedem_jax.models.zoo",
    "build_model": "fedem_jax.models.zoo",
    "Task": "fedem_jax.core.tasks",
    # errors
    "FedemError": "fedem_jax.errors",
    "ConfigError": "fedem_jax.errors",
    "DataError": "fedem_jax.errors",
    "OutputError": "fedem_jax.errors",
    "DivergenceError": "fedem_jax.errors",
    "Interrupted": "fedem_jax.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module 'fedem_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
