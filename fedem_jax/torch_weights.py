"""PyTorch checkpoints for ``--init_from``, read without importing torch, and torchvision's
MobileNetV2 mapped onto fedem_jax's (``fedem_jax.mobilenet``).

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
import pickle
import zipfile

import numpy as np

from fedem_jax.data.federated import DataError

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


def _rebuild_tensor(storage, offset, size, stride, *_):
    """``torch._utils._rebuild_tensor_v2`` as a NumPy array (a copy of the strided view)."""
    itemsize = storage.dtype.itemsize
    if not size:  # a 0-d tensor (BatchNorm's num_batches_tracked)
        return np.array(storage[offset])
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


def _rebuild_parameter(data, *_):
    return data


class _TensorsOnly(pickle.Unpickler):
    """Unpickles ordered dicts of tensors, and nothing else."""

    def __init__(self, handle, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(handle)
        self.archive, self.prefix, self.path = archive, prefix, path

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
        kind, dtype, key, _location, _numel = pid
        if kind != "storage":
            raise DataError(f"--init_from {self.path}: unknown persistent object {kind!r}")
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """``{name: array}`` of a ``torch.save``-d state dict, without torch."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise DataError(
            f"--init_from {path}: not a zip-format torch checkpoint ({err}); save it with PyTorch >= 1.6"
        ) from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise DataError(f"--init_from {path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("/data.pkl")]
        with archive.open(pickles[0]) as handle:
            try:
                state = _TensorsOnly(handle, archive, prefix, path).load()
            except DataError:
                raise
            except Exception as err:  # noqa: BLE001 - a damaged pickle gets one clear message
                raise DataError(f"--init_from {path}: cannot read the checkpoint ({err})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise DataError(f"--init_from {path}: expected a state_dict of tensors")
    return dict(state)


def _conv(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 1, 0))  # [out, in, kh, kw] -> [kh, kw, in, out]


def _conv_bn(state, conv: str, bn: str, target: str) -> dict[str, np.ndarray]:
    """One convolution and its BatchNorm as fedem_jax's ``ConvBNReLU6`` at ``target``."""
    return {
        f"params/{target}/Conv_0/kernel": _conv(state[f"{conv}.weight"]),
        f"params/{target}/BatchNorm_0/scale": state[f"{bn}.weight"],
        f"params/{target}/BatchNorm_0/bias": state[f"{bn}.bias"],
        f"batch_stats/{target}/BatchNorm_0/mean": state[f"{bn}.running_mean"],
        f"batch_stats/{target}/BatchNorm_0/var": state[f"{bn}.running_var"],
    }


def mobilenet_v2_weights(state: dict[str, np.ndarray], include_head: bool = False) -> dict[str, np.ndarray]:
    """fedem_jax MobileNetV2 variables (``/``-joined paths) from a torchvision state dict."""
    if "features.0.0.weight" not in state:
        raise DataError(
            "--init_from: the .pth file is not a torchvision MobileNetV2 state_dict "
            "(no features.0.0.weight); only that model is mapped"
        )
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.")})
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
        out["params/Dense_0/kernel"] = state["classifier.1.weight"].T
        out["params/Dense_0/bias"] = state["classifier.1.bias"]
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}
