"""What a run writes into its workdir, in formats a person or a script can read and plot.

- ``config.json``   the resolved configuration;
- ``metrics.jsonl`` one JSON object per evaluated round;
- ``tb/``           TensorBoard event files with the same scalars (tensorboardX: no TensorFlow);
- ``clients.csv``   per-client sample counts, accuracies and mixture weights, at the end;
- ``clients.jsonl`` per-client accuracy, loss and mixture weights at every evaluation (a line
  per evaluation, per run in a sweep);
- ``summary.json``  the final evaluation and timings.

Whole files are written atomically (a temporary file, synced, then renamed) and ``metrics.jsonl``
is appended a whole line at a time; a failed write raises :class:`OutputError` (one line).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os

import numpy as np

from fedem_jax.errors import OutputError

TIMING_KEYS = ("seconds_per_round", "eval_seconds")
KEPT = "what is already on disk (checkpoints included) is kept: fix it and rerun the same command to resume"


def _failed(path: str, err: OSError) -> OutputError:
    return OutputError(f"cannot write {path} ({err.strerror or err}); {KEPT}")


@contextlib.contextmanager
def atomic_open(path: str, newline: str | None = None):
    """Write ``path`` whole or not at all: into ``path.tmp``, flushed and synced, then renamed."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise _failed(path, err) from None


class MetricsWriter:
    """Appends evaluated rounds to ``metrics.jsonl`` and per-client values to ``clients.jsonl``.

    On resume the rows up to the checkpoint are rewritten first, so the files never hold rows of
    rounds that the resumed run will compute again.
    """

    def __init__(self, workdir: str, previous_rows: list[dict], start_round: int):
        self.path = os.path.join(workdir, "metrics.jsonl")
        with atomic_open(self.path) as f:
            for row in previous_rows:
                f.write(json.dumps(row) + "\n")
        try:
            self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        except OSError as err:
            raise _failed(self.path, err) from None
        self.clients_path = os.path.join(workdir, "clients.jsonl")
        kept = []
        if start_round:
            kept = [r for r in read_jsonl(self.clients_path) if _round_of(r) <= start_round]
        with atomic_open(self.clients_path) as f:
            for record in kept:
                f.write(_compact(record))
        try:
            self._clients = open(self.clients_path, "a")  # noqa: SIM115 - closed in close()
        except OSError as err:
            raise _failed(self.clients_path, err) from None

    def write(self, row: dict) -> None:
        """Append one row (whole lines: the file is flushed after each)."""
        try:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        except OSError as err:
            raise _failed(self.path, err) from None

    def write_clients(self, records: list[dict]) -> None:
        """Append one evaluation's per-client records (one line per run)."""
        try:
            for record in records:
                self._clients.write(_compact(record))
            self._clients.flush()
        except OSError as err:
            raise _failed(self.clients_path, err) from None

    def close(self) -> None:
        self._file.close()
        self._clients.close()


class TensorBoardWriter:
    """The scalars of every metrics row as TensorBoard events in ``WORKDIR/tb`` (tensorboardX: no
    TensorFlow); a sweep's runs are groups ``run<i>/``. Events after ``start_round`` are purged."""

    def __init__(self, workdir: str, start_round: int):
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start_round + 1)

    def write(self, row: dict) -> None:
        prefix = f"run{row['run']}/" if "run" in row else ""
        for key, value in row.items():
            if key not in ("round", "run") and isinstance(value, float | int):
                self._tb.add_scalar(prefix + key.replace("_", "/", 1), value, row["round"])
        self._tb.flush()

    def close(self) -> None:
        self._tb.close()


def _round_of(record) -> float:
    """A record's round; one without (edited by hand, another file) sorts after every round."""
    ok = isinstance(record, dict) and isinstance(record.get("round"), int)
    return record["round"] if ok else float("inf")


def _compact(record: dict) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


def read_jsonl(path: str) -> list[dict]:
    """The whole lines of a JSON-lines file (a last line cut by a crash is dropped)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                break
    return records


def write_config(workdir: str, cfg) -> None:
    with atomic_open(os.path.join(workdir, "config.json")) as f:
        json.dump(cfg.to_dict(), f, indent=2)


def write_json(workdir: str, name: str, payload: dict) -> None:
    with atomic_open(os.path.join(workdir, name)) as f:
        json.dump(payload, f, indent=2)


def write_clients_csv(
    workdir: str, stats: list, pis: list, runs: list[dict] | None = None, clients=None
) -> None:
    """One row per client (per run of a sweep, with a ``run`` column first): counts, train/test
    accuracy and its mixture weights ``pi``. ``stats``: per run ``(train, test)`` per-client stats;
    ``clients``: the evaluated clients' indices in the federation (default: all, in order)."""
    n_learners = np.asarray(pis[0]).shape[1]
    with atomic_open(os.path.join(workdir, "clients.csv"), newline="") as f:
        writer = csv.writer(f)
        run_column = [] if runs is None else ["run"]
        writer.writerow(
            run_column + ["client", "n_train", "n_test", "train_accuracy", "test_accuracy"]
            + [f"pi_{m}" for m in range(n_learners)]
        )  # fmt: skip
        for run, ((train_stats, test_stats), pi) in enumerate(zip(stats, pis, strict=True)):
            pi = np.asarray(pi)
            for c in range(pi.shape[0]):
                n_train, n_test = int(train_stats["count"][c]), int(test_stats["count"][c])
                writer.writerow(
                    ([] if runs is None else [run])
                    + [c if clients is None else int(clients[c]), n_train, n_test]
                    + [f"{float(train_stats['correct'][c]) / max(n_train, 1):.6f}"]
                    + [f"{float(test_stats['correct'][c]) / max(n_test, 1):.6f}"]
                    + [f"{p:.6f}" for p in pi[c]]
                )


def mean_entropy(pi: np.ndarray) -> float:
    """Mean over clients of ``-sum_m pi_m log pi_m`` (0: one component; log M: uniform)."""
    pi = np.asarray(pi, np.float64)
    return float(np.mean(-np.sum(np.where(pi > 0, pi * np.log(np.maximum(pi, 1e-300)), 0.0), axis=1)))
