"""TFDS-prepared folders without TensorFlow: find them, read their records, rewrite them.

A prepared folder (``DATA_DIR/<name>/<version>/``) holds ``dataset_info.json``, ``features.json``
and the split files, in the TFRecord format (what ``download_and_prepare()`` writes by default)
or ArrayRecord (``file_format='array_record'``). Both hold the same serialized examples, which
``info.features.deserialize_example_np`` decodes without TensorFlow. ``tfds.data_source`` reads
ArrayRecord folders but refuses TFRecord ones, so this module reads TFRecord files itself (the
format is ``length, crc(length), bytes, crc(bytes)`` per record) and can rewrite a TFRecord folder
as ArrayRecord (:func:`convert_to_array_record`; ``python -m fedem_jax.data.convert SRC DST``).
"""

from __future__ import annotations

import json
import os
import shutil
import struct

from fedem_jax.errors import DataError

_HEADER = struct.Struct("<QI")  # record length, masked crc32c of the length
_FOOTER = 4  # masked crc32c of the record


def find_prepared(name: str, data_dir: str) -> str | None:
    """``DATA_DIR/<name>/<version>`` of the newest version with a ``dataset_info.json``."""
    root = os.path.join(data_dir, *name.split("/"))
    if not os.path.isdir(root):
        return None
    versions = [v for v in os.listdir(root) if os.path.isfile(os.path.join(root, v, "dataset_info.json"))]
    if not versions:
        return None
    newest = max(versions, key=lambda v: tuple(int(p) if p.isdigit() else -1 for p in v.split(".")))
    return os.path.join(root, newest)


def file_format(folder: str) -> str:
    """``tfrecord`` or ``array_record`` (TFDS leaves the field out for TFRecord)."""
    return _dataset_info(folder).get("fileFormat", "tfrecord")


def split_files(folder: str, split: str) -> list[str]:
    """The files of ``split`` in ``folder``, in shard order."""
    info = _dataset_info(folder)
    matches = [s for s in info.get("splits", []) if s.get("name") == split]
    if not matches:
        names = [s.get("name") for s in info.get("splits", [])]
        raise DataError(f"{folder}: no split {split!r} (it has {names})")
    n_shards = len(matches[0].get("shardLengths", [])) or 1
    extension = info.get("fileFormat", "tfrecord")
    prefix = f"{info['name']}-{split}.{extension}"
    files = [os.path.join(folder, f"{prefix}-{i:05d}-of-{n_shards:05d}") for i in range(n_shards)]
    missing = [path for path in files if not os.path.exists(path)]
    if missing:
        raise DataError(f"{folder}: split {split!r} is incomplete, {missing[0]} is missing")
    return files


def read_tfrecord(path: str):
    """Yield the records (serialized examples) of one TFRecord file; a truncated file is a
    DataError. (Checksums are not verified: that would take minutes in Python.)"""
    with open(path, "rb") as f:
        data = f.read()
    position = 0
    while position < len(data):
        if position + _HEADER.size > len(data):
            raise DataError(f"{path}: truncated TFRecord file (a record header is cut at byte {position})")
        length, _ = _HEADER.unpack_from(data, position)
        start = position + _HEADER.size
        end = start + length
        if end + _FOOTER > len(data):
            raise DataError(f"{path}: truncated TFRecord file (a record is cut at byte {position})")
        yield data[start:end]
        position = end + _FOOTER


def write_tfrecord(path: str, records) -> None:
    """Write ``records`` as a TFRecord file (with checksums, readable by TensorFlow)."""
    with open(path, "wb") as f:
        for record in records:
            length = struct.pack("<Q", len(record))
            f.write(length + struct.pack("<I", masked_crc32c(length)))
            f.write(record + struct.pack("<I", masked_crc32c(record)))


def write_array_record(path: str, records) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(path, "group_size:1")
    for record in records:
        writer.write(record)
    writer.close()


def convert_to_array_record(source: str, destination: str) -> None:
    """Rewrite the TFRecord folder ``source`` as an ArrayRecord folder ``destination`` (same
    examples, same metadata, ``fileFormat`` changed), written aside and renamed when complete."""
    info = _dataset_info(source)
    partial = destination.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    for entry in os.listdir(source):
        if entry.endswith(".json") or entry.endswith(".txt"):
            shutil.copy(os.path.join(source, entry), partial)
    for split in info.get("splits", []):
        for path in split_files(source, split["name"]):
            target = os.path.basename(path).replace(".tfrecord-", ".array_record-")
            write_array_record(os.path.join(partial, target), read_tfrecord(path))
    info["fileFormat"] = "array_record"
    with open(os.path.join(partial, "dataset_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    os.replace(partial, destination)


def _dataset_info(folder: str) -> dict:
    path = os.path.join(folder, "dataset_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the dataset's description ({err})") from None


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), table-driven; slow in Python, for small writes only."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
