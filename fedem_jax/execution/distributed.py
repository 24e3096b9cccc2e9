"""Several processes (hosts), one federation: ``--distributed``.

Every process runs the same program (JAX's multi-controller model). ``jax.distributed.initialize``
connects them; the ``clients`` mesh then spans the devices of all processes, each process places
only its own devices' client blocks (:func:`fedem_jax.data.sharding.place`), the round's
aggregation is an all-reduce across processes, and only process 0 writes outputs. Per-client
results are gathered to every process with ``process_allgather`` before they are summarised.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

import jax
import numpy as np

from fedem_jax.errors import ConfigError


def initialize(cfg, log=print) -> None:  # cfg: the LayoutConfig
    """``jax.distributed.initialize`` from ``--coordinator_address`` / ``--num_processes`` /
    ``--process_id`` (any left unset is auto-detected on TPU pods, SLURM and Open MPI).

    Raises :class:`ConfigError` for an address that does not resolve or a failed set-up. XLA
    aborts the process when peers do not join in time, so a watchdog ends it first, after
    ``--distributed_timeout`` seconds, with one line and exit code 2.
    """
    address = cfg.coordinator_address or None
    if address:
        _check_resolves(address)
    who = f"process {cfg.process_id}" if cfg.process_id >= 0 else "this process"
    log(
        f"--distributed: {who} waiting up to {cfg.distributed_timeout} s for "
        f"{cfg.num_processes or 'all'} processes to join at {address or 'the auto-detected coordinator'}"
    )
    joined = threading.Event()
    threading.Thread(target=_watchdog, args=(joined, cfg, address), daemon=True).start()
    try:
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=cfg.num_processes or None,
            process_id=cfg.process_id if cfg.process_id >= 0 else None,
            # XLA's own deadline (it aborts the process) comes after the watchdog's.
            initialization_timeout=cfg.distributed_timeout + WATCHDOG_MARGIN_S,
        )
    except (RuntimeError, ValueError) as err:
        hint = "" if address else f"; {AUTO_DETECT_HINT}"
        raise ConfigError(f"--distributed: set-up failed ({_first_line(err)}){hint}") from None
    finally:
        joined.set()


WATCHDOG_MARGIN_S = 30
AUTO_DETECT_HINT = (
    "outside TPU pods, SLURM and Open MPI give --coordinator_address, --num_processes, --process_id"
)


def _watchdog(joined: threading.Event, cfg, address) -> None:
    if not joined.wait(cfg.distributed_timeout):
        print(
            f"error: --distributed: not every process joined within {cfg.distributed_timeout} s "
            f"(coordinator {address or 'auto-detected'}); start all {cfg.num_processes or ''} processes "
            "with the same --coordinator_address and --num_processes, each with its own --process_id",
            file=sys.stderr,
            flush=True,
        )
        os._exit(2)


def _check_resolves(address: str) -> None:
    host = address.rpartition(":")[0].strip("[]")
    try:
        socket.getaddrinfo(host, None)
    except OSError as err:
        raise ConfigError(f"--coordinator_address {address!r}: cannot resolve {host!r} ({err})") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def is_main_process() -> bool:
    return jax.process_index() == 0


def to_host(value) -> np.ndarray:
    """A numpy copy of ``value``, gathered from every process if it is spread over them."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(value)


def tree_to_host(tree):
    """:func:`to_host` of every leaf: one batched ``jax.device_get`` when this process holds them
    all (its transfers overlap), else gathered leaf by leaf from every process."""
    leaves = jax.tree.leaves(tree)
    if all(not isinstance(a, jax.Array) or a.is_fully_addressable for a in leaves):
        return jax.device_get(tree)
    return jax.tree.map(to_host, tree)
