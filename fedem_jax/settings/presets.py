"""Per-dataset presets: the paper's hyperparameters, from ``configs/<dataset>.py`` (installed as
``fedem_jax.configs``), applied under the settings given explicitly (:func:`with_presets`)."""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

from fedem_jax.algorithms import registry
from fedem_jax.data.registry import DATASETS
from fedem_jax.errors import ConfigError
from fedem_jax.settings.schema import Config, DataConfig, make_config

# The repository's configs/ folder, for a source checkout that was never installed.
_SOURCE_CONFIGS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs"
)


def dataset_defaults(dataset: str) -> dict[str, Any]:
    """The paper's hyperparameters for ``dataset`` from ``configs/<dataset>.py`` (``{}`` if it has none)."""
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset: unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    try:
        module = importlib.import_module(f"fedem_jax.configs.{dataset}")
    except ModuleNotFoundError:
        path = os.path.join(_SOURCE_CONFIGS, f"{dataset}.py")
        if not os.path.exists(path):
            return {}
        spec = importlib.util.spec_from_file_location(f"configs.{dataset}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.get_config()


def config(dataset: str = DataConfig.dataset, **overrides) -> Config:
    """``fedem_jax.config``: a validated :class:`Config` of ``dataset`` with the paper's
    hyperparameters (``configs/<dataset>.py``) under ``overrides``, flat settings named as the
    command line's flags (``n_rounds=20``, ``lr=0.05``, ``method="FedAvg"``, ``seeds=[1, 2, 3]``).
    Nothing is written to disk."""
    return with_presets({"dataset": dataset, **overrides})


def with_presets(explicit: dict[str, Any]) -> Config:
    """A validated :class:`Config`: the dataset's presets under the ``explicit`` settings. A
    single-model method keeps one model unless ``n_learners`` is given explicitly."""
    dataset = explicit.get("dataset", DataConfig.dataset)
    defaults = dataset_defaults(dataset)
    method = registry.get(explicit.get("method", defaults.get("method", Config.method)))
    if not method.capabilities.components:
        defaults.pop("n_learners", None)
    return make_config(**{**defaults, **explicit})
