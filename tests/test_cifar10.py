"""CIFAR-10 through TFDS with mock data (never the network, never ../shared)."""

import json

import numpy as np
import pytest
from helpers import assert_pinned

from fedem_jax.main import main

tfds = pytest.importorskip("tensorflow_datasets")

# tfds.testing.mock_data also mocks etils.epath, which orbax's background clean-up thread and
# TensorBoard use: under the mock they would see a re-rooted file system (seen as a flaky
# FileNotFoundError in CI). Checkpoints and event files are tested without the mock elsewhere.
NO_FILES_UNDER_MOCK = ("--checkpoint_every", "0", "--tensorboard", "false")


def test_cifar10_end_to_end_with_mock_data(tmp_path):
    workdir = tmp_path / "w"
    with tfds.testing.mock_data(num_examples=48):
        rc = main(
            [
                "--dataset", "cifar10", "--data_dir", str(tmp_path / "tfds"), "--n_clients", "4",
                "--alpha", "100", "--batch_size", "8", "--n_rounds", "1", "--n_learners", "2",
                "--workdir", str(workdir), "--quiet", *NO_FILES_UNDER_MOCK,
            ]
        )  # fmt: skip
    assert rc == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["model"] == "cifar10_cnn" and summary["n_clients"] == 4
    assert np.isfinite(summary["test_loss"]) and 0 <= summary["test_accuracy"] <= 1
    assert_pinned(summary, test_accuracy=0.2, test_loss=2.3098107814788817)


def test_cifar10_without_data_says_where_and_how(tmp_path, capsys):
    missing = tmp_path / "no_tfds_here"
    rc = main(["--dataset", "cifar10", "--data_dir", str(missing), "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert rc == 1
    assert str(missing) in err and "download_and_prepare" in err and "--data_dir" in err
    assert "Traceback" not in err


def test_cifar10_model_has_spec_parameter_count():
    import jax
    import jax.numpy as jnp

    from fedem_jax.models import build_model, count_params

    model = build_model("cifar10_cnn", 10)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert count_params(params) == 3_353_034
    linear = build_model("linear", 1).init(jax.random.PRNGKey(0), jnp.zeros((1, 150)))["params"]
    assert count_params(linear) == 151


def test_matmul_convolution_matches_xla_convolution_and_its_gradient():
    import chex
    import jax
    import jax.numpy as jnp

    from fedem_jax.models import build_model

    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    y = jnp.arange(4) % 10
    xla = build_model("cifar10_cnn", 10, conv_impl="xla")
    matmul = build_model("cifar10_cnn", 10, conv_impl="matmul")
    params = xla.init(jax.random.PRNGKey(0), x[:1])["params"]
    chex.assert_trees_all_equal_shapes(params, matmul.init(jax.random.PRNGKey(0), x[:1])["params"])

    def loss(model):
        return lambda p: -jax.nn.log_softmax(model.apply({"params": p}, x))[jnp.arange(4), y].mean()

    chex.assert_trees_all_close(
        xla.apply({"params": params}, x), matmul.apply({"params": params}, x), rtol=1e-4, atol=1e-5
    )
    chex.assert_trees_all_close(
        jax.grad(loss(xla))(params), jax.grad(loss(matmul))(params), rtol=1e-3, atol=1e-6
    )


def test_reshape_max_pool_equals_flax_max_pool():
    import chex
    import flax.linen as nn
    import jax

    from fedem_jax.models import max_pool_2x2

    x = jax.random.normal(jax.random.PRNGKey(0), (3, 28, 28, 5))
    chex.assert_trees_all_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


def test_emnist_end_to_end_with_mock_data(tmp_path):
    workdir = tmp_path / "w"
    with tfds.testing.mock_data(num_examples=40):
        rc = main(
            [
                "--dataset", "emnist", "--data_dir", str(tmp_path / "tfds"), "--n_clients", "3",
                "--data_frac", "1", "--alpha", "100", "--batch_size", "8", "--n_rounds", "1",
                "--n_learners", "2", "--workdir", str(workdir), "--quiet", *NO_FILES_UNDER_MOCK,
            ]
        )  # fmt: skip
    assert rc == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["model"] == "femnist_cnn" and summary["n_clients"] == 3
    assert np.isfinite(summary["test_loss"])
    assert_pinned(summary, test_accuracy=0.0, test_loss=4.145045280456543)


def test_emnist_without_data_says_where_and_how(tmp_path, capsys):
    rc = main(["--dataset", "emnist", "--data_dir", str(tmp_path / "none"), "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert rc == 1 and "'emnist/byclass' was not found" in err and "download_and_prepare" in err
