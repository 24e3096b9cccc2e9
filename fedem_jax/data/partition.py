"""Client partitioners: sample indices -> one index array per client (spec section 5)."""

from __future__ import annotations

import warnings

import numpy as np


def label_group_dirichlet(
    labels: np.ndarray,
    n_clients: int,
    n_groups: int,
    alpha: float,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """The FedEM CIFAR-10 split.

    Shuffle the label set and divide it into ``n_groups`` groups (10 labels, 3 groups ->
    sizes {3, 3, 4}). For each group, draw client proportions ``~ Dir(alpha 1_C)``, turn them into
    counts with a multinomial over the group's samples, and give contiguous chunks of the group's
    shuffled samples to the clients. Every sample goes to exactly one client.
    """
    classes = rng.permutation(np.unique(labels))
    base, extra = divmod(len(classes), n_groups)
    sizes = [base + (1 if g >= n_groups - extra else 0) for g in range(n_groups)]
    bounds = np.cumsum([0] + sizes)
    per_client: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for g in range(n_groups):
        group_classes = classes[bounds[g] : bounds[g + 1]]
        members = rng.permutation(np.flatnonzero(np.isin(labels, group_classes)))
        proportions = rng.dirichlet(alpha * np.ones(n_clients))
        counts = rng.multinomial(len(members), proportions)
        for client, chunk in enumerate(np.split(members, np.cumsum(counts)[:-1])):
            per_client[client].append(chunk)
    return [np.sort(np.concatenate(chunks)) for chunks in per_client]


def dirichlet_per_label(
    labels: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """The FedEM EMNIST split: each label's samples are dealt to the clients with proportions
    ``~ Dir(alpha 1_C)`` (multinomial counts, contiguous chunks of the label's shuffled samples).
    Every sample goes to exactly one client."""
    per_client: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        counts = rng.multinomial(len(members), rng.dirichlet(alpha * np.ones(n_clients)))
        for client, chunk in enumerate(np.split(members, np.cumsum(counts)[:-1])):
            per_client[client].append(chunk)
    return [np.sort(np.concatenate(chunks)) for chunks in per_client]


def pathological_shards(
    labels: np.ndarray, n_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """The pathological non-IID split of McMahan et al. (AISTATS 2017): sort the samples by
    label, cut them into ``n_clients * shards_per_client`` equal contiguous shards and give each
    client ``shards_per_client`` shards at random. Every sample goes to at most one client (the
    remainder of the division by the number of shards is left out)."""
    order = np.argsort(labels, kind="stable")
    n_shards = n_clients * shards_per_client
    shard_size = len(labels) // n_shards
    if shard_size == 0:
        raise ValueError(f"{len(labels)} samples cannot make {n_shards} shards")
    shards = order[: n_shards * shard_size].reshape(n_shards, shard_size)
    assignment = rng.permutation(n_shards).reshape(n_clients, shards_per_client)
    return [np.sort(shards[row].ravel()) for row in assignment]


def iid(n_samples: int, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle the samples and deal them into ``n_clients`` parts of equal size (± 1)."""
    return [np.sort(part) for part in np.array_split(rng.permutation(n_samples), n_clients)]


def classes_per_client(
    labels: np.ndarray, n_clients: int, k: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Each client holds ``k`` distinct labels (the pathological split, generalised; McMahan et al.,
    AISTATS 2017 use k = 2 through shards). Labels are dealt round-robin from a random order, so
    every label goes to ``n_clients * k / K`` clients (± 1) and none twice to one client; each
    label's shuffled samples are divided equally among its clients. With ``n_clients * k < K``
    some labels are left out."""
    classes = rng.permutation(np.unique(labels))
    if k > len(classes):
        raise ValueError(f"{k} classes per client, but the data has only {len(classes)} labels")
    owned = [[classes[(c * k + j) % len(classes)] for j in range(k)] for c in range(n_clients)]
    holders = {label: [c for c in range(n_clients) if label in owned[c]] for label in classes}
    per_client: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for label, clients in holders.items():
        members = rng.permutation(np.flatnonzero(labels == label))
        for client, chunk in zip(clients, np.array_split(members, max(len(clients), 1)), strict=False):
            per_client[client].append(chunk)
    return [np.sort(np.concatenate(chunks)) for chunks in per_client]


def pachinko(
    fine_labels: np.ndarray,
    coarse_labels: np.ndarray,
    n_clients: int,
    samples_per_client: int,
    coarse_alpha: float,
    fine_alpha: float,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Pachinko allocation (Li and McCallum, ICML 2006), the CIFAR-100 split of the FedEM paper
    (after Reddi et al., "Adaptive Federated Optimization", ICLR 2021).

    Client ``c`` draws coarse-label weights ``~ Dir(coarse_alpha)`` and, for every coarse label,
    weights over its fine labels ``~ Dir(fine_alpha)``. Each of its ``samples_per_client`` samples
    draws a coarse label, then a fine label within it, then one not yet used sample of that fine
    label (without replacement). A fine label that runs out gets weight 0 for every later draw and
    the weights are renormalised; so does a coarse label whose fine labels have all run out.
    """
    coarse_of_fine = {}
    for fine in np.unique(fine_labels):
        parents = np.bincount(coarse_labels[fine_labels == fine])
        if np.count_nonzero(parents) > 1:
            warnings.warn(
                f"fine label {fine} appears under {np.count_nonzero(parents)} coarse labels; "
                "using its most frequent one",
                stacklevel=2,
            )
        coarse_of_fine[int(fine)] = int(parents.argmax())
    coarse_values = np.unique(list(coarse_of_fine.values()))
    fines_of = [np.array(sorted(f for f, c in coarse_of_fine.items() if c == k)) for k in coarse_values]
    pools = {f: list(rng.permutation(np.flatnonzero(fine_labels == f))) for f in coarse_of_fine}
    if n_clients * samples_per_client > len(fine_labels):
        raise ValueError(
            f"{n_clients} clients x {samples_per_client} samples exceed the {len(fine_labels)} available"
        )
    remaining = np.zeros(max(coarse_of_fine) + 1, np.int64)
    for f, pool in pools.items():
        remaining[f] = len(pool)
    coarse_remaining = np.array([remaining[f].sum() for f in fines_of])
    clients = []
    for _ in range(n_clients):
        coarse_weights = rng.dirichlet(coarse_alpha * np.ones(len(coarse_values)))
        fine_weights = [rng.dirichlet(fine_alpha * np.ones(len(f))) for f in fines_of]
        chosen = []
        for _ in range(samples_per_client):
            coarse_p = coarse_weights * (coarse_remaining > 0)
            k = rng.choice(len(coarse_values), p=coarse_p / coarse_p.sum())
            fine_p = fine_weights[k] * (remaining[fines_of[k]] > 0)
            fine = fines_of[k][rng.choice(len(fine_p), p=fine_p / fine_p.sum())]
            chosen.append(pools[fine].pop())
            remaining[fine] -= 1
            coarse_remaining[k] -= 1
        clients.append(np.sort(np.array(chosen)))
    return clients
