"""Arrays from files the user hands us (``--data_path``, ``--init_from``), read as untrusted input.

Every size a file declares is checked against what the file holds, and against the memory there
is, *before* anything is allocated or copied: a header claiming terabytes, a tensor view reaching
past its storage, an element count that does not match the bytes, a member that is not an array.
Each refusal is a :class:`~fedem_jax.data.federated.DataError` naming the file and the field.
Nothing in a file is ever run (no pickles; see :mod:`fedem_jax.models.torch_weights` for torch files).
"""

from __future__ import annotations

import math
import zipfile

import numpy as np

from fedem_jax.errors import DataError

# Header of one .npy member: numpy's own limit for untrusted files.
MAX_HEADER_BYTES = 10_000
# dtype kinds an array may have at all (callers ask for less): bool, ints, floats, complex,
# timedelta, datetime, bytes, str. Objects and structured (void) records are refused.
READABLE_KINDS = "biufcmMSU"
# Share of the host's free memory one declared array may take.
MEMORY_SHARE = 0.5


def host_memory_budget() -> int | None:
    """Bytes one array read from a file may take: a share of the host's free memory (None if unknown)."""
    from fedem_jax.execution.memory import host_free_bytes

    free = host_free_bytes()
    return None if free is None else int(MEMORY_SHARE * free)


def check_fits(what: str, n_bytes: int, budget: int | None) -> None:
    """Refuse ``what`` if its declared ``n_bytes`` exceed ``budget``."""
    if budget is not None and n_bytes > budget:
        raise DataError(
            f"{what} declares {n_bytes / 2**30:.1f} GiB, more than the {budget / 2**30:.1f} GiB "
            "of memory one array may take here; the file is damaged or not meant for this machine"
        )


def _header(member, version) -> tuple[tuple, bool, np.dtype]:
    fmt = np.lib.format
    if version == (1, 0):
        return fmt.read_array_header_1_0(member, max_header_size=MAX_HEADER_BYTES)
    if version == (2, 0):
        return fmt.read_array_header_2_0(member, max_header_size=MAX_HEADER_BYTES)
    raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, budget) -> np.ndarray:
    """One ``.npy`` member, its header checked against the member's size and ``budget`` first."""
    with archive.open(info) as member:
        shape, fortran_order, dtype = _header(member, np.lib.format.read_magic(member))
        if dtype.hasobject or dtype.kind not in READABLE_KINDS or dtype.itemsize == 0:
            raise DataError(f"{where}: dtype {dtype} is not an array of numbers or text")
        if not all(isinstance(n, int) and n >= 0 for n in shape):
            raise DataError(f"{where}: invalid shape {shape}")
        n_bytes = math.prod(shape) * dtype.itemsize
        held = info.file_size - member.tell()
        if n_bytes != held:
            raise DataError(f"{where}: the header declares shape {shape} of {dtype} ({n_bytes} bytes) "
                            f"but the member holds {held} bytes")  # fmt: skip
        check_fits(where, n_bytes, budget)
        raw = member.read(n_bytes)
    if len(raw) != n_bytes:
        raise DataError(f"{where}: truncated ({len(raw)} of {n_bytes} bytes)")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    return array.copy()


def read_npz(path: str, what: str = "") -> dict[str, np.ndarray]:
    """``{name: array}`` of an ``.npz`` archive, every member checked before it is read.

    ``what`` prefixes messages (e.g. ``"--init_from"``); the file's path is always named."""
    where = f"{what} {path}".strip()
    budget = host_memory_budget()
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{where}: not a readable .npz file ({err})") from None
    arrays = {}
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise DataError(f"{where}: member {info.filename!r} is not a .npy array")
            name = info.filename[: -len(".npy")]
            member = f"{where}: field {name!r}"
            try:
                arrays[name] = _read_member(archive, info, member, budget)
            except DataError:
                raise
            except Exception as err:  # noqa: BLE001 - damaged or hostile input: one line, whatever broke
                raise DataError(f"{member}: cannot be read ({_reason(err)})") from None
    return arrays


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    return text or type(err).__name__


def require_kind(array: np.ndarray, kinds: str, where: str, expected: str) -> None:
    """Refuse ``array`` unless its dtype kind is one of ``kinds`` (numpy's codes); no cast is silent."""
    if not isinstance(array, np.ndarray) or array.dtype.kind not in kinds:
        got = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise DataError(f"{where} must be {expected}, got {got}")


def require_real_floats(value, where: str) -> None:
    """A weight must be an array of finite real floating-point numbers: nothing is cast silently
    (complex, integer, boolean, text or object leaves are refused, as are NaN and Inf)."""
    require_kind(value, "f", where, "an array of real floating-point numbers")
    bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
    if bad:
        raise DataError(f"{where}: the weights are not finite ({bad} NaN or Inf values)")
