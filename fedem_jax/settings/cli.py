"""The command line's parser: one flag per setting of the schema and per hyperparameter of every
registered method (``--lr``, ``--mu``, ...), lists for sweeps (``--seeds 1,2,3``, ``--lr 0.01,0.03``),
the dataset's presets under the flags given (:func:`resolve`)."""

from __future__ import annotations

import argparse
import dataclasses

from fedem_jax.algorithms import registry
from fedem_jax.errors import ConfigError
from fedem_jax.settings.checks import check_data_path
from fedem_jax.settings.presets import with_presets
from fedem_jax.settings.schema import Config, flag_name, section_fields


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
    """Flags: the method, every section's fields, then every method's hyperparameters (registry)."""
    method = next(f for f in dataclasses.fields(Config) if f.name == "method")
    return [method, *(f for _, f in section_fields()), *registry.hyperparam_fields().values()]


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
        if kind in ("int", "float"):
            arg_type = _numbers(arg_type)
        flag_kwargs = {"nargs": "?", "const": True} if kind == "bool" else {}
        parser.add_argument(
            f"--{flag_name(field)}",
            type=arg_type,
            default=None,
            **flag_kwargs,
            help=f"{field.metadata.get('help', '')} (default: {field.default!r})",
        )
    parser.add_argument(
        "--seeds",
        type=_numbers(int),
        default=None,
        help="several training seeds run together, e.g. 1,2,3,4,5",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=None,
        help="import a module or .py file that registers methods of its own first (repeatable; "
        "read by fedem_jax.main before the other flags)",
    )
    return parser


def _numbers(kind):
    """An argparse type: one number, or a comma-separated list of them (a sweep)."""

    def parse(text: str):
        parts = [kind(part) for part in text.split(",")] if "," in text else [kind(text)]
        return parts[0] if len(parts) == 1 else tuple(parts)

    parse.__name__ = kind.__name__
    return parse


def resolve(argv: list[str] | None = None) -> Config:
    """Parse ``argv``, apply dataset defaults under the explicit flags, and validate."""
    args = vars(build_parser().parse_args(argv))
    args.pop("plugin")  # loaded by the command line before the parser was built
    cfg = with_presets({k: v for k, v in args.items() if v is not None})
    check_data_path(cfg.data)  # the command line always loads its data
    return cfg
