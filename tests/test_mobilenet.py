"""MobileNetV2 with BatchNorm: torchvision's parameter counts; running statistics trained, kept out
of the optimizer, and averaged by the server like the weights."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from helpers import tiny_config

from fedem_jax.core.tasks import Task
from fedem_jax.data import FederatedData, build_split
from fedem_jax.mobilenet import MobileNetV2
from fedem_jax.models import count_params
from fedem_jax.train import build


def test_parameter_counts_match_torchvision():
    variables = MobileNetV2(10).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    assert count_params(variables["params"]) == 2_236_682  # torchvision mobilenet_v2(num_classes=10)
    assert count_params(variables["batch_stats"]) == 34_112  # running means and variances
    big = MobileNetV2(100).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    assert count_params(big["params"]) == 2_351_972


def _images(sizes=(6, 10), seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, 32, 32, 3)).astype(np.float32) for n in sizes]
    ys = [rng.integers(0, 10, n).astype(np.int32) for n in sizes]
    return FederatedData("img", build_split(xs, ys), build_split(xs, ys), Task(10))


def test_batch_stats_are_trained_and_averaged_like_weights(tmp_path):
    data = _images()
    common = dict(model="mobilenet_v2", n_learners=1, batch_size=4, local_epochs=1, lr=0.05, drop_last=True)
    _, fedavg, _ = build(tiny_config(tmp_path, method="FedAvg", **common), data)
    _, local, _ = build(tiny_config(tmp_path, method="local", **common), data)
    start = fedavg.init(data)
    averaged, _ = jax.jit(fedavg.round)(start, data.train)
    personal, _ = jax.jit(local.round)(local.init(data), data.train)  # same keys, same batches
    stats_before = start.params["batch_stats"]
    stats_after = personal.params["batch_stats"]
    # Training moved the running statistics of both clients ...
    leaf_before = jax.tree.leaves(stats_before)[0]
    for c in range(2):
        assert not np.allclose(np.asarray(jax.tree.leaves(stats_after)[0][c]), np.asarray(leaf_before))
    # ... and the server's model is the n_t-weighted average of the clients', statistics included.
    weights = np.array([6.0, 10.0]) / 16.0
    want = jax.tree.map(lambda a: np.tensordot(weights, np.asarray(a, np.float64), axes=1), personal.params)
    chex.assert_trees_all_close(jax.tree.map(np.asarray, averaged.params), want, rtol=2e-4, atol=1e-5)
    # The optimizer keeps momentum for the weights of both clients and none for the statistics.
    momentum_size = sum(leaf.size for leaf in jax.tree.leaves(start.clients.opt_state))
    assert momentum_size == 2 * 2_236_682
    # Evaluation runs the components in eval mode, with the averaged running statistics.
    stats = jax.jit(fedavg.evaluate)(averaged, data.test)
    assert float(np.sum(stats["count"])) == 16 and np.isfinite(np.asarray(stats["loss_sum"])).all()
