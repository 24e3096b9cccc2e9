"""``--init_from``: start every component from weights in a local file (e.g. pretrained ones).

The file holds one component's variables, either as ``.npz`` whose keys are ``/``-joined paths
(``Dense_0/kernel``, or ``params/Conv_0/kernel`` and ``batch_stats/...`` for BatchNorm models) or
as a flax msgpack file (``flax.serialization.to_bytes`` of the same nested dict), or a torchvision
MobileNetV2 state dict (``.pth``, see :mod:`fedem_jax.models.torch_weights`). Every leaf whose
path is in the file is replaced in all M components; leaves not in the file keep their random
initialisation (a new classifier head, for instance; different per component, so the components
still differ). A leaf with the wrong shape is an error that names it.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from fedem_jax.data.untrusted import read_npz, require_real_floats
from fedem_jax.errors import DataError
from fedem_jax.models.torch_weights import mobilenet_v2_weights, read_torch_state_dict


def _flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(path): value for path, value in traverse_util.flatten_dict(tree).items()}


def save_component(component, path: str) -> None:
    """Write one component's variables (no learner axis) as ``.npz`` for ``--init_from``."""
    np.savez(path, **{key: np.asarray(value) for key, value in _flat(component).items()})


def load_weights(path: str) -> dict[str, np.ndarray]:
    """``{path: array}`` from an ``.npz``, flax msgpack, or torchvision MobileNetV2 ``.pth`` file,
    read as untrusted input: every leaf must be a finite real floating-point array."""
    if not os.path.isfile(path):
        raise DataError(f"--init_from: no file {path!r}")
    if path.endswith((".pth", ".pt")):  # read without torch; the classifier head stays new
        weights = mobilenet_v2_weights(read_torch_state_dict(path), path)
    elif path.endswith(".npz"):
        weights = read_npz(path, "--init_from")
    else:
        weights = _read_msgpack(path)
    for key, value in weights.items():
        require_real_floats(value, f"--init_from {path}: {key}")
    return weights


def _read_msgpack(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as handle:
            tree = serialization.msgpack_restore(handle.read())
        if not isinstance(tree, dict):
            raise ValueError(f"the file holds a {type(tree).__name__}, not a dict of arrays")
        return _flat(tree)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise DataError(f"--init_from: cannot read {path!r} as .npz or flax msgpack ({reason})") from None


def apply_weights(stacked, weights: dict[str, np.ndarray], path: str = "") -> tuple[object, int]:
    """``stacked`` (leaves ``[M, ...]``) with every leaf found in ``weights`` replaced in all
    components; returns ``(new_stacked, n_replaced)``."""
    has_collections = isinstance(stacked, dict) and "params" in stacked
    normalised = {}
    for key, value in weights.items():
        if not has_collections and key.startswith("params/"):
            key = key[len("params/") :]
        normalised[key] = value
    flat = _flat(stacked)
    replaced = 0
    for key, leaf in flat.items():
        if key not in normalised:
            continue
        value = np.asarray(normalised[key])
        if value.shape != leaf.shape[1:]:
            raise DataError(
                f"--init_from {path}: {key} has shape {value.shape}, the model needs {leaf.shape[1:]}"
            )
        flat[key] = jnp.broadcast_to(jnp.asarray(value, leaf.dtype), leaf.shape)
        replaced += 1
    if not replaced:
        raise DataError(
            f"--init_from {path}: no parameter of the model is in the file "
            f"(file keys like {sorted(normalised)[:3]}, model keys like {sorted(flat)[:3]})"
        )
    nested = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    return jax.tree.map(lambda x: x, nested), replaced
