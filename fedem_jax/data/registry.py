"""``load_dataset(config)``: the one entry point from a :class:`Config` to :class:`FederatedData`."""

from __future__ import annotations

import warnings

import numpy as np

from fedem_jax.core.tasks import Task
from fedem_jax.data.federated import DataError, FederatedData, assemble, train_test_split
from fedem_jax.data.npz_source import load_npz
from fedem_jax.data.partition import label_group_dirichlet
from fedem_jax.data.synthetic import generate_synthetic
from fedem_jax.data.tfds_source import CIFAR10_MEAN, CIFAR10_STD, load_pooled, normalize_images

CIFAR10_GROUPS = 3


def _cifar10(cfg) -> FederatedData:
    """80 clients, label groups {3,3,4} x Dirichlet(0.4) over pooled train+test (spec section 5)."""
    images, labels = load_pooled("cifar10", cfg.data_dir)
    rng = np.random.default_rng(cfg.data_seed)
    if cfg.max_samples:
        keep = np.sort(rng.permutation(len(labels))[: cfg.max_samples])
        images, labels = images[keep], labels[keep]
    clients = label_group_dirichlet(labels, cfg.n_clients, CIFAR10_GROUPS, cfg.alpha, rng)
    train_idx, test_idx, dropped = train_test_split(clients, cfg.test_frac, rng)
    if dropped:
        warnings.warn(
            f"cifar10: dropped {dropped} of {len(clients)} clients with too few samples "
            f"for a {1 - cfg.test_frac:.0%}/{cfg.test_frac:.0%} train/test split",
            stacklevel=2,
        )
    if not train_idx:
        raise DataError("cifar10: no client has enough samples; lower --n_clients")
    x = normalize_images(images, CIFAR10_MEAN, CIFAR10_STD)
    return assemble(
        "cifar10",
        Task(num_classes=10),
        ([x[i] for i in train_idx], [labels[i] for i in train_idx]),
        ([x[i] for i in test_idx], [labels[i] for i in test_idx]),
        val_frac=cfg.val_frac,
        unseen_frac=cfg.test_clients_frac,
        rng=rng,
    )


def load_dataset(cfg) -> FederatedData:
    """Build the federated dataset named by ``cfg.dataset``, reproducibly from ``cfg.data_seed``."""
    if cfg.dataset == "synthetic":
        data, _ = generate_synthetic(
            n_clients=cfg.n_clients,
            dim=cfg.dim,
            n_components=cfg.synthetic_components,
            alpha=cfg.alpha,
            noise_std=cfg.noise_std,
            n_test_per_client=cfg.n_test_per_client,
            seed=cfg.data_seed,
            val_frac=cfg.val_frac,
            unseen_frac=cfg.test_clients_frac,
        )
        return data
    if cfg.dataset == "cifar10":
        return _cifar10(cfg)
    if cfg.dataset == "npz":
        return load_npz(cfg)
    raise DataError(f"unknown dataset {cfg.dataset!r}")
