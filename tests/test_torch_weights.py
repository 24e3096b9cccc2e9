"""torchvision MobileNetV2 weights through ``--init_from FILE.pth``: read without torch, mapped
onto fedem_jax's MobileNetV2, giving torchvision's own eval-mode logits; files holding anything but
tensors are refused."""

import os
import pickle
import zipfile

import jax
import numpy as np
import pytest
from flax.traverse_util import unflatten_dict

from fedem_jax.errors import DataError
from fedem_jax.models.mobilenet import MobileNetV2
from fedem_jax.models.torch_weights import mobilenet_v2_weights, read_torch_state_dict

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
SMALL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2))  # as in fixtures/make_torchvision_fixture.py


def _logits_of(pth: str, npz: str, block_settings) -> tuple[np.ndarray, np.ndarray]:
    weights = mobilenet_v2_weights(read_torch_state_dict(pth), include_head=True)
    variables = unflatten_dict({tuple(k.split("/")): v for k, v in weights.items()})
    model = MobileNetV2(output_dim=10, block_settings=block_settings)
    expected = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
    shapes = jax.tree.map(np.shape, expected)
    assert jax.tree.map(np.shape, variables) == shapes  # every variable mapped, none extra
    with np.load(npz) as ref:
        return np.asarray(model.apply(variables, ref["x"], train=False)), ref["logits"]


def test_small_torchvision_mobilenet_gives_torchvisions_logits():
    ours, theirs = _logits_of(
        os.path.join(FIXTURES, "mobilenet_v2_small.pth"), os.path.join(FIXTURES, "mobilenet_v2_small.npz"),
        SMALL_SETTING,
    )  # fmt: skip
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_full_torchvision_mobilenet_where_generated(tmp_path):
    """The full model: run ``tests/fixtures/make_torchvision_fixture.py DIR --full`` with torchvision
    installed and point ``FEDEM_TORCHVISION_FIXTURES`` at DIR (skipped otherwise)."""
    folder = os.environ.get("FEDEM_TORCHVISION_FIXTURES", "")
    pth = os.path.join(folder, "mobilenet_v2_full.pth")
    if not folder or not os.path.exists(pth):
        pytest.skip("no full-size torchvision fixture (see the docstring)")
    from fedem_jax.models.mobilenet import INVERTED_RESIDUAL_SETTING

    ours, theirs = _logits_of(pth, os.path.join(folder, "mobilenet_v2_full.npz"), INVERTED_RESIDUAL_SETTING)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_without_head_the_classifier_is_left_out():
    weights = mobilenet_v2_weights(read_torch_state_dict(os.path.join(FIXTURES, "mobilenet_v2_small.pth")))
    assert not [k for k in weights if "Dense" in k]
    assert weights["batch_stats/ConvBNReLU6_0/BatchNorm_0/var"].shape == (32,)


def _zip_with(tmp_path, payload: bytes) -> str:
    path = str(tmp_path / "bad.pth")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    return path


def test_a_file_with_code_is_refused(tmp_path):
    """A pickle naming ``os.system`` (which a plain ``pickle.load`` would hand back, ready to call
    through a REDUCE) is refused when the name is looked up, before anything is built."""
    payload = pickle.dumps(os.system)
    with pytest.raises(DataError, match="refused: the file holds posix.system, not only tensors"):
        read_torch_state_dict(_zip_with(tmp_path, payload))


@pytest.mark.parametrize(
    "content,message",
    [
        (b"not a zip", "not a zip-format torch checkpoint"),
        (pickle.dumps({"a": 1}), "expected a state_dict of tensors"),
        (pickle.dumps({})[:-3], "cannot read the checkpoint"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    if content == b"not a zip":
        path = str(tmp_path / "x.pth")
        with open(path, "wb") as f:
            f.write(content)
    else:
        path = _zip_with(tmp_path, content)
    with pytest.raises(DataError, match=message):
        read_torch_state_dict(path)


def test_other_models_are_named(tmp_path):
    with pytest.raises(DataError, match="not a torchvision MobileNetV2 state_dict"):
        mobilenet_v2_weights({"fc.weight": np.zeros((2, 2), np.float32)})
