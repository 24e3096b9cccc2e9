"""Checkpoints and resume, with orbax, in ``WORKDIR/checkpoints/<round>``.

A checkpoint holds the whole training state pytree (global components, per-client ``pi``,
optimizer state and epoch counters, and the round counter) plus a JSON record: the config that
produced it and the metrics rows written so far. The random state needs no saving: every key is
``fold_in(seed, round, ...)`` (see :mod:`fedem_jax.algorithms.fedem`), so restoring the round
restores the stream.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed mid-write (even by SIGKILL) leaves no checkpoint that a resume could pick up.
"""

from __future__ import annotations

import os

import jax

from fedem_jax.config import Config, ConfigError

# Fields that may change between a run and its resume without changing the experiment.
RESUMABLE_CHANGES = frozenset(
    {"n_rounds", "log_freq", "quiet", "workdir", "checkpoint_every", "eval_chunk", "data_dir",
     "process_id", "coordinator_address"}
)  # fmt: skip


class Checkpointer:
    """Save the latest states of a run and restore the newest complete one."""

    def __init__(self, workdir: str, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_round(self) -> int | None:
        return self.manager.latest_step()

    def save(self, round_done: int, state, record: dict) -> None:
        ocp = self._ocp
        self.manager.save(
            round_done,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore_record(self, round_done: int) -> dict:
        """The JSON record alone (config and metrics), readable before the state's shapes are known."""
        ocp = self._ocp
        return self.manager.restore(round_done, args=ocp.args.Composite(record=ocp.args.JsonRestore()))[
            "record"
        ]

    def restore(self, round_done: int, like_state):
        """``(state, record)`` saved at ``round_done``, shaped like ``like_state``."""
        ocp = self._ocp
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        restored = self.manager.restore(
            round_done,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()),
        )
        return restored["state"], restored["record"]

    def close(self) -> None:
        self.manager.close()


def check_compatible(saved: dict, current: Config) -> None:
    """Refuse to resume a checkpoint made by a different experiment."""
    current_dict = current.to_dict()
    changed = sorted(
        key
        for key in set(saved) | set(current_dict)
        if key not in RESUMABLE_CHANGES and saved.get(key) != current_dict.get(key)
    )
    if changed:
        details = ", ".join(f"--{k} {saved.get(k)!r} -> {current_dict.get(k)!r}" for k in changed)
        raise ConfigError(
            f"--workdir {current.output.workdir!r} holds a checkpoint of a different experiment ({details}); "
            f"use another --workdir, or the same flags (only --n_rounds may change, to extend a run)"
        )
