"""Your own federated data, from numpy: ``--dataset npz --data_path PATH``.

Two layouts are accepted:

1. **One file** ``PATH.npz`` with arrays
   - ``x``: ``[N, ...]`` inputs (features ``[N, d]`` or images ``[N, H, W]`` / ``[N, H, W, C]``),
   - ``y``: ``[N]`` integer labels in ``0 .. K-1``,
   - ``client``: ``[N]`` integer client id of each sample,
   - optional ``is_test``: ``[N]`` booleans; without it each client's samples are split at random
     with ``--test_frac``.
2. **A folder** of per-client files ``PATH/*.npz`` (sorted by name; one client each) with ``x`` and
   ``y``, and optionally ``x_test`` and ``y_test``.

Make one with, for example, ``np.savez("mydata.npz", x=x, y=y, client=client_ids)``. Inputs are used
as given (normalise them first). The model is chosen by input shape unless ``--model`` says
otherwise: ``mlp`` for feature vectors, ``cnn`` for images.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from fedem_jax.core.tasks import Task
from fedem_jax.data.federated import FederatedData, assemble, train_test_split
from fedem_jax.data.untrusted import read_npz
from fedem_jax.errors import DataError

FLOAT32_EXACT = 2**24  # the largest integer magnitude float32 holds exactly


def _open(path: str) -> dict:
    """Every array of the file, each header checked before it is read (untrusted input)."""
    return read_npz(path)


def _field(arrays: dict, name: str, path: str) -> np.ndarray:
    if name not in arrays:
        raise DataError(f"{path}: missing field {name!r} (found: {', '.join(sorted(arrays)) or 'none'})")
    return arrays[name]


def _labels(y: np.ndarray, path: str, name: str = "y") -> np.ndarray:
    # Kinds, not np.issubdtype: a timedelta is a subtype of the signed integers there.
    if y.ndim != 1 or y.dtype.kind not in "biu":
        raise DataError(f"{path}: field {name!r} must be a 1-D integer label array, got {y.dtype} {y.shape}")
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: field {name!r} has negative labels")
    if len(y) and int(y.max()) > np.iinfo(np.int32).max:
        raise DataError(f"{path}: field {name!r} has ids beyond int32 (largest {int(y.max())})")
    return y.astype(np.int32)


def _inputs(x: np.ndarray, path: str, name: str = "x") -> np.ndarray:
    """Real numbers (booleans, integers, floats) only: complex inputs are refused, not cast."""
    if not 2 <= x.ndim <= 4 or x.dtype.kind not in "biuf":
        raise DataError(
            f"{path}: field {name!r} must be numeric [N, D] vectors or [N, H, W(, C)] images of real "
            f"numbers, got {x.dtype} {x.shape}"
        )
    if 0 in x.shape[1:]:
        raise DataError(f"{path}: field {name!r} has shape {x.shape}: a sample has no features")
    if x.dtype.kind in "iu" and x.size and max(abs(int(x.min())), abs(int(x.max()))) > FLOAT32_EXACT:
        raise DataError(
            f"{path}: field {name!r} holds integers beyond {FLOAT32_EXACT} ({x.dtype}), which float32 "
            "inputs cannot represent exactly; scale them first"
        )
    bad = ~np.isfinite(x)
    if bad.any():
        count, row = int(bad.sum()), _row(bad)
        raise DataError(f"{path}: field {name!r} has {count} NaN or Inf values (first in row {row})")
    if x.dtype.kind == "f" and x.dtype.itemsize > 4:  # float64 values that float32 would make Inf
        too_large = np.abs(x) > np.finfo(np.float32).max
        if too_large.any():
            raise DataError(
                f"{path}: field {name!r} has {int(too_large.sum())} values beyond float32's range "
                f"(first in row {_row(too_large)}); scale them first"
            )
    x = x.astype(np.float32)
    return x[..., None] if x.ndim == 3 else x  # [N, H, W] images get a channel axis


def _row(mask: np.ndarray) -> int:
    """The first sample (row) where ``mask`` holds."""
    return int(np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))[0])


SPARSE_FACTOR = 10  # more class ids than this many times the labels present: refused (or remapped)


def class_count(ys: list[np.ndarray], path: str, remap: bool) -> tuple[list[np.ndarray], int]:
    """The labels (remapped to 0..K-1 with ``remap``) and the number of classes; ids far sparser
    than the labels present are refused, naming them."""
    present = np.unique(np.concatenate([y for y in ys if len(y)]))
    if remap:
        return [np.searchsorted(present, y).astype(np.int32) for y in ys], max(len(present), 2)
    n_classes = int(present[-1]) + 1
    if n_classes > SPARSE_FACTOR * len(present) and n_classes > 100:
        shown = ", ".join(str(int(v)) for v in present[:8]) + (", ..." if len(present) > 8 else "")
        raise DataError(
            f"{path}: label ids are sparse: {len(present)} distinct labels ({shown}) would make "
            f"{n_classes} classes; remap them to 0..{len(present) - 1} with --remap_labels"
        )
    return ys, max(n_classes, 2)


def _flags(values: np.ndarray, path: str, name: str) -> np.ndarray:
    """A 1-D array of booleans (or of 0 and 1)."""
    ok = values.ndim == 1 and (
        values.dtype.kind == "b" or (values.dtype.kind in "iu" and np.isin(values, (0, 1)).all())
    )
    if not ok:
        raise DataError(
            f"{path}: field {name!r} must be a 1-D array of booleans (or 0/1), "
            f"got {values.dtype} {values.shape}"
        )
    return values.astype(bool)


def _check_pair(x, y, path, names=("x", "y")):
    if len(x) != len(y):
        raise DataError(f"{path}: {names[0]!r} has {len(x)} rows but {names[1]!r} has {len(y)}")


def load_npz(cfg) -> FederatedData:  # cfg: the DataConfig
    path = cfg.data_path
    rng = np.random.default_rng(cfg.data_seed)
    if os.path.isdir(path):
        train, test = _from_folder(path, cfg.test_frac, rng)
    elif os.path.isfile(path):
        train, test = _from_file(path, cfg.test_frac, rng)
    else:
        raise DataError(
            f"--data_path {path!r} does not exist; give a .npz file with x, y, client arrays or a folder of "
            f"per-client .npz files (see docs/guide/datasets.md, 'Your own data')"
        )
    shapes = {x.shape[1:] for x in train[0] + test[0]}
    if len(shapes) > 1:
        raise DataError(f"{path}: clients have different input shapes {sorted(shapes)}")
    ys, n_classes = class_count(train[1] + test[1], path, cfg.remap_labels)
    n_train = len(train[1])
    train, test = (train[0], ys[:n_train]), (test[0], ys[n_train:])
    return assemble(
        "npz",
        Task(num_classes=n_classes),
        train,
        test,
        val_frac=cfg.val_frac,
        unseen_frac=cfg.test_clients_frac,
        rng=rng,
    )


def _from_file(path, test_frac, rng):
    arrays = _open(path)
    x = _inputs(_field(arrays, "x", path), path)
    y = _labels(_field(arrays, "y", path), path)
    client = _labels(_field(arrays, "client", path), path, "client")
    _check_pair(x, y, path)
    _check_pair(x, client, path, ("x", "client"))
    clients = [np.flatnonzero(client == c) for c in np.unique(client)]
    if "is_test" in arrays:
        is_test = _flags(arrays["is_test"], path, "is_test")
        _check_pair(x, is_test, path, ("x", "is_test"))
        train_idx = [idx[~is_test[idx]] for idx in clients]
        test_idx = [idx[is_test[idx]] for idx in clients]
        keep = [i for i, (a, b) in enumerate(zip(train_idx, test_idx, strict=True)) if len(a) and len(b)]
        dropped = len(clients) - len(keep)
        train_idx, test_idx = [train_idx[i] for i in keep], [test_idx[i] for i in keep]
    else:
        train_idx, test_idx, dropped = train_test_split(clients, test_frac, rng)
    _warn_dropped(dropped, len(clients), path)
    if not train_idx:
        raise DataError(f"{path}: no client has both training and test samples")
    return ([x[i] for i in train_idx], [y[i] for i in train_idx]), (
        [x[i] for i in test_idx],
        [y[i] for i in test_idx],
    )


def _from_folder(path, test_frac, rng):
    files = sorted(glob.glob(os.path.join(path, "*.npz")))
    if not files:
        raise DataError(f"--data_path {path!r}: folder has no .npz files")
    train, test, dropped = ([], []), ([], []), 0
    for file in files:
        arrays = _open(file)
        x, y = _inputs(_field(arrays, "x", file), file), _labels(_field(arrays, "y", file), file)
        _check_pair(x, y, file)
        if "x_test" in arrays or "y_test" in arrays:
            x_test = _inputs(_field(arrays, "x_test", file), file, "x_test")
            y_test = _labels(_field(arrays, "y_test", file), file, "y_test")
            _check_pair(x_test, y_test, file, ("x_test", "y_test"))
            parts = ((x, y), (x_test, y_test)) if len(y) and len(y_test) else None
        else:
            tr, te, bad = train_test_split([np.arange(len(y))], test_frac, rng)
            parts = ((x[tr[0]], y[tr[0]]), (x[te[0]], y[te[0]])) if not bad else None
        if parts is None:
            dropped += 1
            continue
        for split, (xs, ys) in zip((train, test), parts, strict=True):
            split[0].append(xs)
            split[1].append(ys)
    _warn_dropped(dropped, len(files), path)
    if not train[0]:
        raise DataError(f"{path}: no client has both training and test samples")
    return train, test


def _warn_dropped(dropped: int, total: int, path: str) -> None:
    if dropped:
        import warnings

        warnings.warn(
            f"{path}: dropped {dropped} of {total} clients with too few samples for a train/test split",
            stacklevel=3,
        )
