"""``--init torch``: PyTorch's default initialisation, checked against its formulas (and against
PyTorch's own layers where torch is installed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from helpers import tiny_binary_data, tiny_config

from fedem_jax.models import build_model, model_state, torch_default_init
from fedem_jax.training.experiment import build, make_context


def _init(name, shape, output_dim=10):
    model = build_model(name, output_dim)
    flax_params = model_state(model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))
    return flax_params, torch_default_init(flax_params, jax.random.PRNGKey(1))


def _check_uniform(values, bound):
    values = np.asarray(values, np.float64).ravel()
    assert np.abs(values).max() <= bound * (1 + 1e-6)  # float32 rounding of the bound
    if values.size >= 200:  # fills its interval (fails with probability 0.95^size)
        assert np.abs(values).max() > 0.95 * bound
    if values.size > 2000:  # U(-b, b): mean 0, std b / sqrt(3)
        assert abs(values.std() - bound / np.sqrt(3)) < 0.03 * bound
        assert abs(values.mean()) < 0.05 * bound


def test_cnn_layers_follow_pytorch_formulas():
    """CIFAR10CNN: conv 5x5x3 -> 32, conv 5x5x32 -> 64, FC 1600 -> 2048, FC 2048 -> 10; weight and
    bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, fan_in = inputs x kernel area."""
    _, params = _init("cifar10_cnn", (1, 32, 32, 3))
    fan_ins = {"Conv_0": 5 * 5 * 3, "Conv_1": 5 * 5 * 32, "Dense_0": 1600, "Dense_1": 2048}
    for layer, fan_in in fan_ins.items():
        _check_uniform(params[layer]["kernel"], 1 / np.sqrt(fan_in))
        _check_uniform(params[layer]["bias"], 1 / np.sqrt(fan_in))


def test_lstm_keeps_its_torch_init_and_embedding_is_standard_normal():
    flax_params, params = _init("lstm", (1, 80), output_dim=100)
    flat_before, flat_after = flatten_dict(flax_params), flatten_dict(params)
    for path, value in flat_after.items():
        if path[0].startswith("lstm_"):  # already torch.nn.LSTM's U(+-1/sqrt(256)): untouched
            np.testing.assert_array_equal(value, flat_before[path])
    embedding = np.asarray(params["Embed_0"]["embedding"])
    assert abs(embedding.std() - 1.0) < 0.1 and abs(embedding.mean()) < 0.1
    _check_uniform(params["Dense_0"]["kernel"], 1 / np.sqrt(256))


def test_init_flag_reaches_every_component(tmp_path):
    """``--init torch`` on the linear model (dim 4): each component drawn anew, within
    ``1/sqrt(4)``; ``mobilenet_v2`` keeps its own (torchvision's) scheme."""
    data = tiny_binary_data()
    flax_state = build(tiny_config(tmp_path), data).algorithm.init(data)
    torch_state = build(tiny_config(tmp_path, init="torch"), data).algorithm.init(data)
    kernel = np.asarray(torch_state.params["Dense_0"]["kernel"])
    assert kernel.shape[0] == 2 and not np.allclose(kernel[0], kernel[1])
    assert (
        np.abs(kernel).max() <= 0.5 and np.abs(np.asarray(torch_state.params["Dense_0"]["bias"])).max() <= 0.5
    )
    assert np.asarray(torch_state.params["Dense_0"]["bias"]).any()  # flax's biases are zeros
    assert not np.asarray(flax_state.params["Dense_0"]["bias"]).any()
    torch_cfg = tiny_config(tmp_path, init="torch")
    assert make_context(torch_cfg, data, None, None, "mobilenet_v2").init_scheme == "flax"
    assert make_context(torch_cfg, data, None, None, "cifar10_cnn").init_scheme == "torch"


def test_matches_pytorch_layers_where_installed():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    _, params = _init("cifar10_cnn", (1, 32, 32, 3))
    reference = {"Conv_1": torch.nn.Conv2d(32, 64, 5), "Dense_0": torch.nn.Linear(1600, 2048)}
    for layer, module in reference.items():
        for name, torch_name in (("kernel", "weight"), ("bias", "bias")):
            ours = np.asarray(params[layer][name])
            theirs = getattr(module, torch_name).detach().numpy()
            assert ours.size == theirs.size
            np.testing.assert_allclose(np.abs(ours).max(), np.abs(theirs).max(), rtol=0.02)
            np.testing.assert_allclose(ours.std(), theirs.std(), rtol=0.05 if ours.size > 1000 else 0.3)
