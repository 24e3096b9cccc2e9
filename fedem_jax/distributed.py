"""Several processes (hosts), one federation: ``--distributed``.

Every process runs the same program (JAX's multi-controller model). ``jax.distributed.initialize``
connects them; the ``clients`` mesh then spans the devices of all processes, each process places
only its own devices' client blocks (:func:`fedem_jax.data.sharding.place`), the round's
aggregation is an all-reduce across processes, and only process 0 writes outputs. Per-client
results are gathered to every process with ``process_allgather`` before they are summarised.
"""

from __future__ import annotations

import jax
import numpy as np


def initialize(cfg) -> None:  # cfg: the LayoutConfig
    """``jax.distributed.initialize`` from ``--coordinator_address`` / ``--num_processes`` /
    ``--process_id`` (any left unset is auto-detected on TPU pods, SLURM and Open MPI)."""
    jax.distributed.initialize(
        coordinator_address=cfg.coordinator_address or None,
        num_processes=cfg.num_processes or None,
        process_id=cfg.process_id if cfg.process_id >= 0 else None,
    )


def is_main_process() -> bool:
    return jax.process_index() == 0


def to_host(value) -> np.ndarray:
    """A numpy copy of ``value``, gathered from every process if it is spread over them."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(value)
