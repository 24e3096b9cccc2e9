"""Image datasets from TensorFlow Datasets, read once into numpy, without TensorFlow.

Never downloaded at run time. A folder prepared as ArrayRecord is read with ``tfds.data_source``;
one prepared as TFRecord (TFDS's default, as in ``../shared/data``) is read directly (see
:mod:`fedem_jax.data.tfds_files`). Both decode the same serialized examples with
``features.deserialize_example_np``, so pixels and labels are those ``tfds.load`` gives.
"""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np

from fedem_jax.data.tfds_files import file_format, find_prepared, read_tfrecord, split_files
from fedem_jax.errors import DataError

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
        f"TFDS dataset {name!r} was not found in {data_dir}. Prepare it on a machine with internet "
        f"(pip install 'fedem_jax[prepare]'):\n"
        f'  python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{name}', data_dir='DIR').download_and_prepare(file_format='array_record')\"\n"
        f"then copy DIR here and pass --data_dir DIR (or set TFDS_DATA_DIR=DIR)."
    )


def load_pooled(name: str, data_dir: str, splits=("train", "test")) -> tuple[np.ndarray, np.ndarray, str]:
    """All ``splits`` of a supervised TFDS dataset concatenated: ``(uint8 images, int labels,
    where they were read from)``."""
    features, source = load_pooled_features(name, data_dir, ("image", "label"), splits)
    return features["image"], features["label"].astype(np.int32), source


def load_pooled_features(name: str, data_dir: str, keys, splits=("train", "test")):
    """The features ``keys`` of all ``splits`` of a TFDS dataset, concatenated, as numpy, and one
    line saying what was read (``(features, source)``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    data_dir = resolve_data_dir(data_dir)
    folder = find_prepared(name, data_dir)
    if folder is not None and file_format(folder) == "tfrecord":
        examples = _tfrecord_examples(folder, splits)
        source = f"{name}: read the TFRecord folder {folder} directly (no TensorFlow)"
    else:  # ArrayRecord (and tfds.testing.mock_data, which mocks data_source)
        examples = _data_source_examples(name, data_dir, splits)
        source = f"{name}: read {folder or data_dir} with tfds.data_source (ArrayRecord)"
    with _quiet_absl():  # TFDS's "OpenCV is not installed ... Defaulting to PIL" warning
        columns = _columns(examples, keys, name)
    if not len(columns[keys[0]]):
        raise DataError(f"TFDS dataset {name!r} in {data_dir} has no examples")
    return columns, source


@contextlib.contextmanager
def _quiet_absl():
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(level)


def _tfrecord_examples(folder: str, splits):
    from tensorflow_datasets.core import read_only_builder

    features = read_only_builder.builder_from_directory(folder).info.features
    for split in splits:
        for path in split_files(folder, split):
            for record in read_tfrecord(path):
                yield features.deserialize_example_np(record)


def _data_source_examples(name: str, data_dir: str, splits):
    import tensorflow_datasets as tfds

    for split in splits:
        try:
            source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except (
            AssertionError,
            FileNotFoundError,
            NotImplementedError,
            tfds.core.registered.DatasetNotFoundError,
        ):
            # NotImplementedError: an unprepared builder's default format (TFRecord) is refused
            raise DataError(how_to_prepare(name, data_dir)) from None
        for index in range(len(source)):
            yield source[index]


def _columns(examples, keys, name: str) -> dict[str, np.ndarray]:
    columns: dict[str, list] = {key: [] for key in keys}
    for example in examples:
        missing = [key for key in keys if key not in example]
        if missing:
            raise DataError(f"TFDS dataset {name!r} has no feature(s) {missing}; it has {sorted(example)}")
        for key in keys:
            columns[key].append(example[key])
    return {key: np.stack(values) if values else np.zeros((0,)) for key, values in columns.items()}


def normalize_images(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 ``(x / 255 - mean) / std`` (ToTensor + Normalize, done once)."""
    return ((images.astype(np.float32) / 255.0) - mean) / std
