"""TFDS folders read without TensorFlow: TFRecord directly, ArrayRecord via ``tfds.data_source``.

The folders are written here from known arrays (no network, never ../shared), so the arrays read
back are checked against the truth, which is also what ``tfds.load`` gives (checked once on the
real CIFAR-10 by ``benchmarks/check_tfds_reading.py``).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fedem_jax.data.convert import main as convert_main
from fedem_jax.data.tfds_files import convert_to_array_record, crc32c, file_format
from fedem_jax.data.tfds_source import load_pooled, load_pooled_features
from fedem_jax.errors import DataError
from fedem_jax.main import main
from tests.helpers import write_tfds_folder

pytest.importorskip("tensorflow_datasets")


def _cifar_like(n, seed, coarse=False):
    rng = np.random.default_rng(seed)
    columns = {"image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "label": rng.integers(0, 10, n)}
    if coarse:
        columns["coarse_label"] = rng.integers(0, 20, n)
    return columns


@pytest.fixture(scope="module")
def cifar10_folder(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    splits = {"train": _cifar_like(40, 0), "test": _cifar_like(12, 1)}
    return str(data_dir), write_tfds_folder(data_dir, "cifar10", splits), splits


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C


def test_tfrecord_folder_is_read_directly_with_the_written_pixels_and_labels(cifar10_folder):
    data_dir, folder, splits = cifar10_folder
    images, labels, source = load_pooled("cifar10", data_dir)
    np.testing.assert_array_equal(images, np.concatenate([splits["train"]["image"], splits["test"]["image"]]))
    np.testing.assert_array_equal(labels, np.concatenate([splits["train"]["label"], splits["test"]["label"]]))
    assert (
        labels.dtype == np.int32
        and source == f"cifar10: read the TFRecord folder {folder} directly (no TensorFlow)"
    )


def test_array_record_conversion_reads_the_same_through_data_source(cifar10_folder, tmp_path):
    data_dir, folder, _ = cifar10_folder
    target = tmp_path / "cifar10" / os.path.basename(folder)
    target.parent.mkdir()
    assert convert_main([folder, str(target)]) == 0
    assert file_format(str(target)) == "array_record" and file_format(folder) == "tfrecord"
    images, labels, source = load_pooled("cifar10", str(tmp_path))
    expected_images, expected_labels, _ = load_pooled("cifar10", data_dir)
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    assert "tfds.data_source (ArrayRecord)" in source


def test_cifar100_features_and_coarse_labels(tmp_path):
    splits = {"train": _cifar_like(8, 2, coarse=True), "test": _cifar_like(4, 3, coarse=True)}
    write_tfds_folder(tmp_path, "cifar100", splits)
    features, _ = load_pooled_features("cifar100", str(tmp_path), ("image", "label", "coarse_label"))
    for key in ("image", "label", "coarse_label"):
        np.testing.assert_array_equal(
            features[key], np.concatenate([splits["train"][key], splits["test"][key]])
        )


def test_damaged_folders_are_data_errors(cifar10_folder, tmp_path):
    _, folder, _ = cifar10_folder
    broken = tmp_path / "cifar10" / "3.0.2"
    convert_to_array_record(folder, str(tmp_path / "ar"))  # a good copy to damage
    broken.parent.mkdir()
    os.rename(tmp_path / "ar", broken)
    info = json.loads((broken / "dataset_info.json").read_text())
    info["fileFormat"] = "tfrecord"  # claims TFRecord, holds no such files
    (broken / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="split 'train' is incomplete"):
        load_pooled("cifar10", str(tmp_path))
    train = os.path.join(folder, "cifar10-train.tfrecord-00000-of-00001")
    with open(train, "rb") as f:
        content = f.read()
    with open(broken / "cifar10-train.tfrecord-00000-of-00001", "wb") as f:
        f.write(content[: len(content) // 2])  # cut inside a record
    (broken / "cifar10-test.tfrecord-00000-of-00001").write_bytes(b"")
    with pytest.raises(DataError, match="truncated TFRecord file"):
        load_pooled("cifar10", str(tmp_path))


def test_cifar10_run_from_a_tfrecord_folder_never_imports_tensorflow(cifar10_folder, tmp_path):
    data_dir, folder, _ = cifar10_folder
    script = (
        "import sys; from fedem_jax.main import main; "
        f"rc = main(['--dataset', 'cifar10', '--data_dir', {data_dir!r}, '--n_clients', '2', "
        f"'--alpha', '100', '--batch_size', '8', '--n_rounds', '1', '--n_learners', '2', "
        "'--model', 'linear', '--workdir', "
        f"{str(tmp_path / 'w')!r}, '--checkpoint_every', '0', '--tensorboard', 'false']); "
        "assert rc == 0, rc; assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"read the TFRecord folder {folder} directly" in done.stdout


@pytest.mark.parametrize("split,flags,labels_per_client", [("classes", ["--classes_per_client", "2"], {2}),
                                                          ("iid", [], None)])  # fmt: skip
def test_cifar10_splits_iid_and_k_classes_end_to_end(
    cifar10_folder, tmp_path, split, flags, labels_per_client
):
    data_dir, _, _ = cifar10_folder
    workdir = tmp_path / "w"
    rc = main(
        ["--dataset", "cifar10", "--data_dir", data_dir, "--split", split, *flags, "--n_clients", "5",
         "--n_rounds", "1", "--n_learners", "2", "--model", "linear", "--batch_size", "8", "--workdir",
         str(workdir), "--checkpoint_every", "0", "--tensorboard", "false", "--quiet"]
    )  # fmt: skip
    assert rc == 0
    partition = json.loads((workdir / "partition.json").read_text())
    train, test = np.array(partition["train"]), np.array(partition["test"])
    assert (train + test).sum() == 52  # every sample of the 40 + 12 written (5 x 2 labels cover all 10)
    if labels_per_client is not None:
        assert {int(n) for n in np.count_nonzero(train + test, axis=1)} == labels_per_client
    else:
        assert sorted((train + test).sum(axis=1).tolist()) == [10, 10, 10, 11, 11]
    assert (workdir / "partition.png").exists()


def test_convert_refuses_what_it_cannot_convert_in_one_line(cifar10_folder, tmp_path, capsys):
    assert convert_main([str(tmp_path / "nothing"), str(tmp_path / "out")]) == 1
    assert "cannot read the dataset's description" in capsys.readouterr().err
    _, folder, _ = cifar10_folder
    converted = tmp_path / "ar"
    assert convert_main([folder, str(converted)]) == 0
    assert convert_main([str(converted), str(tmp_path / "again")]) == 1
    assert capsys.readouterr().err.strip().endswith("is not a TFRecord folder")
    assert convert_main([folder]) == 2
