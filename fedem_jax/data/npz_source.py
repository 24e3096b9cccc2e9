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
import zipfile

import numpy as np

from fedem_jax.core.tasks import Task
from fedem_jax.data.federated import DataError, FederatedData, assemble, train_test_split


def _open(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None


def _field(arrays: dict, name: str, path: str) -> np.ndarray:
    if name not in arrays:
        raise DataError(f"{path}: missing field {name!r} (found: {', '.join(sorted(arrays)) or 'none'})")
    return arrays[name]


def _labels(y: np.ndarray, path: str, name: str = "y") -> np.ndarray:
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        raise DataError(f"{path}: field {name!r} must be a 1-D integer label array, got {y.dtype} {y.shape}")
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: field {name!r} has negative labels")
    if len(y) and int(y.max()) > np.iinfo(np.int32).max:
        raise DataError(f"{path}: field {name!r} has ids beyond int32 (largest {int(y.max())})")
    return y.astype(np.int32)


def _inputs(x: np.ndarray, path: str, name: str = "x") -> np.ndarray:
    if not 2 <= x.ndim <= 4 or not np.issubdtype(x.dtype, np.number):
        raise DataError(
            f"{path}: field {name!r} must be numeric [N, D] vectors or [N, H, W(, C)] images, "
            f"got {x.dtype} {x.shape}"
        )
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))[0])
        raise DataError(f"{path}: field {name!r} has {int(bad.sum())} NaN or Inf values (first in row {row})")
    return x[..., None] if x.ndim == 3 else x  # [N, H, W] images get a channel axis


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
            f"per-client .npz files (see README, 'Your own data')"
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
        is_test = arrays["is_test"].astype(bool)
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
