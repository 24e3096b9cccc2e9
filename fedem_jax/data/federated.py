"""The on-device container of a federated dataset.

Samples of all clients are stored *flat*, sorted by client: ``x[N, ...]``, ``y[N]``, with
``offsets[C]`` and ``counts[C]`` locating each client's block. Compared with padding every client
to the largest one (``[C, n_max, ...]``), this keeps memory at ``N`` samples whatever the spread of
client sizes, and lets forward-only work (E-step, evaluation) run as large batches over all
clients at once (all clients share the global components at that point).
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax.numpy as jnp
import numpy as np

from fedem_jax.core.tasks import Task
from fedem_jax.errors import DataError


@flax.struct.dataclass
class ClientSplit:
    """One split (train or test) of every client, flat and sorted by client."""

    x: jnp.ndarray  # [N, ...]
    y: jnp.ndarray  # [N]
    client_id: jnp.ndarray  # [N] int32
    offsets: jnp.ndarray  # [C] int32, start of each client's block
    counts: jnp.ndarray  # [C] int32
    global_ids: jnp.ndarray  # [C] int32, the client's index in the whole federation
    max_count: int = flax.struct.field(pytree_node=False, default=0)

    @property
    def n_clients(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.y.shape[0])


@dataclasses.dataclass(frozen=True)
class FederatedData:
    """Train and test splits of the training clients, plus the prediction task.

    Optional parts: ``val`` (a validation split of the training clients) and ``unseen_train`` /
    ``unseen_test`` (clients held out of training, which only fit their mixture weights).
    """

    name: str
    train: ClientSplit
    test: ClientSplit
    task: Task
    val: ClientSplit | None = None
    unseen_train: ClientSplit | None = None
    unseen_test: ClientSplit | None = None
    source: str = ""  # one line: where and how the data was read, if worth saying
    # The training clients' true mixture weights [C, K], where the data was generated from a
    # mixture (synthetic): learned ``pi`` are compared with them (``pi_tv_to_truth``).
    true_pi: np.ndarray | None = None
    model: str = ""  # the model it was made for (a store's), the default --model if given

    @property
    def n_clients(self) -> int:
        return self.train.n_clients

    @property
    def n_unseen(self) -> int:
        return 0 if self.unseen_train is None else self.unseen_train.n_clients

    def summary(self) -> str:
        """One line: clients, samples per client (min / median / max), classes per client."""
        counts = np.asarray(self.train.counts) + np.asarray(self.test.counts)
        classes = classes_per_client(self.train)
        unseen = f" + {self.n_unseen} unseen" if self.n_unseen else ""
        val = f" / {self.val.n_samples} val" if self.val is not None else ""
        return (
            f"{self.name}: {self.n_clients} clients{unseen}, "
            f"{int(counts.sum())} samples ({self.train.n_samples} train / "
            f"{self.test.n_samples} test{val}), per client min/median/max "
            f"{int(counts.min())}/{int(np.median(counts))}/{int(counts.max())}, "
            f"train classes per client min/median/max "
            f"{min(classes)}/{int(np.median(classes))}/{max(classes)}"
        )


def classes_per_client(split) -> np.ndarray:
    """``[C]``: how many distinct label values each client has (all positions of sequence labels)."""
    y = np.asarray(split.y)
    ids = np.repeat(np.asarray(split.client_id).astype(np.int64), y[0].size if len(y) else 1)
    values, label = np.unique(y.reshape(-1), return_inverse=True)
    owners = np.unique(ids * len(values) + label.reshape(-1)) // max(len(values), 1)
    return np.bincount(owners, minlength=int(np.asarray(split.counts).shape[0]))


def build_split(xs: list[np.ndarray], ys: list[np.ndarray]) -> ClientSplit:
    """Concatenate per-client arrays into a flat :class:`ClientSplit` (numpy -> device once)."""
    if len(xs) != len(ys) or not xs:
        raise DataError(f"need one x and one y array per client, got {len(xs)} and {len(ys)}")
    counts = np.array([len(y) for y in ys], dtype=np.int32)
    for c, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if len(x) != len(y):
            raise DataError(f"client {c}: {len(x)} inputs but {len(y)} labels")
        if x.shape[1:] != xs[0].shape[1:]:
            raise DataError(f"client {c}: input shape {x.shape[1:]} differs from {xs[0].shape[1:]}")
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    client_id = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    return ClientSplit(
        x=jnp.asarray(np.concatenate(xs)),
        y=jnp.asarray(np.concatenate(ys)),
        client_id=jnp.asarray(client_id),
        offsets=jnp.asarray(offsets),
        counts=jnp.asarray(counts),
        global_ids=jnp.arange(len(counts), dtype=jnp.int32),
        max_count=int(counts.max()),
    )


def train_test_split(
    indices: list[np.ndarray], test_frac: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Split each client's sample indices at random into train/test.

    Clients too small to get at least one train and one test sample are dropped; the number
    dropped is returned so the caller can warn.
    """
    train, test, dropped = [], [], 0
    for idx in indices:
        n_test = int(round(test_frac * len(idx)))
        if len(idx) < 2 or n_test < 1 or n_test >= len(idx):
            dropped += 1
            continue
        shuffled = rng.permutation(idx)
        test.append(np.sort(shuffled[:n_test]))
        train.append(np.sort(shuffled[n_test:]))
    return train, test, dropped


def assemble(
    name: str,
    task: Task,
    train: tuple[list[np.ndarray], list[np.ndarray]],
    test: tuple[list[np.ndarray], list[np.ndarray]],
    *,
    val_frac: float = 0.0,
    unseen_frac: float = 0.0,
    rng: np.random.Generator,
    true_pi: np.ndarray | None = None,
) -> FederatedData:
    """Per-client arrays -> :class:`FederatedData`, with optional validation and unseen clients.

    - ``val_frac``: fraction of each client's *training* samples moved to a validation split
      (0.25 turns the 80/20 train/test split into 60/20/20, spec section 5).
    - ``unseen_frac``: fraction of clients held out of training (at least one client trains).
    - ``true_pi``: per-client true mixture weights, if known (kept for the training clients).
    """
    train_xs, train_ys = list(train[0]), list(train[1])
    test_xs, test_ys = list(test[0]), list(test[1])
    n_clients = len(train_xs)
    n_unseen = min(int(np.floor(unseen_frac * n_clients)), n_clients - 1)
    unseen = set(rng.permutation(n_clients)[:n_unseen].tolist())
    seen = [c for c in range(n_clients) if c not in unseen]
    held = sorted(unseen)

    val = None
    if val_frac > 0:
        val_xs, val_ys = [], []
        for c in seen:
            n = len(train_ys[c])
            n_val = int(round(val_frac * n))
            if n_val < 1 or n_val >= n:
                raise DataError(
                    f"--val_frac {val_frac}: client {c} has {n} training samples, too few to hold out a "
                    f"validation part; lower --val_frac or use fewer clients"
                )
            order = rng.permutation(n)
            val_xs.append(train_xs[c][np.sort(order[:n_val])])
            val_ys.append(train_ys[c][np.sort(order[:n_val])])
            keep = np.sort(order[n_val:])
            train_xs[c], train_ys[c] = train_xs[c][keep], train_ys[c][keep]
        val = build_split(val_xs, val_ys)

    def pick(arrays, clients):
        return [arrays[c] for c in clients]

    return FederatedData(
        name=name,
        train=build_split(pick(train_xs, seen), pick(train_ys, seen)),
        test=build_split(pick(test_xs, seen), pick(test_ys, seen)),
        task=task,
        val=val,
        unseen_train=build_split(pick(train_xs, held), pick(train_ys, held)) if held else None,
        unseen_test=build_split(pick(test_xs, held), pick(test_ys, held)) if held else None,
        true_pi=None if true_pi is None else np.asarray(true_pi)[seen],
    )
