"""Methods from outside the package: installed plug-ins and ``--plugin`` (found here, registered
by :mod:`fedem_jax.algorithms.registry`).

- An installed package declares an entry point in the group ``fedem_jax.methods`` whose object is
  a :class:`~fedem_jax.algorithms.registry.Method`, a list of them, or a module with ``METHODS``;
  they are registered when the registry is first read (``pyproject.toml``:
  ``[project.entry-points."fedem_jax.methods"] half_avg = "my_package.half_avg:METHOD"``).
- ``python -m fedem_jax.main --plugin my_methods.py --method HalfAvg``: the command line imports
  the module (a file, or a module on ``sys.path``) before it reads ``--method``; the module
  registers its methods (``fedem_jax.register``), or defines ``METHODS``, which are registered.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import types

from fedem_jax.errors import ConfigError

ENTRY_POINT_GROUP = "fedem_jax.methods"


def entry_point_objects() -> list[tuple[str, object]]:
    """``(label, object)`` of every installed plug-in's entry point in ``fedem_jax.methods``."""
    found = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        label = f"plug-in {entry.name} ({entry.value})"
        try:
            found.append((label, entry.load()))
        except Exception as err:  # noqa: BLE001 - someone else's package: one line, whatever broke
            raise ConfigError(f"{label} cannot be loaded ({err})") from None
    return found


def plugin_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(plugins, argv without them)`` from ``--plugin X`` / ``--plugin=X`` (repeatable)."""
    plugins, rest, args = [], [], list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--plugin":
            if not args:
                raise ConfigError("--plugin needs a module or a .py file")
            plugins.append(args.pop(0))
        elif arg.startswith("--plugin="):
            plugins.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return plugins, rest


def import_plugins(specs: list[str]) -> list[tuple[str, types.ModuleType]]:
    """``(label, module)`` of each module (``package.module``) or file (``path/to/methods.py``)."""
    return [(f"--plugin {spec}", _import(spec)) for spec in specs]


def _import(spec: str) -> types.ModuleType:
    try:
        if spec.endswith(".py") or os.sep in spec:
            if not os.path.isfile(spec):
                raise ConfigError(f"--plugin {spec}: no such file")
            name = f"fedem_jax_plugin_{os.path.splitext(os.path.basename(spec))[0]}"
            module_spec = importlib.util.spec_from_file_location(name, spec)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
            return module
        return importlib.import_module(spec)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's code: one line naming it
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--plugin {spec}: cannot import it ({type(err).__name__}: {reason})") from None
