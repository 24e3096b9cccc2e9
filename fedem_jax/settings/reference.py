"""Reference tables in Markdown, generated from the schema, the presets and the method registry:
the docs site's flag reference, dataset presets and per-method sections (``docs/hooks.py``), so
that the documentation cannot drift from the code."""

from __future__ import annotations

import dataclasses

from fedem_jax.algorithms import registry
from fedem_jax.data.registry import DATASETS
from fedem_jax.settings.checks import choices
from fedem_jax.settings.cli import build_parser
from fedem_jax.settings.presets import dataset_defaults
from fedem_jax.settings.schema import SECTIONS, flag_name

_SECTION_TITLES = {
    "data": "Data and client split",
    "model": "Model",
    "training": "Training",
    "privacy": "Differential privacy (see the privacy guide)",
    "layout": "Layout (how the round is laid out on the devices)",
    "output": "Outputs and evaluation",
}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(value) -> str:
    return "—" if value == "" else f"`{_plain(value)}`"


def flag_help() -> dict[str, str]:
    """``{flag: help text}`` of every command-line flag, as ``--help`` prints it."""
    return {
        action.option_strings[-1]: action.help or ""
        for action in build_parser()._actions
        if action.option_strings and action.option_strings[-1] != "--help"
    }


def _table(rows, header) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _methods_using() -> dict[str, list[str]]:
    using: dict[str, list[str]] = {}
    for method in registry.methods().values():
        for field in dataclasses.fields(method.hyperparams):
            using.setdefault(field.name, []).append(method.name)
    return using


def _meaning(field: dataclasses.Field) -> str:
    """The field's help text, and its valid names where it takes one."""
    valid = choices().get(flag_name(field))
    text = field.metadata.get("help", "")
    return f"{text}; one of {', '.join(f'`{v}`' for v in valid)}" if valid else text


def flags_markdown() -> str:
    """Every flag: one table per section of the schema, then the methods' hyperparameters."""
    method = registry.methods()
    lines = ["### Method", ""]
    lines += _table(
        [("`--method`", "`FedEM`", f"one of {', '.join(f'`{m}`' for m in method)}")],
        ("flag", "default", "meaning"),
    )
    for section, cls in SECTIONS.items():
        lines += [f"### {_SECTION_TITLES.get(section, section)}", ""]
        rows = [(f"`--{flag_name(f)}`", _default(f.default), _meaning(f)) for f in dataclasses.fields(cls)]
        lines += _table(rows, ("flag", "default", "meaning"))
    lines += ["### Sweeps and plug-ins", ""]
    parser_help = flag_help()
    lines += _table(
        [(f"`{flag}`", "—", parser_help[flag].split(" (default")[0]) for flag in ("--seeds", "--plugin")],
        ("flag", "default", "meaning"),
    )
    lines += ["### Hyperparameters of the methods", ""]
    using = _methods_using()
    rows = [
        (f"`--{name}`", _default(f.default), ", ".join(using[name]), f.metadata.get("help", ""))
        for name, f in registry.hyperparam_fields().items()
    ]
    lines += _table(rows, ("flag", "default", "methods", "meaning"))
    return "\n".join(lines)


def presets_markdown() -> str:
    """The settings each dataset changes from the defaults (``configs/<dataset>.py``)."""
    rows = []
    for name in DATASETS:
        preset = dataset_defaults(name)
        shown = ", ".join(f"`--{k} {_plain(v)}`" for k, v in preset.items()) or "(the defaults)"
        rows.append((f"`{name}`", shown))
    return "\n".join(_table(rows, ("dataset", "presets (any flag given overrides them)")))


def _plain(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_CAPABILITY_WORDS = {
    "components": "trains M mixture components",
    "personal": "evaluates each client with a model of its own",
    "unseen": "can evaluate clients held out of training",
    "full_participation": "needs every client in every round",
    "batch_norm": "supports BatchNorm models",
    "plain_sgd": "plain (prox-)SGD locally unless --momentum is given",
    "multi_process": "tested over several processes",
    "dp": "user-level DP (`--dp_clip`) and Poisson sampling",
    "dp_adaptive": "adaptive DP clipping (`--dp_clip_quantile`)",
    "cohort": "cohort rounds (`--cohort`)",
}


def methods_markdown() -> str:
    """One section per registered method: its summary, hyperparameters and capabilities."""
    lines = []
    for method in registry.methods().values():
        lines += [f"### {method.name}", "", method.summary, ""]
        fields = dataclasses.fields(method.hyperparams)
        if fields:
            rows = [(f"`--{f.name}`", _default(f.default), f.metadata.get("help", "")) for f in fields]
            lines += _table(rows, ("hyperparameter", "default", "meaning"))
        else:
            lines += ["No hyperparameters of its own.", ""]
        caps = method.capabilities
        said = [words for name, words in _CAPABILITY_WORDS.items() if getattr(caps, name)]
        if not caps.batch_norm:
            said.append("no BatchNorm models")
        if not caps.dp:
            said.append(f"no DP: {caps.no_dp_why}")
        lines += ["Capabilities: " + ("; ".join(said) if said else "none of the optional ones") + ".", ""]
    return "\n".join(lines)
