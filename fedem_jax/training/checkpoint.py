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

import json
import os
import shutil
import sys
import time

import jax

from fedem_jax.errors import ConfigError, OutputError
from fedem_jax.reporting.outputs import KEPT
from fedem_jax.settings.schema import Config, flag_defaults
from fedem_jax.training.workdir import check_paths, results_in, set_aside_outputs

# Fields that may change between a run and its resume without changing the experiment.
RESUMABLE_CHANGES = frozenset(
    {"n_rounds", "log_freq", "quiet", "workdir", "checkpoint_every", "eval_chunk", "data_dir",
     "process_id", "coordinator_address", "runs_per_chunk", "parallel_runs", "select_metric", "overwrite",
     "plots", "distributed_timeout"}
)  # fmt: skip


class Checkpointer:
    """Save the latest states of a run and restore the newest complete one."""

    def __init__(self, workdir: str, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        _remove_unfinished(self.directory)
        self.max_to_keep = max_to_keep
        self._kept_warned: set[int] = set()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None,  # old ones are removed by _prune: a failure there is not a failed save
            create=True,
            enable_async_checkpointing=False,
            # Done above, synchronously: orbax's own cleanup runs in a thread that, in a process
            # ending soon after (a refused run, a stop), fails at shutdown with a traceback.
            cleanup_tmp_directories=False,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_round(self) -> int | None:
        return self.manager.latest_step()

    def save(self, round_done: int, state, record: dict) -> None:
        ocp = self._ocp
        try:
            self.manager.save(
                round_done,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
                force=True,
            )
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001 - orbax raises several kinds; the user gets one line
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise OutputError(f"cannot write the checkpoint of round {round_done} in {self.directory} "
                              f"({reason}); {KEPT}") from None  # fmt: skip
        self._prune()

    def _prune(self) -> None:
        """Remove all but the newest ``max_to_keep`` checkpoints. One that cannot be removed (an
        immutable folder, no permission) is kept and named once; the run goes on."""
        for step in sorted(self.manager.all_steps())[: -self.max_to_keep]:
            path = os.path.join(self.directory, str(step))
            doomed = f"{path}.removing"
            try:
                os.rename(path, doomed)  # atomic: never a half-removed checkpoint under a step's name
            except FileNotFoundError:  # --distributed: another process removed it
                continue
            except OSError as err:
                if step not in self._kept_warned:
                    self._kept_warned.add(step)
                    print(f"cannot remove the old checkpoint {path} ({err.strerror or err}); it is kept",
                          file=sys.stderr, flush=True)  # fmt: skip
                continue
            shutil.rmtree(doomed, ignore_errors=True)
        self.manager.reload()

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

    def set_aside(self, step: int, err: Exception, log=print) -> None:
        """Rename checkpoint ``step`` to ``<step>.damaged-<time>`` (kept, not deleted) and forget it."""
        path = os.path.join(self.directory, str(step))
        target = f"{path}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        try:
            os.rename(path, target)
        except OSError as rename_err:
            raise ConfigError(
                f"checkpoint {step} is damaged ({reason}) and cannot be set aside as {target} "
                f"({rename_err.strerror or rename_err}); move {path} away and rerun"
            ) from None
        # Always said (on stderr, --quiet or not): the user must know what was left out.
        print(f"checkpoint {step} is damaged ({reason}); set aside as {target}", file=sys.stderr, flush=True)
        self.manager.reload()

    def restore_newest(self, like_state, log=print):
        """``(round, state, record)`` of the newest checkpoint that restores, setting aside damaged
        ones on the way; ``None`` if there is none (or none left)."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, record = self.restore(step, like_state)
                check_record(record)
                return step, state, record
            except Exception as err:  # noqa: BLE001 - any damage: set it aside, try the next
                self.set_aside(step, err, log)
        return None

    def close(self) -> None:
        self.manager.close()


class DamagedRecord(ValueError):
    """A checkpoint's record that reads as JSON but is not what a run saves."""


def check_record(record) -> None:
    """Raise :class:`DamagedRecord` unless ``record`` has the structure a session's checkpoints
    keep (:meth:`fedem_jax.training.session.Session.record`)."""
    kinds = {"config": dict, "history": list, "round_seconds": list}
    if not isinstance(record, dict):
        raise DamagedRecord(f"its record is a {type(record).__name__}, not a dict")
    for key, kind in kinds.items():
        if not isinstance(record.get(key), kind):
            raise DamagedRecord(f"its record has no {key} {kind.__name__}")
    if not all(isinstance(row, dict) and isinstance(row.get("round"), int) for row in record["history"]):
        raise DamagedRecord("its record's history is not a list of metrics rows")
    if not isinstance(record.get("diverged", {}), dict):
        raise DamagedRecord("its record's diverged runs are not a dict")


def _remove_unfinished(directory: str) -> None:
    """Delete orbax's temporary folders (checkpoints whose writing never finished: a kill) and old
    checkpoints whose removal was cut short."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if ".orbax-checkpoint-tmp" in name or name.endswith(".removing"):
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def check_compatible(saved: dict, current: Config, what: str = "a checkpoint") -> None:
    """Refuse to resume (or overwrite) ``what`` made by a different experiment. A setting absent
    from ``saved`` (a flag added since) counts as unchanged if it has its default."""
    current_dict = current.to_dict()
    defaults = flag_defaults()
    changed = sorted(
        key
        for key in set(saved) | set(current_dict)
        if key not in RESUMABLE_CHANGES and saved.get(key, defaults.get(key)) != current_dict.get(key)
    )
    if changed:
        details = ", ".join(f"--{k} {saved.get(k)!r} -> {current_dict.get(k)!r}" for k in changed)
        raise ConfigError(
            f"--workdir {current.output.workdir!r} holds {what} of a different experiment ({details}); "
            "use another --workdir, the same flags (only --n_rounds may change, to extend a run), "
            "or --overwrite to start over there"
        )


def check_workdir(cfg: Config, log=print, main_process: bool = True) -> None:
    """Before anything is written into the workdir: every path the run writes has the right kind
    (:func:`fedem_jax.training.workdir.check_paths`), and results there belong to this experiment, by its
    newest readable checkpoint, else the ``config.json`` beside them; results that cannot be
    identified are refused. Damaged checkpoints found on the way are set aside. ``--overwrite``
    sets every earlier output aside (``WORKDIR/replaced-<time>/``) and starts over."""
    workdir = cfg.output.workdir
    check_paths(workdir)
    if cfg.output.overwrite:
        if main_process:  # the only one that moves files
            set_aside_outputs(workdir)
        return
    record = newest_record(workdir, log) if os.path.isdir(os.path.join(workdir, "checkpoints")) else None
    if record is not None:
        round_done, saved = record
        check_compatible(saved["config"], cfg)
        if round_done > cfg.training.n_rounds:
            raise ConfigError(
                f"--n_rounds {cfg.training.n_rounds} is below the checkpoint's round {round_done} in "
                f"{os.path.join(workdir, 'checkpoints')}"
            )
        return
    present = results_in(workdir)
    if not present:
        return  # empty, or a start that failed early: rewritten
    saved_config = _saved_config(workdir)
    if saved_config is None:
        raise ConfigError(
            f"--workdir {workdir!r} holds results ({', '.join(present)}) but its config.json is missing "
            "or unreadable, so they cannot be told apart from another experiment's; use another "
            "--workdir, or --overwrite to set them aside (into WORKDIR/replaced-<time>/) and start over"
        )
    check_compatible(saved_config, cfg, "the outputs")


def _saved_config(workdir: str) -> dict | None:
    """The workdir's ``config.json`` as a dict, or None if it is missing, unreadable or not one."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def newest_record(workdir: str, log=print) -> tuple[int, dict] | None:
    """``(round, record)`` of the newest checkpoint whose record reads; unreadable ones set aside."""
    checkpointer = Checkpointer(workdir)
    try:
        for step in sorted(checkpointer.manager.all_steps(), reverse=True):
            try:
                record = checkpointer.restore_record(step)
                check_record(record)
                return step, record
            except Exception as err:  # noqa: BLE001 - any damage: set it aside, try the next
                checkpointer.set_aside(step, err, log)
        return None
    finally:
        checkpointer.close()
