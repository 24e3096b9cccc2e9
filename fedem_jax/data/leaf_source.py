"""FEMNIST and Shakespeare from LEAF-format JSON (Caldas et al., "LEAF: A Benchmark for Federated
Settings", 2018), which the user prepares offline.

A LEAF file is a JSON object ``{"users": [...], "num_samples": [...], "user_data": {user: {"x":
[...], "y": [...]}}}``. ``--data_path`` names one such file or a folder; every ``*.json`` under
the folder is read and a user found in several files (LEAF's own train/test files) has its
samples concatenated in file-name order.

- ``femnist``: ``x`` is 784 floats per sample (a 28x28 image), ``y`` an int in ``[0, 62)``. One
  client per writer; ``--data_frac`` (0.15 in ``configs/femnist.py``) of the writers are kept at
  random; each client's samples are split 80/20 at random.
- ``shakespeare``: ``x`` is an 80-character string, ``y`` the next character. One client per
  (play, role); the samples stay in text order and the first 80 % are train, the last 20 % test.
  Characters map to their index in ``string.printable`` (100 characters); the target at each
  position is the next character (``x[1:] + y``).
"""

from __future__ import annotations

import glob
import json
import os
import string
import warnings

import numpy as np

from fedem_jax.core.tasks import Task
from fedem_jax.data.federated import FederatedData, assemble, train_test_split
from fedem_jax.errors import DataError

VOCABULARY = string.printable  # 100 characters
SEQUENCE_LENGTH = 80
FEMNIST_CLASSES = 62


def how_to_prepare(name: str, path: str) -> str:
    return (
        f"no LEAF JSON for {name} at {path!r}. Prepare it with LEAF (github.com/TalwalkarLab/leaf) "
        f"on a machine with internet:\n"
        f"  cd leaf/data/{name} && ./preprocess.sh -s niid --sf 1.0 -k 0 -t sample\n"
        f"then pass --data_path leaf/data/{name}/data (a folder of *.json files) or one .json file."
    )


def read_leaf(name: str, path: str) -> dict[str, tuple[list, list]]:
    """``{user: (x list, y list)}`` from a LEAF JSON file or folder, users in first-seen order."""
    if not path or not os.path.exists(path):
        raise DataError(how_to_prepare(name, path))
    files = (
        [path]
        if os.path.isfile(path)
        else sorted(glob.glob(os.path.join(path, "**", "*.json"), recursive=True))
    )
    if not files:
        raise DataError(how_to_prepare(name, path))
    users: dict[str, tuple[list, list]] = {}
    for file in files:
        try:
            with open(file) as handle:
                content = json.load(handle)
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{file}: not readable as JSON ({err})") from None
        if not isinstance(content, dict):
            raise DataError(f"{file}: expected a JSON object with 'users' and 'user_data'")
        for field in ("users", "user_data"):
            if field not in content:
                raise DataError(
                    f"{file}: missing field {field!r} (a LEAF file has users, num_samples, user_data)"
                )
        if not isinstance(content["users"], list) or not isinstance(content["user_data"], dict):
            raise DataError(f"{file}: 'users' must be a list of names and 'user_data' an object by name")
        for user in content["users"]:
            record = content["user_data"].get(user) if isinstance(user, str) else None
            if not isinstance(record, dict) or "x" not in record or "y" not in record:
                raise DataError(f"{file}: user_data[{user!r}] must have fields 'x' and 'y'")
            if not isinstance(record["x"], list) or not isinstance(record["y"], list):
                raise DataError(
                    f"{file}: user_data[{user!r}]: 'x' and 'y' must be lists, one entry per sample"
                )
            if len(record["x"]) != len(record["y"]):
                raise DataError(f"{file}: user_data[{user!r}]: {len(record['x'])} x but {len(record['y'])} y")
            xs, ys = users.setdefault(user, ([], []))
            xs.extend(record["x"])
            ys.extend(record["y"])
    if not users:
        raise DataError(f"{name}: no users in {path}")
    return users


def load_femnist(cfg) -> FederatedData:  # cfg: the DataConfig
    users = read_leaf("femnist", cfg.data_path)
    rng = np.random.default_rng(cfg.data_seed)
    names = list(users)
    n_keep = max(1, int(round(cfg.data_frac * len(names))))
    kept = sorted(rng.choice(len(names), size=n_keep, replace=False))
    images, labels, clients, start = [], [], [], 0
    for i in kept:
        xs, ys = users[names[i]]
        try:
            x = np.asarray(xs, np.float32).reshape(len(xs), 28, 28, 1)
            y_raw = np.asarray(ys)
            if y_raw.size and (y_raw.dtype.kind not in "iub"):  # 3.0 or "3": not a class id
                raise TypeError
            y = y_raw.astype(np.int32).reshape(len(ys))
        except (ValueError, TypeError, OverflowError):
            raise DataError(
                f"femnist: user {names[i]!r}: x must be 784 numbers per sample and y one integer class id"
            ) from None
        if not np.isfinite(x).all():
            raise DataError(f"femnist: user {names[i]!r}: x has NaN or Inf values")
        if y.size and (y.min() < 0 or y.max() >= FEMNIST_CLASSES):
            raise DataError(f"femnist: user {names[i]!r}: y must be in [0, {FEMNIST_CLASSES})")
        images.append(x)
        labels.append(y)
        clients.append(np.arange(start, start + len(y)))
        start += len(y)
    images, labels = np.concatenate(images), np.concatenate(labels)
    train_idx, test_idx, dropped = train_test_split(clients, cfg.test_frac, rng)
    _warn_dropped("femnist", dropped, len(clients))
    return _assemble(cfg, "femnist", Task(FEMNIST_CLASSES), images, labels, train_idx, test_idx, rng)


def encode(text: str, unknown: list) -> np.ndarray:
    """Character ids in ``VOCABULARY``; characters outside it become a space (counted)."""
    ids = [VOCABULARY.find(ch) for ch in text]
    unknown[0] += sum(i < 0 for i in ids)
    return np.array([i if i >= 0 else VOCABULARY.index(" ") for i in ids], np.int32)


def load_shakespeare(cfg) -> FederatedData:  # cfg: the DataConfig
    users = read_leaf("shakespeare", cfg.data_path)
    rng = np.random.default_rng(cfg.data_seed)
    inputs, targets, train_idx, test_idx, dropped, unknown, start = [], [], [], [], 0, [0], 0
    for user, (xs, ys) in users.items():
        if len(xs) < 2:
            dropped += 1
            continue
        for x, y in zip(xs, ys, strict=True):
            if not isinstance(x, str) or len(x) != SEQUENCE_LENGTH or not isinstance(y, str) or len(y) != 1:
                raise DataError(
                    f"shakespeare: user {user!r}: each x must be a {SEQUENCE_LENGTH}-character string "
                    "and each y one character"
                )
            ids = encode(x + y, unknown)
            inputs.append(ids[:-1])
            targets.append(ids[1:])
        n = len(xs)
        n_train = min(max(1, int(round((1 - cfg.test_frac) * n))), n - 1)  # time order: no shuffle
        train_idx.append(np.arange(start, start + n_train))
        test_idx.append(np.arange(start + n_train, start + n))
        start += n
    _warn_dropped("shakespeare", dropped, len(users))
    if unknown[0]:
        warnings.warn(
            f"shakespeare: {unknown[0]} characters outside string.printable read as spaces", stacklevel=2
        )
    if not train_idx:
        raise DataError("shakespeare: no client has at least 2 samples")
    task = Task(len(VOCABULARY), sequence=True)
    return _assemble(cfg, "shakespeare", task, np.stack(inputs), np.stack(targets), train_idx, test_idx, rng)


def _warn_dropped(name: str, dropped: int, total: int) -> None:
    if dropped:
        warnings.warn(
            f"{name}: dropped {dropped} of {total} clients with too few samples for a train/test split",
            stacklevel=3,
        )


def _assemble(cfg, name, task, x, y, train_idx, test_idx, rng) -> FederatedData:
    if not train_idx:
        raise DataError(f"{name}: no client has enough samples for a train/test split")
    return assemble(
        name,
        task,
        ([x[i] for i in train_idx], [y[i] for i in train_idx]),
        ([x[i] for i in test_idx], [y[i] for i in test_idx]),
        val_frac=cfg.val_frac,
        unseen_frac=cfg.test_clients_frac,
        rng=rng,
    )
