"""Client partitioners: sample indices -> one index array per client (spec section 5)."""

from __future__ import annotations

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
