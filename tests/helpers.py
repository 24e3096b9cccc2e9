"""Small hand-made federated problems for tests."""

from __future__ import annotations

import flax.linen as nn
import numpy as np

from fedem_jax.core.tasks import BINARY
from fedem_jax.data import FederatedData, build_split
from fedem_jax.settings.schema import Config, make_config


def tiny_binary_data(sizes=(5, 8, 3), dim=4, seed=0) -> FederatedData:
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, dim)).astype(np.float32) for n in sizes]
    ys = [(rng.random(n) < 0.5).astype(np.int32) for n in sizes]
    test_xs = [rng.normal(size=(4, dim)).astype(np.float32) for _ in sizes]
    test_ys = [(rng.random(4) < 0.5).astype(np.int32) for _ in sizes]
    return FederatedData("tiny", build_split(xs, ys), build_split(test_xs, test_ys), BINARY)


def tiny_config(workdir, **overrides) -> Config:
    values = dict(
        dataset="synthetic",
        model="linear",
        n_learners=2,
        n_rounds=2,
        batch_size=16,
        lr=0.1,
        lr_scheduler="constant",
        local_epochs=2,
        workdir=str(workdir),
        quiet=True,
        log_freq=1,
        client_chunk=0,
        learner_vmap=1,
        plots=False,
    )
    values.update(overrides)
    return make_config(**values)


class TinyBatchNormModel(nn.Module):
    """``x -> BatchNorm -> Dense(1)``: the smallest model with BatchNorm layers."""

    output_dim: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        norm = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
        return nn.Dense(self.output_dim)(norm(x, mask=None if mask is None else mask[:, None]))


def write_tfds_folder(data_dir, name: str, splits: dict) -> str:
    """A TFDS-prepared TFRecord folder of dataset ``name`` (its registered features) holding the
    given examples, written without TensorFlow: ``splits`` maps a split to ``{"image": uint8
    [N, H, W, C], "label": [N], ...}``. Returns the folder."""
    import io
    import os

    import tensorflow_datasets as tfds
    from PIL import Image
    from tensorflow_datasets.core import example_serializer

    from fedem_jax.data.tfds_files import write_tfrecord

    builder = tfds.builder(name, data_dir=str(data_dir))
    info, folder = builder.info, builder.data_dir
    os.makedirs(folder, exist_ok=True)
    serializer = example_serializer.ExampleSerializer(info.features.get_serialized_info())

    def png(image):
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
        return buffer.getvalue()

    split_infos = []
    for split, columns in splits.items():
        n = len(columns["image"])
        records = []
        for i in range(n):
            example = {"id": f"{split}_{i}".encode(), "image": png(columns["image"][i])}
            example.update({key: int(values[i]) for key, values in columns.items() if key != "image"})
            records.append(
                serializer.serialize_example({k: v for k, v in example.items() if k in info.features})
            )
        write_tfrecord(os.path.join(folder, f"{info.name}-{split}.tfrecord-00000-of-00001"), records)
        template = tfds.core.ShardedFileTemplate(
            data_dir=folder, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            dataset_name=info.name, split=split, filetype_suffix="tfrecord",
        )  # fmt: skip
        split_infos.append(
            tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0, filename_template=template)
        )
    info.set_splits(tfds.core.SplitDict(split_infos))
    info.write_to_directory(folder)
    return folder


def assert_pinned(summary: dict, test_accuracy: float, test_loss: float) -> None:
    """A run's final metrics equal the values recorded for its fixed seeds: the accuracy exactly
    (a ratio of counts), the loss to float32 rounding of a few operations' order."""
    import pytest

    assert summary["test_accuracy"] == pytest.approx(test_accuracy, abs=1e-9)
    assert summary["test_loss"] == pytest.approx(test_loss, rel=1e-4)
