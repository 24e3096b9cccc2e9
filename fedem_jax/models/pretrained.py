"""``--init_from``: start the components from weights in a local file (e.g. pretrained ones).

The file holds variables as ``.npz`` whose keys are ``/``-joined paths (``Dense_0/kernel``, or
``params/Conv_0/kernel`` and ``batch_stats/...`` for BatchNorm models), as a flax msgpack file
(``flax.serialization.to_bytes`` of the same nested dict), or a torchvision MobileNetV2 state dict
(``.pth``, see :mod:`fedem_jax.models.torch_weights`), in one of two forms:

- **one set** (leaves shaped like one component's, :func:`save_component`): copied into all M
  components;
- **one set per component** (every leaf with a leading component axis of size M, stacked as the
  state holds them, :func:`save_components`): component m starts from slice m. Starting two
  implementations from identical weights per component is how fidelity is checked.

The form is told by each leaf's rank, so it cannot be mistaken; a file mixing the two forms, or
stacking another number of components than ``--n_learners``, is refused with one line. Leaves
not in the file keep their random initialisation (a new classifier head, for instance; different
per component, so the components still differ). A leaf with the wrong shape is an error that
names it.
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


def save_components(stacked, path: str) -> None:
    """Write M components' variables (leaves ``[M, ...]``, as the state holds them) as ``.npz``
    for ``--init_from``: component m of the run starts from slice m."""
    save_component(stacked, path)  # the same file format; the leading axis tells the form


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
    """``stacked`` (leaves ``[M, ...]``) with every leaf found in ``weights`` replaced: in all
    components (one set) or per component (one set per component); returns
    ``(new_stacked, n_replaced)``."""
    where = f"--init_from {path}"
    normalised = _normalised(weights, isinstance(stacked, dict) and "params" in stacked)
    flat = _flat(stacked)
    found = {key: (np.asarray(normalised[key]), leaf) for key, leaf in flat.items() if key in normalised}
    if not found:
        raise DataError(
            f"{where}: no parameter of the model is in the file "
            f"(file keys like {sorted(normalised)[:3]}, model keys like {sorted(flat)[:3]})"
        )
    per_component = {key for key, (value, leaf) in found.items() if value.ndim == leaf.ndim}
    if per_component and len(per_component) < len(found):
        single = sorted(set(found) - per_component)[0]
        raise DataError(
            f"{where}: mixes one set of weights ({single}) with one per component "
            f"({sorted(per_component)[0]}); give every leaf in one form"
        )
    for key, (value, leaf) in found.items():
        flat[key] = _component_values(key, value, leaf, bool(per_component), where)
    nested = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    return jax.tree.map(lambda x: x, nested), len(found)


def _normalised(weights: dict[str, np.ndarray], has_collections: bool) -> dict[str, np.ndarray]:
    """Keys as the model's: ``params/`` dropped for a model without other collections."""
    return {
        key[len("params/") :] if not has_collections and key.startswith("params/") else key: value
        for key, value in weights.items()
    }


def _component_values(key: str, value: np.ndarray, leaf, per_component: bool, where: str):
    """The ``[M, ...]`` leaf from the file's value: broadcast (one set) or as stacked."""
    n_learners, shape = leaf.shape[0], leaf.shape[1:]
    if per_component:
        if value.shape[1:] != shape:
            raise DataError(f"{where}: {key} has shape {value.shape}, the model needs [M, *{shape}]")
        if value.shape[0] != n_learners:
            raise DataError(
                f"{where}: {key} holds {value.shape[0]} components; this run has --n_learners {n_learners}"
            )
        return jnp.asarray(value, leaf.dtype)
    if value.shape != shape:
        raise DataError(f"{where}: {key} has shape {value.shape}, the model needs {shape}")
    return jnp.broadcast_to(jnp.asarray(value, leaf.dtype), leaf.shape)
