"""PyTorch checkpoints for ``--init_from``, read without importing torch, and torchvision's
MobileNetV2 mapped onto fedem_jax's (``fedem_jax.models.mobilenet``).

A ``torch.save`` file (``.pth`` / ``.pt``, the zip format of PyTorch >= 1.6) is a zip archive: a
pickle (``<name>/data.pkl``) whose tensors point at raw storages (``<name>/data/<key>``). It is
read with a restricted unpickler that builds only ordered dicts and tensors (as NumPy arrays); any
other object in the pickle (code, modules, classes) is refused with a message, so loading never
runs code from the file.

``torchvision.models.mobilenet_v2().state_dict()`` maps name by name: ``features.0`` is the first
``ConvBNReLU6``, ``features.1 .. 17`` the inverted residual blocks (``conv.0``, ``conv.1`` the
ConvBNReLU6 layers, ``conv.2`` + ``conv.3`` the linear projection and its BatchNorm; without an
expansion ``conv.0`` and ``conv.1`` + ``conv.2``), ``features.18`` the last 1x1 convolution and
``classifier.1`` the head. Convolution kernels go from ``[out, in, kh, kw]`` to ``[kh, kw, in, out]``,
BatchNorm's weight/bias/running mean/running variance to scale/bias/mean/var. The head is left
out unless asked for: the reference puts a new classifier on the pretrained body, different in
each component.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import pickle
import zipfile

import numpy as np

from fedem_jax.data.untrusted import check_fits, host_memory_budget, require_real_floats
from fedem_jax.errors import DataError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _Storage:
    """One storage's raw elements, as read from ``<prefix>/data/<key>``."""

    def __init__(self, key: str, elements: np.ndarray):
        self.key, self.elements = key, elements


@dataclasses.dataclass(frozen=True)
class _TensorView:
    """What ``torch._utils._rebuild_tensor_v2`` was asked to build: checked before it is built."""

    storage: object
    offset: object
    size: object
    stride: object


def _rebuild_tensor(storage, offset, size, stride, *_):
    return _TensorView(storage, offset, size, stride)


def _rebuild_parameter(data, *_):
    return data


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _materialise(view: _TensorView, where: str, budget) -> np.ndarray:
    """The tensor ``view`` describes, as a NumPy array, after checking that every element it
    addresses lies inside its storage (a view reaching past it would read or crash on memory
    that is not the file's) and that the result fits in memory."""
    storage = view.storage
    if not isinstance(storage, _Storage):
        raise DataError(f"{where}: its storage is not one of the file's storages")
    size, stride = view.size, view.stride
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)):
        raise DataError(f"{where}: size {size!r} and stride {stride!r} are not tuples of one length")
    if not (_is_count(view.offset) and all(map(_is_count, size)) and all(map(_is_count, stride))):
        raise DataError(
            f"{where}: negative or non-integer offset {view.offset!r}, size {size} or stride {stride}"
        )
    elements = storage.elements
    numel = math.prod(size)
    check_fits(where, numel * elements.dtype.itemsize, budget)
    if numel == 0:
        return np.zeros(size, elements.dtype)
    last = view.offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= len(elements):
        raise DataError(
            f"{where}: offset {view.offset}, size {size} and stride {stride} reach element {last} of "
            f"storage {storage.key!r}, which holds {len(elements)}"
        )
    itemsize = elements.dtype.itemsize
    strided = np.lib.stride_tricks.as_strided(
        elements[view.offset :], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.array(strided)


class _TensorsOnly(pickle.Unpickler):
    """Unpickles ordered dicts of tensors, and nothing else."""

    def __init__(self, handle, archive: zipfile.ZipFile, prefix: str, path: str, budget):
        super().__init__(handle)
        self.archive, self.prefix, self.path, self.budget = archive, prefix, path, budget
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise DataError(
            f"--init_from {self.path}: refused: the file holds {module}.{name}, not only tensors "
            "(a state_dict is expected; nothing in the file is run)"
        )

    def persistent_load(self, pid):
        """A storage ``("storage", type, key, location, numel)``: its member's size must be
        exactly ``numel`` elements of its type, checked before the member is read."""
        where = f"--init_from {self.path}"
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise DataError(f"{where}: unknown persistent object {str(pid)[:80]}")
        _, dtype, key, _location, numel = pid
        if dtype not in _STORAGE_DTYPES.values() or not isinstance(key, str) or not _is_count(numel):
            raise DataError(f"{where}: malformed storage record {str(pid)[:80]}")
        if key in self.storages:  # tensors sharing one storage
            return self.storages[key]
        member = f"{self.prefix}/data/{key}"
        try:
            info = self.archive.getinfo(member)
        except KeyError:
            raise DataError(f"{where}: storage {key!r} is missing from the archive") from None
        itemsize = np.dtype(dtype).itemsize
        check_fits(f"{where}: storage {key!r}", numel * itemsize, self.budget)
        if info.file_size != numel * itemsize:
            raise DataError(f"{where}: storage {key!r} declares {numel} elements of {np.dtype(dtype)} "
                            f"({numel * itemsize} bytes) but holds {info.file_size} bytes")  # fmt: skip
        raw = self.archive.read(member)
        self.storages[key] = _Storage(key, np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")))
        return self.storages[key]


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """``{name: array}`` of a ``torch.save``-d state dict, without torch; every tensor's view is
    checked against its storage before it is built (the file is untrusted input)."""
    where = f"--init_from {path}"
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(
            f"{where}: not a zip-format torch checkpoint ({err}); save it with PyTorch >= 1.6"
        ) from None
    budget = host_memory_budget()
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise DataError(f"{where}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("/data.pkl")]
        try:
            with archive.open(pickles[0]) as handle:
                state = _TensorsOnly(handle, archive, prefix, path, budget).load()
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged pickle gets one clear message
            raise DataError(f"{where}: cannot read the checkpoint ({err})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, _TensorView) for v in state.values()):
        raise DataError(f"{where}: expected a state_dict of tensors")
    return {
        str(name): _materialise(view, f"{where}: tensor {name!r}", budget) for name, view in state.items()
    }


def _conv(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 1, 0))  # [out, in, kh, kw] -> [kh, kw, in, out]


def _conv_bn(state, conv: str, bn: str, target: str) -> dict[str, np.ndarray]:
    """One convolution and its BatchNorm as fedem_jax's ``ConvBNReLU6`` at ``target``."""
    _require(state, f"{conv}.weight", f"{bn}.weight", f"{bn}.bias", f"{bn}.running_mean", f"{bn}.running_var")
    return {
        f"params/{target}/Conv_0/kernel": _conv(_conv_weight(state, f"{conv}.weight")),
        f"params/{target}/BatchNorm_0/scale": state[f"{bn}.weight"],
        f"params/{target}/BatchNorm_0/bias": state[f"{bn}.bias"],
        f"batch_stats/{target}/BatchNorm_0/mean": state[f"{bn}.running_mean"],
        f"batch_stats/{target}/BatchNorm_0/var": state[f"{bn}.running_var"],
    }


class _MissingTensor(KeyError):
    pass


def _require(state: dict, *names: str) -> None:
    missing = [name for name in names if name not in state]
    if missing:
        raise _MissingTensor(missing[0])


def _conv_weight(state, name: str) -> np.ndarray:
    weight = state[name]
    if np.ndim(weight) != 4:
        raise DataError(f"tensor {name!r} has shape {np.shape(weight)}, a convolution kernel is 4-D")
    return weight


def mobilenet_v2_weights(
    state: dict[str, np.ndarray], path: str = "", include_head: bool = False
) -> dict[str, np.ndarray]:
    """fedem_jax MobileNetV2 variables (``/``-joined paths) from a torchvision state dict
    (``path``: the file, named in errors)."""
    where = f"--init_from {path}".strip()
    if "features.0.0.weight" not in state:
        raise DataError(
            f"{where}: the .pth file is not a torchvision MobileNetV2 state_dict "
            "(no features.0.0.weight); only that model is mapped"
        )
    try:
        weights = _mobilenet_v2(state, include_head)
    except _MissingTensor as missing:
        raise DataError(
            f"{where}: the torchvision MobileNetV2 state_dict has no tensor {missing.args[0]!r} "
            "(a partial state_dict?)"
        ) from None
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
    for key, value in weights.items():  # before the cast to the model's float32
        require_real_floats(value, f"{where}: {key}")
    return {k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}


def _mobilenet_v2(state: dict[str, np.ndarray], include_head: bool) -> dict[str, np.ndarray]:
    blocks = sorted(
        {int(k.split(".")[1]) for k in state if k.startswith("features.") and k.split(".")[1].isdigit()}
    )
    out = _conv_bn(state, "features.0.0", "features.0.1", "ConvBNReLU6_0")
    for index in blocks[1:-1]:
        p, target = f"features.{index}.conv", f"InvertedResidual_{index - 1}"
        layers = ["0", "1"] if f"{p}.3.weight" in state else ["0"]
        for j, layer in enumerate(layers):
            out.update(_conv_bn(state, f"{p}.{layer}.0", f"{p}.{layer}.1", f"{target}/ConvBNReLU6_{j}"))
        project = len(layers)
        out.update(_conv_bn(state, f"{p}.{project}", f"{p}.{project + 1}", f"{target}/ConvBNReLU6_{project}"))
    last = blocks[-1]
    out.update(_conv_bn(state, f"features.{last}.0", f"features.{last}.1", "ConvBNReLU6_1"))
    if include_head:
        _require(state, "classifier.1.weight", "classifier.1.bias")
        out["params/Dense_0/kernel"] = state["classifier.1.weight"].T
        out["params/Dense_0/bias"] = state["classifier.1.bias"]
    return out
