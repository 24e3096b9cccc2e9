"""Image datasets from TensorFlow Datasets, read once into numpy (never downloaded at run time).

TensorFlow is imported lazily here, so runs on generated data do not pay its start-up cost.
"""

from __future__ import annotations

import os

import numpy as np

from fedem_jax.data.federated import DataError

READ_BATCH = 10_000  # explicit batch size: batch_size=-1 crashes under tfds mock_data with TF 2.21

CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
CIFAR10_STD = np.array([0.2023, 0.1994, 0.2010], dtype=np.float32)
CIFAR100_MEAN = np.array([0.5071, 0.4865, 0.4409], dtype=np.float32)
CIFAR100_STD = np.array([0.2673, 0.2564, 0.2762], dtype=np.float32)


def resolve_data_dir(data_dir: str) -> str:
    """``--data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    if data_dir:
        return os.path.abspath(os.path.expanduser(data_dir))
    env = os.environ.get("TFDS_DATA_DIR")
    return os.path.abspath(os.path.expanduser(env or "~/tensorflow_datasets"))


def how_to_prepare(name: str, data_dir: str) -> str:
    return (
        f"TFDS dataset {name!r} was not found in {data_dir}. Prepare it on a machine with internet:\n"
        f'  python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{name}', data_dir='DIR').download_and_prepare()\"\n"
        f"then copy DIR here and pass --data_dir DIR (or set TFDS_DATA_DIR=DIR)."
    )


def load_pooled(name: str, data_dir: str, splits=("train", "test")) -> tuple[np.ndarray, np.ndarray]:
    """All ``splits`` of a supervised TFDS dataset concatenated: ``(uint8 images, int labels)``."""
    features = load_pooled_features(name, data_dir, ("image", "label"), splits)
    return features["image"], features["label"].astype(np.int32)


def load_pooled_features(name: str, data_dir: str, keys, splits=("train", "test")) -> dict[str, np.ndarray]:
    """The features ``keys`` of all ``splits`` of a TFDS dataset, concatenated, as numpy."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow_datasets as tfds

    data_dir = resolve_data_dir(data_dir)
    columns: dict[str, list] = {key: [] for key in keys}
    for split in splits:
        try:
            dataset = tfds.load(
                name,
                split=split,
                data_dir=data_dir,
                download=False,
                batch_size=READ_BATCH,
                shuffle_files=False,
            )
        except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError):
            raise DataError(how_to_prepare(name, data_dir)) from None
        for batch in tfds.as_numpy(dataset):
            missing = [key for key in keys if key not in batch]
            if missing:
                raise DataError(f"TFDS dataset {name!r} has no feature(s) {missing}; it has {sorted(batch)}")
            for key in keys:
                columns[key].append(batch[key])
    if not columns[keys[0]]:
        raise DataError(f"TFDS dataset {name!r} in {data_dir} has no examples")
    return {key: np.concatenate(parts) for key, parts in columns.items()}


def normalize_images(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 ``(x / 255 - mean) / std`` (ToTensor + Normalize, done once)."""
    return ((images.astype(np.float32) / 255.0) - mean) / std
