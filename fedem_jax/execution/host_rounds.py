"""The federation on the host, the cohort on the device (``--federation host``).

Client data (:class:`~fedem_jax.data.store.HostSplit`: in memory, or read from an on-disk store)
and the state's client fields (``pi``, epoch clocks, momentum when kept, control variates,
personal models) stay in host NumPy arrays. Each round :class:`HostRounds` draws the cohort
(the same draw as :func:`~fedem_jax.algorithms.base.sample_participants`, fixed-size), gathers its ``K``
clients' data and state, runs the method's round on them on the device, and writes their new
state back in place. The next two rounds' data are read on threads while the device computes.
Device memory and compute follow ``K``; host memory follows the state, not the data.
Results equal the device cohort rounds' (:mod:`fedem_jax.execution.cohort`) bit for bit with
sequential clients (``tests/test_cohort.py``).

:class:`HostEvaluation` evaluates all clients (or ``--eval_clients`` of them, a fixed random
subset) in chunks of clients, so evaluation never holds the federation on the device either.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from fedem_jax.algorithms.base import client_order, place_state
from fedem_jax.data.federated import ClientSplit, FederatedData
from fedem_jax.data.sharding import place
from fedem_jax.data.store import HostSplit
from fedem_jax.execution.cohort import client_fields, cohort_capacity
from fedem_jax.execution.distributed import tree_to_host
from fedem_jax.execution.layout import CLIENT_SPEC, Layout


def host_state(state):
    """``state`` with its client fields as writable host NumPy arrays (the rest unchanged)."""
    return client_fields(state, lambda a: np.array(a, copy=True))


def chunk_capacity(counts: np.ndarray, chunks: list[np.ndarray], n_blocks: int = 1) -> int:
    """Samples the largest block of the largest of ``chunks`` (client index arrays) holds, each
    dealt to ``n_blocks`` blocks (see :meth:`~fedem_jax.data.store.HostSplit.gather`)."""
    slots = [-(-len(chunk) // n_blocks) for chunk in chunks]
    return max(
        int(counts[chunk[b : b + s]].sum())
        for chunk, s in zip(chunks, slots, strict=True)
        for b in range(0, len(chunk), s)
    )


class Placement:
    """Where a cohort goes: the device, or a mesh's devices (clients in blocks, one per device,
    as :mod:`fedem_jax.data.sharding` deals a federation; the rest of the state replicated).
    With several processes (``--distributed``) each reads and transfers only its devices' blocks."""

    def __init__(self, layout: Layout):
        self.layout, self.n_blocks = layout, layout.n_devices
        self.local_blocks = None  # blocks whose inputs this process reads (None: all)
        if layout.mesh is not None and jax.process_count() > 1:
            devices = layout.mesh.devices.flat
            self.local_blocks = {b for b, d in enumerate(devices) if d.process_index == jax.process_index()}

    def gather(self, split: HostSplit, idx: np.ndarray, capacity: int):
        """The clients ``idx`` of ``split``, laid out for the device(s) and placed there."""
        return self.split(split.gather(idx, capacity, self.n_blocks, read=self.local_blocks))

    def slots(self, k: int) -> int:
        """Client rows of ``k`` clients once dealt (``k`` on one device)."""
        return k if self.n_blocks == 1 else -(-k // self.n_blocks) * self.n_blocks

    def clients(self, state, idx: np.ndarray):
        """The clients ``idx`` of a host state, on the device(s); empty slots repeat the last client
        (they take no part: their global ids are out of range)."""
        rows = np.concatenate([idx, np.repeat(idx[-1:], self.slots(len(idx)) - len(idx))])
        cohort = client_fields(state, lambda a: a[rows])
        if self.layout.mesh is None:
            return client_fields(cohort, jnp.asarray)
        return place_state(cohort, self.layout)

    def split(self, split: ClientSplit) -> ClientSplit:
        if self.layout.mesh is None:
            return jax.device_put(split)
        return place(split, self.layout.mesh, CLIENT_SPEC)


def first_after_sorts(rounds: np.ndarray, n: int, k: int) -> np.ndarray:
    """The first ``k`` of ``arange(n)`` after stable sorts by each row of ``rounds`` (``[S, n]``
    keys, by position, as ``lax.sort_key_val`` reads them) in turn. The last sort is needed only
    for its first ``k``: the ``k`` smallest (key, position) pairs, found by a partition."""
    order = np.arange(n)
    for bits in rounds[:-1]:
        order = order[np.argsort(bits, kind="stable")]
    if not len(rounds):
        return order[:k]
    key = (rounds[-1].astype(np.uint64) << np.uint64(32)) | np.arange(n, dtype=np.uint64)  # ties: by position
    first = np.argpartition(key, k - 1)[:k] if k < n else np.arange(n)
    return order[first[np.argsort(key[first])]]


class CohortDraw:
    """``round -> the K clients (ascending)`` that fixed-size sampling takes, the first ``K`` of
    :func:`~fedem_jax.algorithms.base.client_order`, computed on the host.

    ``jax.random.permutation`` sorts the clients by fresh threefry bits a few times (stable sorts);
    the same sorts in NumPy (the last one a partition) take 9.5 ms for 100,000 clients on a 2-core CPU
    where ``jax.random.permutation`` takes 43 ms (``benchmarks/host_cohort_parts.py``),
    more than a round of 100 clients. The NumPy draw is checked against JAX's on the first rounds;
    should a JAX version draw differently, JAX's own is used."""

    CHECKED_ROUNDS = 3

    def __init__(self, ctx, k: int):
        n = ctx.n_clients
        self.n, self.k, self.n_sorts = (
            n,
            k,
            int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max))),
        )

        def sort_bits(r):
            key, bits = jax.random.fold_in(ctx.round_key(r), 0), []
            for _ in range(self.n_sorts):
                key, subkey = jax.random.split(key)
                bits.append(jax.random.bits(subkey, (n,), jnp.uint32))
            return jnp.stack(bits) if bits else jnp.zeros((0, n), jnp.uint32)

        self._bits = jax.jit(sort_bits)
        self._jax = jax.jit(lambda r: client_order(ctx.round_key(r), n)[:k])
        self.on_host = all(
            np.array_equal(self._host_first(r), np.asarray(self._jax(np.int32(r))))
            for r in range(self.CHECKED_ROUNDS)
        )

    def _host_first(self, round_index: int) -> np.ndarray:
        return first_after_sorts(np.asarray(self._bits(np.int32(round_index))), self.n, self.k)

    def __call__(self, round_index: int) -> np.ndarray:
        first = (
            self._host_first(round_index) if self.on_host else np.asarray(self._jax(np.int32(round_index)))
        )
        return np.sort(first)


class HostRounds:
    """``(state, _) -> (state, metrics)``: one cohort round of ``algorithm`` over a host federation.

    ``state``'s client fields are host arrays (:func:`host_state`), updated in place. The next
    ``PREFETCH`` rounds' cohorts are drawn and read on threads meanwhile (their clients do not
    depend on the state), so reads from a slow disk overlap each other and the computation."""

    PREFETCH = 2

    def __init__(self, algorithm, ctx, train: HostSplit, k: int, n_rounds: int, layout: Layout):
        self.train, self.k, self.n_rounds = train, k, n_rounds
        self.place = Placement(layout)
        self.capacity = cohort_capacity(train.counts, -(-k // self.place.n_blocks))  # per device
        self.draw = CohortDraw(ctx, k)
        self._round = jax.jit(algorithm.round, donate_argnums=0)
        self._pool = ThreadPoolExecutor(self.PREFETCH, thread_name_prefix="fedem-prefetch")
        self._ahead: dict[int, object] = {}  # round -> future of its (clients, split)

    def cohort(self, round_index: int) -> np.ndarray:
        """The ``K`` clients (ascending) sampled in round ``round_index``."""
        return self.draw(round_index)

    def _draw(self, round_index: int):
        """``(clients, their split on the device)`` of round ``round_index``."""
        idx = self.cohort(round_index)
        return idx, self.place.gather(self.train, idx, self.capacity)

    def compile(self, state):
        """Compile the round for the cohort's shapes and layout (once); returns the compiled round."""
        idx, split = self._draw(int(np.asarray(state.round)))
        self._round = self._round.lower(self.place.clients(state, idx), split).compile()
        return self._round

    def __call__(self, state, _train=None):
        r = int(np.asarray(state.round))
        future = self._ahead.pop(r, None)
        idx, split = future.result() if future is not None else self._draw(r)  # else: first, or restored
        self._ahead = {a: f for a, f in self._ahead.items() if a > r}
        for ahead in range(r + 1, min(r + 1 + self.PREFETCH, self.n_rounds)):  # read while rounds compute
            if ahead not in self._ahead:
                self._ahead[ahead] = self._pool.submit(self._draw, ahead)
        new, metrics = self._round(self.place.clients(state, idx), split)
        for name in state.CLIENT_FIELDS:  # the cohort's rows come first; empty slots are dropped
            updated = tree_to_host(getattr(new, name))  # from every process, if several
            jax.tree.map(
                lambda store, value: store.__setitem__(idx, value[: len(idx)]), getattr(state, name), updated
            )
        return new.replace(**{name: getattr(state, name) for name in state.CLIENT_FIELDS}), metrics


def eval_clients(n_clients: int, wanted: int, seed: int) -> np.ndarray:
    """The clients evaluated: all (``wanted`` 0 or at least ``n_clients``), else a fixed random
    subset of ``wanted`` drawn once from ``seed`` (ascending)."""
    if wanted <= 0 or wanted >= n_clients:
        return np.arange(n_clients)
    return np.sort(np.random.default_rng([seed, 7]).choice(n_clients, wanted, replace=False))


class HostEvaluation:
    """Per-client statistics of the train and evaluated splits of ``clients``, ``chunk`` clients at
    a time (each chunk gathered from the host; one compiled evaluation for all chunks)."""

    def __init__(
        self,
        evaluate_splits,
        data: FederatedData,
        other: HostSplit,
        clients: np.ndarray,
        chunk: int,
        layout: Layout,
    ):
        self.train, self.other, self.clients = data.train, other, clients
        self.place = Placement(layout)
        self.chunks = [clients[i : i + chunk] for i in range(0, len(clients), chunk)]
        size = len(self.chunks[0])  # the last chunk repeats its last client: one shape for all
        self.padded = [np.concatenate([c, np.repeat(c[-1:], size - len(c))]) for c in self.chunks]
        self.capacity = [
            chunk_capacity(s.counts, self.padded, self.place.n_blocks) for s in (self.train, other)
        ]
        self._evaluate = jax.jit(evaluate_splits)

    def view(self, data: FederatedData) -> FederatedData:
        """What the evaluation rows read: the evaluated clients' counts, numbered ``0..E-1``, and
        their true ``pi`` (stand-ins for the splits; :meth:`__call__` reads the data itself)."""

        def index(split: HostSplit) -> ClientSplit:
            counts = split.counts[self.clients]
            return ClientSplit(x=None, y=None, client_id=None, offsets=None, counts=counts,
                               global_ids=np.arange(len(counts), dtype=np.int32))  # fmt: skip

        true_pi = None if data.true_pi is None else np.asarray(data.true_pi)[self.clients]
        return FederatedData(
            data.name, index(self.train), index(self.other), data.task, true_pi=true_pi,
            val=None if data.val is None else index(self.other),  # the evaluated split, test or val
            unseen_train=data.unseen_train, unseen_test=data.unseen_test,
        )  # fmt: skip

    def state_view(self, state):
        """The evaluated clients' fields of a host state (for their ``pi``)."""
        return client_fields(state, lambda a: a[self.clients])

    def unseen(self, evaluate_unseen, state, train: HostSplit, test: HostSplit, max_iters: int):
        """``(stats, None)``: clients held out of training (:attr:`Algorithm.evaluate_unseen`:
        ``pi`` fitted on their train split, evaluated on test), all of them, a chunk at a time on
        one device; only the shared models of ``state`` are read."""
        clients = np.arange(train.n_clients)
        chunk = len(self.chunks[0])
        chunks = [clients[i : i + chunk] for i in range(0, len(clients), chunk)]
        padded = [np.concatenate([c, np.repeat(c[-1:], chunk - len(c))]) for c in chunks]
        capacity = [chunk_capacity(s.counts, padded) for s in (train, test)]
        shared = client_fields(state, lambda a: jnp.asarray(a[:1]))  # the client fields: not read
        parts = []
        for real, idx in zip(chunks, padded, strict=True):
            stats, _ = evaluate_unseen(
                shared, jax.device_put(train.gather(idx, capacity[0])),
                jax.device_put(test.gather(idx, capacity[1])), max_iters,
            )  # fmt: skip
            n_real = len(real)
            parts.append(jax.tree.map(lambda a, n=n_real: np.asarray(a)[:n], stats))
        return jax.tree.map(lambda *a: np.concatenate(a), *parts), None

    def __call__(self, state, _splits=None):
        """``(train_stats, other_stats)``: dicts of ``[E]`` host arrays, in ``clients`` order."""
        parts = []
        for chunk, idx in zip(self.chunks, self.padded, strict=True):
            train = self.place.gather(self.train, idx, self.capacity[0])
            other = self.place.gather(self.other, idx, self.capacity[1])
            stats = tree_to_host(self._evaluate(self.place.clients(state, idx), train, (train, other)))
            n_real = len(chunk)
            parts.append(jax.tree.map(lambda a, n=n_real: np.asarray(a)[:n], stats))
        return jax.tree.map(lambda *a: np.concatenate(a), *parts)
