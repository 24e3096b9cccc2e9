"""Synthetic generator, partitioners and the flat client container."""

import numpy as np
import pytest

from fedem_jax.data import build_split
from fedem_jax.data.federated import train_test_split
from fedem_jax.data.partition import label_group_dirichlet
from fedem_jax.data.synthetic import generate_synthetic
from fedem_jax.errors import DataError


def _client_blocks(split):
    x, y = np.asarray(split.x), np.asarray(split.y)
    return [(x[o : o + n], y[o : o + n]) for o, n in zip(split.offsets, split.counts, strict=True)]


def test_synthetic_matches_the_intended_generator():
    data, truth = generate_synthetic(
        n_clients=40, dim=12, n_components=3, noise_std=0.0, n_test_per_client=30
    )
    counts = np.asarray(data.train.counts)
    assert counts.min() >= 50 and counts.max() <= 1000
    np.testing.assert_array_equal(np.asarray(data.test.counts), 30)
    assert truth["pis"].shape == (40, 3)
    np.testing.assert_allclose(truth["pis"].sum(1), 1.0)
    # Without noise every label is exactly 1[x . theta_z > 0] for its component z.
    for (x, y), z in zip(_client_blocks(data.train), truth["train_components"], strict=True):
        margins = np.einsum("nd,nd->n", x.astype(np.float64), truth["thetas"][z])
        np.testing.assert_array_equal(y, (margins > 0).astype(int))
    # The reference's bug forced ~25% of labels to 0; the intended mixture is balanced.
    assert 0.4 < np.asarray(data.train.y).mean() < 0.6


def test_synthetic_is_seeded():
    a, _ = generate_synthetic(n_clients=5, dim=3, n_test_per_client=2, seed=7)
    b, _ = generate_synthetic(n_clients=5, dim=3, n_test_per_client=2, seed=7)
    c, _ = generate_synthetic(n_clients=5, dim=3, n_test_per_client=2, seed=8)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert a.train.x.shape != c.train.x.shape or not np.array_equal(a.train.x, c.train.x)


def test_label_group_dirichlet_invariants():
    rng = np.random.default_rng(12345)
    labels = np.repeat(np.arange(10), 200)
    clients = label_group_dirichlet(labels, n_clients=20, n_groups=3, alpha=0.4, rng=rng)
    assert len(clients) == 20
    everything = np.concatenate(clients)
    assert len(everything) == len(labels)  # every sample used ...
    assert len(np.unique(everything)) == len(labels)  # ... exactly once
    again = label_group_dirichlet(labels, 20, 3, 0.4, np.random.default_rng(12345))
    for a, b in zip(clients, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_label_groups_have_sizes_3_3_4_and_dirichlet_statistics():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 1000)
    n_clients, alpha = 100, 0.4
    clients = label_group_dirichlet(labels, n_clients=n_clients, n_groups=3, alpha=alpha, rng=rng)
    presence = np.array([[np.sum(labels[c] == k) for k in range(10)] for c in clients], float)
    # Labels of one group are dealt out together, so their per-client counts are near-proportional:
    # correlation across clients reveals the groups, which must have sizes {3, 3, 4}.
    corr = np.corrcoef(presence.T)
    groups = {tuple(np.flatnonzero(corr[k] > 0.9)) for k in range(10)}
    assert sorted(len(g) for g in groups) == [3, 3, 4]
    assert sorted(k for g in groups for k in g) == list(range(10))
    # Each group's share per client follows Dir(alpha 1_C): coefficient of variation
    # sqrt((C - 1) / (C alpha + 1)) = 1.55 here (a uniform split would give about 0.3).
    expected_cv = np.sqrt((n_clients - 1) / (n_clients * alpha + 1))
    cvs = []
    for g in groups:
        counts = presence[:, list(g)].sum(axis=1)
        cvs.append(counts.std() / counts.mean())
    assert abs(np.mean(cvs) - expected_cv) < 0.4


def test_train_test_split_drops_tiny_clients_and_partitions():
    rng = np.random.default_rng(0)
    indices = [np.arange(0, 10), np.arange(10, 11), np.arange(11, 31)]
    train, test, dropped = train_test_split(indices, 0.2, rng)
    assert dropped == 1
    assert [len(t) for t in train] == [8, 16] and [len(t) for t in test] == [2, 4]
    for tr, te, full in zip(train, test, [indices[0], indices[2]], strict=True):
        np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), full)


def test_build_split_offsets_and_errors():
    xs = [np.zeros((3, 2)), np.ones((1, 2)), np.full((2, 2), 2.0)]
    ys = [np.zeros(3), np.ones(1), np.ones(2)]
    split = build_split(xs, ys)
    np.testing.assert_array_equal(split.offsets, [0, 3, 4])
    np.testing.assert_array_equal(split.client_id, [0, 0, 0, 1, 2, 2])
    assert split.max_count == 3
    with pytest.raises(DataError, match="client 1: 1 inputs but 2 labels"):
        build_split(xs, [np.zeros(3), np.ones(2), np.ones(2)])
    with pytest.raises(DataError, match="input shape"):
        build_split([np.zeros((3, 2)), np.zeros((1, 5))], [np.zeros(3), np.zeros(1)])


def test_dirichlet_per_label_invariants_and_skew():
    from fedem_jax.data.partition import dirichlet_per_label

    labels = np.repeat(np.arange(6), 400)
    clients = dirichlet_per_label(labels, n_clients=50, alpha=0.4, rng=np.random.default_rng(3))
    everything = np.concatenate(clients)
    assert len(everything) == len(labels) == len(np.unique(everything))
    again = dirichlet_per_label(labels, 50, 0.4, np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(clients, again, strict=True))
    # Per label, client shares follow Dir(0.4 * 1_50): coefficient of variation sqrt(49 / 21) = 1.53.
    counts = np.array([[np.sum(labels[c] == k) for c in clients] for k in range(6)], float)
    cv = (counts.std(axis=1) / counts.mean(axis=1)).mean()
    assert abs(cv - np.sqrt(49 / 21)) < 0.4
