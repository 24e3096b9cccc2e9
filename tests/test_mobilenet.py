"""MobileNetV2 with BatchNorm: torchvision's parameter counts; running statistics trained, kept out
of the optimizer, and averaged by the server like the weights."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from helpers import tiny_config

from fedem_jax.core.tasks import Task
from fedem_jax.data import FederatedData, build_split
from fedem_jax.models import MODELS, count_params
from fedem_jax.models.mobilenet import MobileNetV2
from fedem_jax.training.experiment import build


def _shapes(model):
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


def test_parameter_counts_match_torchvision():
    variables = _shapes(MobileNetV2(10))
    assert count_params(variables["params"]) == 2_236_682  # torchvision mobilenet_v2(num_classes=10)
    assert count_params(variables["batch_stats"]) == 34_112  # running means and variances
    assert count_params(_shapes(MobileNetV2(100))["params"]) == 2_351_972


def _images(sizes=(6, 10), seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, 32, 32, 3)).astype(np.float32) for n in sizes]
    ys = [rng.integers(0, 10, n).astype(np.int32) for n in sizes]
    return FederatedData("img", build_split(xs, ys), build_split(xs, ys), Task(10))


def test_batch_stats_are_trained_and_averaged_like_weights(tmp_path, monkeypatch):
    # A two-block MobileNetV2 (the same layers and BatchNorm handling, a fraction of the compile time).
    small = functools.partial(MobileNetV2, block_settings=((1, 16, 1, 1), (6, 24, 1, 2)), last_channels=64)
    monkeypatch.setitem(MODELS, "mobilenet_v2", dataclasses.replace(MODELS["mobilenet_v2"], module=small))
    data = _images()
    common = dict(
        model="mobilenet_v2",
        n_learners=1,
        batch_size=4,
        local_epochs=1,
        lr=0.05,
        drop_last=True,
    )
    fedavg = build(tiny_config(tmp_path, method="FedAvg", **common), data).algorithm
    local = build(tiny_config(tmp_path, method="local", **common), data).algorithm
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
    assert momentum_size == 2 * count_params(start.params["params"])
    # Evaluation runs the components in eval mode, with the averaged running statistics.
    stats = jax.jit(fedavg.evaluate)(averaged, data.test)
    assert float(np.sum(stats["count"])) == 16 and np.isfinite(np.asarray(stats["loss_sum"])).all()


def test_slice_convolutions_match_xla_values_and_gradients():
    """MobileNetV2's dense, strided and depthwise convolutions as slices (CPU training) = XLA's."""
    from fedem_jax.models.mobilenet import MobileConv

    x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 8))
    for features, kernel, stride, groups in [
        (16, 3, 2, 1),
        (16, 3, 1, 1),
        (8, 3, 1, 8),
        (8, 3, 2, 8),
        (16, 1, 1, 1),
    ]:
        xla = MobileConv(features, kernel, stride, groups, "xla")
        slices = MobileConv(features, kernel, stride, groups, "matmul")
        variables = xla.init(jax.random.PRNGKey(0), x)
        chex.assert_trees_all_close(slices.apply(variables, x), xla.apply(variables, x), atol=5e-6)
        grads = [jax.grad(lambda v, m=m: jnp.sum(jnp.sin(m.apply(v, x))))(variables) for m in (xla, slices)]
        chex.assert_trees_all_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


def test_matmul_form_matches_xla_under_vmap_of_weights():
    """The GPU layout's case: a (small) MobileNetV2 with one set of weights per client and
    learner, vmapped. XLA then groups its convolutions over the weight sets; the matmul form
    (MobileNetV2's default now) batches matmuls. Losses, gradients and batch statistics agree."""
    from fedem_jax.models.mobilenet import MobileNetV2

    settings = {"block_settings": ((1, 8, 1, 1), (6, 16, 2, 2)), "last_channels": 32}
    xla, matmul = (MobileNetV2(10, conv_impl=impl, **settings) for impl in ("xla", "matmul"))
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 32, 32, 3))  # [weight sets, batch, ...]
    y = jnp.arange(12).reshape(3, 4) % 10
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    variables = jax.vmap(lambda k: xla.init(k, x[0]))(keys)

    def loss_and_grads(model):
        def loss(v, xs, ys):
            logits, stats = model.apply(v, xs, train=True, mutable=["batch_stats"])
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), ys]), stats

        return jax.jit(jax.vmap(jax.value_and_grad(loss, has_aux=True)))(variables, x, y)

    (loss_x, stats_x), grads_x = loss_and_grads(xla)
    (loss_m, stats_m), grads_m = loss_and_grads(matmul)
    chex.assert_trees_all_close(loss_m, loss_x, rtol=1e-5)
    chex.assert_trees_all_close(stats_m, stats_x, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(grads_m, grads_x, rtol=1e-3, atol=1e-5)
