"""Every dataset and every client split by name, each listed once: :data:`DATASETS` (its loader,
its default model, whether it reads ``--data_path``) and :data:`SPLITS` (the partitioners of
pooled image datasets). ``load_dataset(config)`` is the one entry point from a configuration to
:class:`FederatedData`; the loaders read only its data section (``DataConfig``). Adding a dataset
is one :class:`Dataset` entry here (and, for its paper hyperparameters, ``configs/<name>.py``)."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np

from fedem_jax.core.tasks import Task
from fedem_jax.data.federated import FederatedData, assemble, train_test_split
from fedem_jax.data.leaf_source import load_femnist, load_shakespeare
from fedem_jax.data.npz_source import load_npz
from fedem_jax.data.partition import (
    classes_per_client,
    dirichlet_per_label,
    iid,
    label_group_dirichlet,
    pachinko,
    pathological_shards,
)
from fedem_jax.data.store import load_store
from fedem_jax.data.synthetic import generate_synthetic
from fedem_jax.data.tfds_source import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    load_pooled,
    load_pooled_features,
    normalize_images,
)
from fedem_jax.errors import DataError

CIFAR10_GROUPS = 3


def _cifar10(cfg) -> FederatedData:
    """80 clients, label groups {3,3,4} x Dirichlet(0.4) over pooled train+test (spec section 5)."""
    images, labels, source = load_pooled("cifar10", cfg.data_dir)
    rng = np.random.default_rng(cfg.data_seed)
    images, labels = _subsample(cfg, images, labels, rng)
    clients = _partition(cfg, labels, None, rng)
    return _split_images(
        cfg, "cifar10", images, labels, clients, CIFAR10_MEAN, CIFAR10_STD, Task(10), rng, source
    )


CIFAR100_PER_CLIENT = 600
CIFAR100_FINE_ALPHA = 10.0


def _cifar100(cfg) -> FederatedData:
    """100 clients x 600 samples by Pachinko allocation over pooled train+test (spec section 5)."""
    features, source = load_pooled_features("cifar100", cfg.data_dir, ("image", "label", "coarse_label"))
    images, labels = features["image"], features["label"].astype(np.int32)
    coarse = features["coarse_label"].astype(np.int32)
    rng = np.random.default_rng(cfg.data_seed)
    keep = _subsample_index(cfg, len(labels), rng)
    images, labels, coarse = images[keep], labels[keep], coarse[keep]
    clients = _partition(cfg, labels, coarse, rng)
    return _split_images(
        cfg, "cifar100", images, labels, clients, CIFAR100_MEAN, CIFAR100_STD, Task(100), rng, source
    )


def _pachinko(cfg, labels, coarse_labels, rng):
    if coarse_labels is None:
        raise DataError(f"--split pachinko needs coarse labels; {cfg.dataset} has none (use cifar100)")
    per_client = min(CIFAR100_PER_CLIENT, len(labels) // cfg.n_clients)
    if per_client < 2:
        raise DataError(f"--split pachinko: {len(labels)} samples are too few for {cfg.n_clients} clients")
    return pachinko(labels, coarse_labels, cfg.n_clients, per_client, cfg.alpha, CIFAR100_FINE_ALPHA, rng)


def _classes(cfg, labels, coarse_labels, rng):
    try:
        return classes_per_client(labels, cfg.n_clients, cfg.classes_per_client, rng)
    except ValueError as err:
        raise DataError(f"--split classes: {err}") from None


# ``--split``: name -> (data config, labels, coarse labels or None, rng) -> one index array per client.
SPLITS: dict[str, Callable] = {
    "label_groups": lambda cfg, labels, _, rng: label_group_dirichlet(
        labels, cfg.n_clients, CIFAR10_GROUPS, cfg.alpha, rng
    ),
    "dirichlet": lambda cfg, labels, _, rng: dirichlet_per_label(labels, cfg.n_clients, cfg.alpha, rng),
    "shards": lambda cfg, labels, _, rng: pathological_shards(
        labels, cfg.n_clients, cfg.shards_per_client, rng
    ),
    "pachinko": _pachinko,
    "iid": lambda cfg, labels, _, rng: iid(len(labels), cfg.n_clients, rng),
    "classes": _classes,
}


def _partition(cfg, labels, coarse_labels, rng) -> list[np.ndarray]:
    """``--split``: the dataset's own split by default, or any other that applies to it."""
    if cfg.split not in SPLITS:
        raise DataError(f"--split {cfg.split!r} does not apply to {cfg.dataset}")
    return SPLITS[cfg.split](cfg, labels, coarse_labels, rng)


EMNIST_MEAN, EMNIST_STD = np.float32(0.1307), np.float32(0.3081)


def _split_images(cfg, name, images, labels, clients, mean, std, task, rng, source="") -> FederatedData:
    """Per-client 80/20 split (dropping clients too small for it), normalisation, assembly;
    ``source``: the loader's line saying where the data was read from."""
    train_idx, test_idx, dropped = train_test_split(clients, cfg.test_frac, rng)
    if dropped:
        warnings.warn(
            f"{name}: dropped {dropped} of {len(clients)} clients with too few samples "
            f"for a {1 - cfg.test_frac:.0%}/{cfg.test_frac:.0%} train/test split",
            stacklevel=3,
        )
    if not train_idx:
        raise DataError(f"{name}: no client has enough samples; lower --n_clients")
    x = normalize_images(images, mean, std)
    data = assemble(
        name,
        task,
        ([x[i] for i in train_idx], [labels[i] for i in train_idx]),
        ([x[i] for i in test_idx], [labels[i] for i in test_idx]),
        val_frac=cfg.val_frac,
        unseen_frac=cfg.test_clients_frac,
        rng=rng,
    )
    return dataclasses.replace(data, source=source)


def _subsample(cfg, images, labels, rng):
    """Keep ``--data_frac`` of the pooled samples (then at most ``--max_samples``), at random."""
    chosen = _subsample_index(cfg, len(labels), rng)
    return images[chosen], labels[chosen]


def _subsample_index(cfg, n: int, rng) -> np.ndarray:
    keep = n
    if cfg.data_frac < 1:
        keep = int(round(cfg.data_frac * keep))
    if cfg.max_samples:
        keep = min(keep, cfg.max_samples)
    if keep < n:
        return np.sort(rng.permutation(n)[:keep])
    return np.arange(n)


def _emnist(cfg) -> FederatedData:
    """EMNIST byclass (62 classes): 10 % of train+test, per-label Dirichlet(0.4) over 100 clients."""
    images, labels, source = load_pooled("emnist/byclass", cfg.data_dir)
    rng = np.random.default_rng(cfg.data_seed)
    images, labels = _subsample(cfg, images, labels, rng)
    clients = _partition(cfg, labels, None, rng)
    return _split_images(
        cfg, "emnist", images, labels, clients, EMNIST_MEAN, EMNIST_STD, Task(num_classes=62), rng, source
    )


def _synthetic(cfg) -> FederatedData:
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


def _by_input_shape(data: FederatedData) -> str:
    """Your own data: the model it names (a store's), else ``mlp`` for feature vectors, ``cnn`` for images."""
    if data.model:
        return data.model
    return "mlp" if data.train.x.ndim == 2 else "cnn"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset by name: how it is loaded from the data section of a configuration, and its model
    when ``--model`` is not given (a name, or a function of the loaded data)."""

    load: Callable[[object], FederatedData]
    default_model: str | Callable[[FederatedData], str]
    reads_path: bool = False  # read from --data_path (else generated, or from TFDS's --data_dir)

    def model_for(self, data: FederatedData) -> str:
        return self.default_model if isinstance(self.default_model, str) else self.default_model(data)


DATASETS: dict[str, Dataset] = {
    "synthetic": Dataset(_synthetic, "linear"),
    "cifar10": Dataset(_cifar10, "cifar10_cnn"),
    "cifar100": Dataset(_cifar100, "cifar10_cnn"),
    "emnist": Dataset(_emnist, "femnist_cnn"),
    "femnist": Dataset(load_femnist, "femnist_cnn", reads_path=True),
    "shakespeare": Dataset(load_shakespeare, "lstm", reads_path=True),
    "npz": Dataset(load_npz, _by_input_shape, reads_path=True),
    "store": Dataset(load_store, _by_input_shape, reads_path=True),
}


def load_dataset(config) -> FederatedData:
    """Build the federated dataset of ``config.data`` (a :class:`~fedem_jax.settings.schema.DataConfig`),
    reproducibly from its ``data_seed``."""
    cfg = config.data
    if cfg.dataset not in DATASETS:
        raise DataError(f"unknown dataset {cfg.dataset!r}; valid: {', '.join(DATASETS)}")
    if DATASETS[cfg.dataset].reads_path and not cfg.data_path:
        raise DataError(
            f"--data_path is required with --dataset {cfg.dataset} (or pass your data to the session)"
        )
    try:
        return DATASETS[cfg.dataset].load(cfg)
    except MemoryError as err:  # a size no estimate foresaw: one line, not numpy's traceback
        raise DataError(
            f"not enough memory to load {cfg.dataset} ({str(err)[:160]}); "
            "use fewer clients or samples (--n_clients, --max_samples, --data_frac)"
        ) from None
