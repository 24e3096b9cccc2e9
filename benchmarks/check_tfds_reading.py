"""The TensorFlow-free readers give the pixels and labels ``tfds.load`` gives, and how fast.

Reads a TFDS-prepared TFRecord folder three ways: ``tfds.load`` with TensorFlow (if installed;
``pip install 'fedem_jax[prepare]'``), fedem_jax's direct TFRecord reader, and, after converting
the folder to ArrayRecord (``fedem_jax.data.tfds_files.convert_to_array_record``), fedem_jax's
``tfds.data_source`` path. Asserts the arrays are identical and prints the timings.

    python benchmarks/check_tfds_reading.py --data_dir ../shared/data/tensorflow_datasets
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fedem_jax.data.tfds_files import convert_to_array_record, find_prepared  # noqa: E402
from fedem_jax.data.tfds_source import load_pooled  # noqa: E402


def with_tensorflow(name: str, data_dir: str):
    import tensorflow_datasets as tfds

    images, labels = [], []
    for split in ("train", "test"):
        dataset = tfds.load(name, split=split, data_dir=data_dir, download=False, batch_size=10_000)
        for batch in tfds.as_numpy(dataset):
            images.append(batch["image"])
            labels.append(batch["label"])
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--name", default="cifar10")
    args = parser.parse_args()
    folder = find_prepared(args.name, os.path.abspath(args.data_dir))
    (images, labels, source), direct_s = timed(load_pooled, args.name, args.data_dir)
    print(f"{source}: {len(labels)} examples in {direct_s:.1f} s")
    try:
        (tf_images, tf_labels), tf_s = timed(with_tensorflow, args.name, args.data_dir)
    except ImportError:
        print("TensorFlow is not installed: tfds.load not compared")
    else:
        assert np.array_equal(images, tf_images) and np.array_equal(labels, tf_labels)
        print(f"tfds.load (TensorFlow): identical arrays, {tf_s:.1f} s")
    with tempfile.TemporaryDirectory() as scratch:
        version = os.path.basename(folder)
        target = os.path.join(scratch, *args.name.split("/"), version)
        os.makedirs(os.path.dirname(target))
        _, convert_s = timed(convert_to_array_record, folder, target)
        (ar_images, ar_labels, ar_source), ar_s = timed(load_pooled, args.name, scratch)
        assert np.array_equal(images, ar_images) and np.array_equal(labels, ar_labels)
        print(f"converted to ArrayRecord in {convert_s:.1f} s; {ar_source}: identical arrays, {ar_s:.1f} s")


if __name__ == "__main__":
    main()
