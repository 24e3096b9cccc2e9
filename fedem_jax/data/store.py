"""The federation on the host or on disk, read a cohort at a time (``--federation host``).

A :class:`HostSplit` is a :class:`~fedem_jax.data.federated.ClientSplit` kept in host memory or
in a file: the same flat samples sorted by client, ``counts`` locating each client's block. Its
:meth:`HostSplit.gather` builds the ``ClientSplit`` of a few clients (a round's cohort, a chunk of
an evaluation) in the layout the device's cohort rounds use (:mod:`fedem_jax.execution.cohort`).

**On-disk format** (``fedem_jax.store/1``): a folder, written once (``python -m
fedem_jax.data.make_store``, or :func:`write_store`), read with ``--dataset store --data_path FOLDER``:

- ``federation.json``: ``{"format": "fedem_jax.store/1", "name", "n_clients", "n_unseen",
  "task": {"num_classes", "binary", "sequence"}, "splits": ["train", "test", ...], "model"}``
  (``model``: the default ``--model``, may be empty);
- for each split ``S`` (``train`` and ``test``; ``val``, ``unseen_train``, ``unseen_test`` if
  written): ``S_x.npy`` (``[N, ...]``), ``S_y.npy`` (``[N]``), ``S_counts.npy`` (``[C]``, the
  unseen clients' for ``unseen_*``): plain NumPy ``.npy`` files, samples flat and sorted by client;
- ``true_pi.npy`` (``[C, K]``), optional: the clients' true mixture weights (synthetic data).

Inputs are read with positioned reads (``os.preadv``), not mapped: the process's memory holds
only the clients being read, whatever the federation's size. A folder is written as
``FOLDER.partial`` and renamed when complete, so a crash never leaves a store that reads.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fedem_jax.core.tasks import Task
from fedem_jax.data.federated import ClientSplit, FederatedData
from fedem_jax.errors import DataError

FORMAT = "fedem_jax.store/1"
SPLITS = ("train", "test")  # every store has them
OPTIONAL_SPLITS = ("val", "unseen_train", "unseen_test")  # a validation split, clients held out


@dataclasses.dataclass(eq=False)
class HostSplit:
    """One split of every client on the host: ``x`` in memory or a read-only map of a ``.npy``
    file (``path``: read by positioned reads), ``y`` and ``counts`` in memory."""

    x: np.ndarray  # [N, ...]
    y: np.ndarray  # [N]
    counts: np.ndarray  # [C] int32
    path: str = ""  # the .npy file holding x, if on disk

    def __post_init__(self):
        self.counts = np.asarray(self.counts, np.int32)
        ends = np.cumsum(self.counts, dtype=np.int64)
        self.offsets = ends - self.counts
        self.global_ids = np.arange(len(self.counts), dtype=np.int32)
        self.max_count = int(self.counts.max()) if len(self.counts) else 0
        self._fd = os.open(self.path, os.O_RDONLY) if self.path else None
        if self._fd is not None:
            self._data_start = self.x.offset  # np.load(mmap_mode="r") records the header's size

    @property
    def n_clients(self) -> int:
        return len(self.counts)

    @property
    def n_samples(self) -> int:
        return len(self.y)

    @property
    def client_id(self) -> np.ndarray:
        return np.repeat(self.global_ids, self.counts)

    def read_x(self, start: int, out: np.ndarray) -> None:
        """Fill ``out`` with the ``len(out)`` inputs from sample ``start`` on."""
        if self._fd is None:
            out[...] = self.x[start : start + len(out)]
            return
        row_bytes = out[0].nbytes if len(out) else 0
        view = memoryview(out.reshape(-1).view(np.uint8))
        done = 0
        while done < len(view):  # a read may return less than asked
            got = os.preadv(self._fd, [view[done:]], self._data_start + start * row_bytes + done)
            if got <= 0:
                raise DataError(f"{self.path}: the file ends before sample {start + len(out)}")
            done += got

    def gather(self, idx: np.ndarray, capacity: int, n_blocks: int = 1, read=None) -> ClientSplit:
        """The clients ``idx`` (ascending) as a flat NumPy split of ``capacity`` samples, laid out as
        :func:`fedem_jax.execution.cohort.gather_split` lays a cohort out (padding last, zeros,
        ``client_id = K`` there; global ids and the federation's ``max_count`` kept).

        ``n_blocks > 1``: dealt to that many blocks of ``ceil(K / n_blocks)`` client slots and
        ``capacity`` samples each, as :func:`fedem_jax.data.sharding.block_split` lays a federation
        out for a mesh (an empty slot: 0 samples, the global id ``C``, so it never takes part).

        ``read``: the blocks whose inputs are read (default all); the others' stay zero. Several
        processes each read only their own devices' blocks of a cohort."""
        idx = np.asarray(idx)
        slots = -(-len(idx) // n_blocks) if n_blocks > 1 else len(idx)
        x = aligned_zeros((n_blocks * capacity, *self.x.shape[1:]), self.x.dtype)
        y = aligned_zeros((n_blocks * capacity, *self.y.shape[1:]), self.y.dtype)
        client_id = aligned_zeros((n_blocks * capacity,), np.int32)
        client_id[:] = slots
        counts = np.zeros(n_blocks * slots, np.int32)
        offsets = np.zeros(n_blocks * slots, np.int32)
        global_ids = np.full(n_blocks * slots, self.n_clients, np.int32)
        reads = []  # (first sample, where it goes): done at once below
        for block in range(n_blocks):
            members = idx[block * slots : (block + 1) * slots]
            block_counts = self.counts[members]
            if block_counts.sum() > capacity:
                raise ValueError(f"{int(block_counts.sum())} samples do not fit in a capacity of {capacity}")
            first, base = block * slots, block * capacity
            starts = np.cumsum(block_counts, dtype=np.int64) - block_counts
            counts[first : first + slots] = np.concatenate(
                [block_counts, np.zeros(slots - len(members), np.int32)]
            )
            offsets[first : first + slots] = np.concatenate(
                [starts, np.full(slots - len(members), block_counts.sum())]
            )
            global_ids[first : first + len(members)] = self.global_ids[members]
            for position, client in enumerate(members):
                begin, n = base + int(starts[position]), int(block_counts[position])
                if read is None or block in read:
                    reads.append((int(self.offsets[client]), x[begin : begin + n]))
                y[begin : begin + n] = self.y[self.offsets[client] : self.offsets[client] + n]
                client_id[begin : begin + n] = position
        if self._fd is not None and len(reads) > 1:  # from a file: several reads in flight (disk queues)
            list(_readers().map(lambda read: self.read_x(*read), reads))
        else:
            for start, out in reads:
                self.read_x(start, out)
        return ClientSplit(
            x=x, y=y, client_id=client_id, offsets=offsets, counts=counts, global_ids=global_ids,
            max_count=self.max_count,
        )  # fmt: skip


@functools.lru_cache(maxsize=1)
def _readers() -> ThreadPoolExecutor:
    """Threads for positioned reads: a cohort's clients are read at once (a 100-client cohort of a
    17 GiB store, not in the page cache: 41 ms one after another, 32 ms eight at a time;
    ``benchmarks/host_cohort_parts.py``)."""
    return ThreadPoolExecutor(8, thread_name_prefix="fedem-store-read")


def aligned_zeros(shape: tuple, dtype, alignment: int = 64) -> np.ndarray:
    """Zeros whose buffer starts on a ``alignment``-byte boundary: on CPU, ``jax.device_put``
    then uses the buffer as it is instead of copying it (37 ms -> 0.2 ms for a 60 MB cohort,
    ``benchmarks/host_cohort_parts.py``). The
    array must not be written once put."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(size + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + size].view(dtype).reshape(shape)


def host_split(split: ClientSplit) -> HostSplit:
    """A device :class:`ClientSplit` (one device, no padding) copied to host memory."""
    return HostSplit(x=np.asarray(split.x), y=np.asarray(split.y), counts=np.asarray(split.counts))


def device_split(split: HostSplit) -> ClientSplit:
    """A :class:`HostSplit` read whole into a device :class:`ClientSplit`."""
    return split.gather(np.arange(split.n_clients), split.n_samples)


def on_host(data: FederatedData) -> FederatedData:
    """``data`` with every split on the host (``--federation host``)."""
    return _every_split(data, lambda s: host_split(s) if isinstance(s, ClientSplit) else s)


def on_device(data: FederatedData) -> FederatedData:
    """``data`` with every split a device :class:`ClientSplit` (a store read whole)."""
    return _every_split(data, lambda s: device_split(s) if isinstance(s, HostSplit) else s)


def _every_split(data: FederatedData, convert) -> FederatedData:
    names = SPLITS + OPTIONAL_SPLITS
    return dataclasses.replace(
        data, **{n: convert(getattr(data, n)) for n in names if getattr(data, n) is not None}
    )


# ---------------------------------------------------------------------------------- writing
class StoreWriter:
    """Write a store client by client (:meth:`add`), then :meth:`finish` (renames it into place).

    ``samples``: per split, ``(n_samples, x_shape_of_one_sample, x_dtype, y_dtype)``; ``model``:
    the model to train on it when ``--model`` is not given (default: by the inputs' shape)."""

    def __init__(
        self,
        folder: str,
        name: str,
        task: Task,
        n_clients: int,
        samples: dict,
        model: str = "",
        n_unseen: int = 0,
    ):
        self.folder, self.partial = os.path.abspath(folder), os.path.abspath(folder) + ".partial"
        if os.path.exists(self.folder):
            raise DataError(f"{self.folder} exists: remove it or choose another folder")
        shutil.rmtree(self.partial, ignore_errors=True)
        os.makedirs(self.partial)
        _check_disk(self.partial, samples)
        self.meta = {
            "format": FORMAT, "name": name, "n_clients": n_clients, "splits": list(samples), "model": model,
            "n_unseen": n_unseen,
            "task": {"num_classes": task.num_classes, "binary": task.binary, "sequence": task.sequence},
        }  # fmt: skip
        self.arrays, self.counts, self.filled = {}, {}, {}
        for split, (n, shape, x_dtype, y_dtype) in samples.items():
            self.arrays[split] = (
                self._open(f"{split}_x.npy", (n, *shape), x_dtype),
                self._open(f"{split}_y.npy", (n,), y_dtype),
            )
            self.counts[split], self.filled[split] = [], 0

    def _open(self, name: str, shape: tuple, dtype) -> _NpyAppender:
        return _NpyAppender(os.path.join(self.partial, name), shape, np.dtype(dtype))

    def add(self, split: str, x: np.ndarray, y: np.ndarray) -> None:
        """Append the next client's samples of ``split``."""
        x_out, y_out = self.arrays[split]
        x_out.append(x)
        y_out.append(y)
        self.counts[split].append(len(y))
        self.filled[split] += len(y)

    def finish(self, true_pi: np.ndarray | None = None) -> str:
        for split, (x_out, y_out) in self.arrays.items():
            clients = self.meta["n_unseen" if split.startswith("unseen") else "n_clients"]
            if self.filled[split] != y_out.shape[0] or len(self.counts[split]) != clients:
                raise DataError(f"{split}: {self.filled[split]} of {y_out.shape[0]} samples written")
            x_out.close(), y_out.close()
            np.save(
                os.path.join(self.partial, f"{split}_counts.npy"), np.asarray(self.counts[split], np.int32)
            )
        if true_pi is not None:
            np.save(os.path.join(self.partial, "true_pi.npy"), np.asarray(true_pi, np.float64))
        with open(os.path.join(self.partial, "federation.json"), "w") as f:
            json.dump(self.meta, f, indent=1)
        self.arrays.clear()
        os.replace(self.partial, self.folder)
        return self.folder


class _NpyAppender:
    """A ``.npy`` file of a known shape written front to back (memory: one block at a time)."""

    def __init__(self, path: str, shape: tuple, dtype: np.dtype):
        self.shape, self.dtype, self.row = shape, dtype, tuple(shape[1:])
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close()
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(self.file, header)

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, self.dtype)
        if block.shape[1:] != self.row:
            raise DataError(
                f"{self.file.name}: a block of shape {block.shape[1:]} where {self.row} is expected"
            )
        self.file.write(block.tobytes())

    def close(self) -> None:
        self.file.close()


def _check_disk(folder: str, samples: dict) -> None:
    needed = sum(n * (np.prod(shape) * np.dtype(xd).itemsize + np.dtype(yd).itemsize)
                 for n, shape, xd, yd in samples.values())  # fmt: skip
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DataError(
            f"the store needs {needed / 2**30:.1f} GiB but {folder} has {free / 2**30:.1f} GiB free"
        )


def write_store(data: FederatedData, folder: str, model: str = "") -> str:
    """Write every split of ``data`` (any loaded federation: train, test, and its validation split
    and unseen clients if it has them) as a store."""
    splits = {n: getattr(on_host(data), n) for n in SPLITS + OPTIONAL_SPLITS if getattr(data, n) is not None}
    samples = {n: (s.n_samples, s.x.shape[1:], s.x.dtype, s.y.dtype) for n, s in splits.items()}
    n_clients = splits["train"].n_clients
    writer = StoreWriter(folder, data.name, data.task, n_clients, samples, model or data.model, data.n_unseen)
    for name, split in splits.items():
        for c in range(split.n_clients):
            block = slice(int(split.offsets[c]), int(split.offsets[c] + split.counts[c]))
            writer.add(name, split.x[block], split.y[block])
    return writer.finish(data.true_pi)


def write_synthetic_store(folder: str, n_clients: int, dim=150, n_components=3, alpha=0.4,
                          noise_std=0.1, n_test_per_client=50, seed=12345, log=print) -> str:  # fmt: skip
    """The paper's synthetic federation (:mod:`fedem_jax.data.synthetic`, the same draws as
    ``--dataset synthetic`` with the same settings) written client by client: memory stays at one
    client's samples, so federations far larger than memory can be made."""
    from fedem_jax.core.tasks import BINARY
    from fedem_jax.data.synthetic import plan_synthetic, synthetic_clients

    rng, thetas, pis, sizes = plan_synthetic(n_clients, dim, n_components, alpha, seed)
    samples = {
        "train": (int(sizes.sum()), (dim,), np.float32, np.int32),
        "test": (n_clients * n_test_per_client, (dim,), np.float32, np.int32),
    }
    writer = StoreWriter(folder, "synthetic", BINARY, n_clients, samples, model="linear")
    every = max(1, n_clients // 10)
    for t, ((x, y, _), (tx, ty)) in enumerate(
        synthetic_clients(rng, sizes, pis, thetas, noise_std, n_test_per_client)
    ):
        writer.add("train", x, y)
        writer.add("test", tx, ty)
        if (t + 1) % every == 0:
            log(f"written {t + 1:,} of {n_clients:,} clients")
    return writer.finish(pis)


# ---------------------------------------------------------------------------------- reading
def open_store(folder: str) -> FederatedData:
    """The store in ``folder`` as a :class:`FederatedData` of :class:`HostSplit` (nothing but
    labels and counts read yet)."""
    meta_path = os.path.join(folder, "federation.json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        hint = " (an unfinished write: write it again)" if os.path.isdir(folder + ".partial") else ""
        raise DataError(f"{folder} is not a fedem_jax store: no federation.json{hint}") from None
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {meta_path}: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{meta_path}: not a {FORMAT} store")
    try:
        names = list(meta["splits"])
        if not set(SPLITS) <= set(names) or not set(names) <= set(SPLITS + OPTIONAL_SPLITS):
            raise DataError(
                f"{meta_path}: splits {names}: train and test needed, only {SPLITS + OPTIONAL_SPLITS}"
            )
        clients = {n: meta.get("n_unseen", 0) if n.startswith("unseen") else meta["n_clients"] for n in names}
        splits = {name: _open_split(folder, name, clients[name]) for name in names}
        task = Task(**meta["task"])
    except (KeyError, TypeError) as err:
        raise DataError(f"{meta_path}: missing or malformed entry {err}") from None
    model = meta.get("model") or ""
    if model:
        from fedem_jax.models import MODELS

        if model not in MODELS:
            raise DataError(f"{meta_path}: unknown model {model!r}; valid: {', '.join(MODELS)}")
    pi_path = os.path.join(folder, "true_pi.npy")
    true_pi = np.load(pi_path) if os.path.exists(pi_path) else None
    return FederatedData(
        name=str(meta.get("name", "store")), train=splits["train"], test=splits["test"], task=task,
        val=splits.get("val"), unseen_train=splits.get("unseen_train"), unseen_test=splits.get("unseen_test"),
        true_pi=true_pi, source=f"store {os.path.abspath(folder)} (read a cohort at a time)",
        model=model,
    )  # fmt: skip


def _open_split(folder: str, name: str, n_clients: int) -> HostSplit:
    x_path = os.path.join(folder, f"{name}_x.npy")
    try:
        x = np.load(x_path, mmap_mode="r")
        y = np.load(os.path.join(folder, f"{name}_y.npy"))
        counts = np.load(os.path.join(folder, f"{name}_counts.npy"))
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{folder}: cannot read the {name} split ({str(err)[:160]})") from None
    if counts.shape != (n_clients,) or (counts < 0).any() or counts.sum() != len(y) or len(x) != len(y):
        raise DataError(
            f"{folder}: the {name} split is inconsistent ({len(x)} inputs, {len(y)} labels, "
            f"{counts.sum()} counted over {counts.shape[0] if counts.ndim else 0} clients, "
            f"{n_clients} expected)"
        )
    return HostSplit(x=x, y=y, counts=counts, path=x_path)


def load_store(cfg) -> FederatedData:
    """``--dataset store``: the store at ``--data_path`` (its splits were fixed when written)."""
    data = open_store(cfg.data_path)
    if cfg.val_frac and data.val is None or cfg.test_clients_frac and not data.n_unseen:
        raise DataError(
            "--dataset store: its splits were fixed when written; --val_frac and --test_clients_frac take "
            "effect when writing (fedem_jax.data.store.write_store of data loaded with them)"
        )
    return data
