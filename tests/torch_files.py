"""``torch.save``-format files written without torch, opcode by opcode, so tests can give the reader
any tensor header (offsets, sizes and strides beyond the storage, wrong element counts).

The layout is PyTorch's zip format (>= 1.6): ``<prefix>/data.pkl`` (protocol 2) holding an
``OrderedDict`` of ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False,
OrderedDict())`` calls whose storages are persistent ids ``("storage", torch.<Type>Storage, key,
"cpu", numel)`` pointing at raw little-endian bytes in ``<prefix>/data/<key>``.
"""

from __future__ import annotations

import dataclasses
import pickle
import struct
import zipfile

import numpy as np

STORAGE_OF = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.uint8): "ByteStorage",
}


@dataclasses.dataclass
class Tensor:
    """One entry of the state dict: a view of storage ``key``."""

    key: str
    offset: int
    size: tuple
    stride: tuple


def contiguous(key: str, shape: tuple, offset: int = 0) -> Tensor:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return Tensor(key, offset, tuple(shape), tuple(reversed(strides)))


def _int(value: int) -> bytes:
    return b"\x8a" + bytes([len(pickle.encode_long(value))]) + pickle.encode_long(value)  # LONG1


def _text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _ints(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"  # MARK ... TUPLE


def state_dict_pickle(tensors: dict[str, Tensor], storages: dict[str, tuple[str, int]]) -> bytes:
    """``data.pkl`` of ``{name: tensor}``; ``storages``: ``{key: (storage type, declared numel)}``."""
    out = [b"\x80\x02", _global("collections", "OrderedDict"), b")R("]
    for name, t in tensors.items():
        storage_type, numel = storages[t.key]
        persistent = b"(" + _text("storage") + _global("torch", storage_type) + _text(t.key)
        persistent += _text("cpu") + _int(numel) + b"tQ"  # TUPLE, BINPERSID
        args = persistent + _int(t.offset) + _ints(t.size) + _ints(t.stride) + b"\x89"
        args += _global("collections", "OrderedDict") + b")R"
        out.append(_text(name) + _global("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR")
    out.append(b"u.")  # SETITEMS, STOP
    return b"".join(out)


def write_pth(path, tensors: dict[str, Tensor], raw: dict[str, np.ndarray], numel: dict | None = None,
              storage_type: dict | None = None, prefix: str = "archive") -> str:  # fmt: skip
    """A ``.pth`` file: ``raw`` maps storage keys to the arrays whose bytes they hold; ``numel``
    and ``storage_type`` override what the header declares for a key."""
    numel, storage_type = numel or {}, storage_type or {}
    storages = {
        key: (storage_type.get(key, STORAGE_OF[array.dtype]), numel.get(key, array.size))
        for key, array in raw.items()
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{prefix}/data.pkl", state_dict_pickle(tensors, storages))
        for key, array in raw.items():
            archive.writestr(
                f"{prefix}/data/{key}",
                np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes(),
            )
    return str(path)


def write_state_dict(path, arrays: dict[str, np.ndarray]) -> str:
    """A well-formed ``.pth`` of contiguous tensors, one storage each."""
    tensors = {name: contiguous(str(i), a.shape) for i, (name, a) in enumerate(arrays.items())}
    raw = {str(i): a.reshape(-1) for i, a in enumerate(arrays.values())}
    return write_pth(path, tensors, raw)
