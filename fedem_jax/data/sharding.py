"""Laying the client axis out over a device mesh axis named ``clients``.

Clients are dealt to devices in contiguous blocks of ``ceil(C / D)``. Each device's block holds
its clients' samples flat (as in :mod:`fedem_jax.data.federated`), padded to the largest block;
blocks are concatenated on the leading axis and placed with ``NamedSharding(mesh, P('clients'))``
so that each device holds exactly its own clients' data. Padding never counts:

- padded clients have 0 samples and a global id ``>= C``;
- padded samples belong to the out-of-range local client ``C_d``, so segment sums drop them.

Per-client arrays of the blocked layout map back to the federation's order with
:func:`real_clients`.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fedem_jax.data.federated import ClientSplit, FederatedData
from fedem_jax.execution.distributed import to_host
from fedem_jax.execution.layout import CLIENTS_AXIS  # noqa: E402


def client_mesh(n_devices: int) -> Mesh:
    """A 1-D mesh ``('clients',)`` over the first ``n_devices`` devices."""
    return Mesh(np.array(jax.devices()[:n_devices]), (CLIENTS_AXIS,))


def block_split(split: ClientSplit, n_blocks: int) -> ClientSplit:
    """Re-lay ``split`` as ``n_blocks`` equal-shaped blocks (host-side numpy, once)."""
    counts = np.asarray(split.counts)
    offsets = np.asarray(split.offsets)
    x, y = np.asarray(split.x), np.asarray(split.y)
    n_clients = len(counts)
    per_block = math.ceil(n_clients / n_blocks)
    groups = [range(b * per_block, min((b + 1) * per_block, n_clients)) for b in range(n_blocks)]
    block_samples = max(1, max(int(counts[list(g)].sum()) for g in groups))
    xs, ys, ids, offs, cnts, gids = [], [], [], [], [], []
    for group in groups:
        members = list(group)
        rows = np.concatenate(
            [np.arange(offsets[c], offsets[c] + counts[c]) for c in members] or [[]]
        ).astype(int)
        pad = block_samples - len(rows)
        xs.append(np.concatenate([x[rows], np.zeros((pad, *x.shape[1:]), x.dtype)]))
        ys.append(np.concatenate([y[rows], np.zeros((pad,), y.dtype)]))
        local_counts = np.zeros(per_block, np.int32)
        local_counts[: len(members)] = counts[members]
        ids.append(np.concatenate([np.repeat(np.arange(per_block), local_counts), np.full(pad, per_block)]))
        offs.append(np.concatenate([[0], np.cumsum(local_counts)[:-1]]))
        cnts.append(local_counts)
        gids.append(np.concatenate([np.asarray(members, int), np.full(per_block - len(members), n_clients)]))
    return ClientSplit(
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        client_id=np.concatenate(ids).astype(np.int32),
        offsets=np.concatenate(offs).astype(np.int32),
        counts=np.concatenate(cnts).astype(np.int32),
        global_ids=np.concatenate(gids).astype(np.int32),
        max_count=split.max_count,
    )


def place(tree, mesh: Mesh, spec: PartitionSpec):
    """Lay ``tree`` out on ``mesh``. Host arrays are cut on the host and each process transfers
    only the pieces of its own devices (with several processes, only its own clients)."""
    sharding = NamedSharding(mesh, spec)

    def leaf(value):
        if isinstance(value, np.ndarray):
            return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
        return jax.device_put(value, sharding)

    return jax.tree.map(leaf, tree)


def shard_data(data: FederatedData, mesh: Mesh) -> FederatedData:
    """Blocked, device-placed copies of the training clients' splits (unseen clients stay as they are)."""
    n_blocks = mesh.shape[CLIENTS_AXIS]

    def shard(split):
        if split is None:
            return None
        return place(block_split(split, n_blocks), mesh, PartitionSpec(CLIENTS_AXIS))

    return FederatedData(
        name=data.name,
        train=shard(data.train),
        test=shard(data.test),
        task=data.task,
        val=shard(data.val),
        unseen_train=data.unseen_train,
        unseen_test=data.unseen_test,
    )


def real_clients(per_client, split: ClientSplit, n_clients: int):
    """Per-client arrays of a (possibly blocked) layout, in federation order, padding removed."""
    ids = to_host(split.global_ids)
    keep = ids < n_clients
    order = np.argsort(ids[keep])
    return jax.tree.map(lambda a: to_host(a)[keep][order], per_client)
