"""Bad data and impossible settings are named before anything is compiled: exit 1 (data) or 2
(settings) with one line, never a traceback. Property-based: any array or JSON thrown at the npz
and LEAF loaders gives a dataset or a ``DataError``, nothing else."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedem_jax.data.leaf_source import load_femnist, load_shakespeare
from fedem_jax.data.npz_source import load_npz
from fedem_jax.errors import DataError
from fedem_jax.main import main
from fedem_jax.settings.schema import DataConfig

RUN = ["--n_rounds", "1", "--quiet", "--checkpoint_every", "0", "--tensorboard", "false"]


def _npz(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def _empty_file(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"")
    return str(tmp_path / "d.npz")


def _clients(n, per=6):
    return np.repeat(np.arange(n), per)


def _exit_and_line(capsys, flags):
    code = main(flags)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return code, lines[0]


@pytest.mark.parametrize(
    "make,message",
    [
        (_empty_file, "not a readable .npz file"),
        (lambda p: _npz(p, x=np.zeros((24, 2, 2, 2, 2)), y=np.zeros(24, int), client=_clients(4)),
         "must be numeric [N, D] vectors or [N, H, W(, C)] images"),
        (lambda p: _npz(p, x=np.where(np.arange(24)[:, None] == 5, np.nan, 1.0) * np.ones((24, 3)),
                        y=np.zeros(24, int), client=_clients(4)), "3 NaN or Inf values (first in row 5)"),
        (lambda p: _npz(p, x=np.where(np.arange(24)[:, None] == 7, 1e300, 1.0) * np.ones((24, 3)),
                        y=np.zeros(24, int), client=_clients(4)),
         "3 values beyond float32's range (first in row 7)"),
        (lambda p: _npz(p, x=np.ones((24, 3)), y=np.tile([0, 1000000], 12), client=_clients(4)),
         "label ids are sparse: 2 distinct labels (0, 1000000) would make 1000001 classes"),
        (lambda p: _npz(p, x=np.ones((24, 3)), y=np.full(24, 2**40), client=_clients(4)), "ids beyond int32"),
        (lambda p: _npz(p, x=np.ones((24, 3)), y=np.full(24, 0.5), client=_clients(4)),
         "must be a 1-D integer label array"),
    ],
)  # fmt: skip
def test_bad_npz_data_is_named(tmp_path, capsys, make, message):
    path = make(tmp_path)
    code, line = _exit_and_line(
        capsys, ["--dataset", "npz", "--data_path", path, *RUN, "--workdir", str(tmp_path)]
    )
    assert code == 1 and message in line, line


def test_sparse_labels_can_be_remapped(tmp_path):
    path = _npz(tmp_path, x=np.ones((24, 3)), y=np.tile([7, 1000000], 12), client=_clients(4))
    data = load_npz(DataConfig(dataset="npz", data_path=path, remap_labels=True))
    assert data.task.num_classes == 2
    assert set(np.asarray(data.train.y).tolist()) | set(np.asarray(data.test.y).tolist()) == {0, 1}


@pytest.mark.parametrize(
    "x,model,message",
    [
        (np.ones((24, 8, 8, 1)), "cnn", "--model cnn needs at least 10x10 images, the data's are 8x8"),
        (
            np.ones((24, 30, 30, 3)),
            "cifar10_cnn",
            "--model cifar10_cnn needs 32x32 images, the data's are 30x30",
        ),
        (np.ones((24, 32, 32, 1)), "cifar10_cnn", "needs 3-channel images"),
        (np.ones((24, 5)), "cnn", "--model cnn needs images [H, W, C], the data has samples of shape (5,)"),
        (np.ones((24, 5)), "lstm", "--model lstm predicts the next character at every position"),
    ],
)
def test_model_and_data_mismatch_is_named_before_compiling(tmp_path, capsys, x, model, message):
    path = _npz(tmp_path, x=x, y=np.tile([0, 1], 12), client=_clients(4))
    flags = [
        "--dataset",
        "npz",
        "--data_path",
        path,
        "--model",
        model,
        *RUN,
        "--workdir",
        str(tmp_path / "w"),
    ]
    if message is None:
        assert main(flags) == 0
        return
    code, line = _exit_and_line(capsys, flags)
    assert code == 2 and message in line, line


def test_non_finite_settings_are_refused(tmp_path, capsys):
    code, line = _exit_and_line(capsys, ["--lr", "inf", "--workdir", str(tmp_path)])
    assert code == 2 and "--lr must be a finite number, got inf" in line
    code, line = _exit_and_line(capsys, ["--method", "FedProx", "--mu", "nan", "--workdir", str(tmp_path)])
    assert code == 2 and "--mu must be a finite number, got nan" in line


# ------------------------------------------------------------------------------ property-based
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
dtypes = st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_])
arrays = hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=5, max_side=7), elements=None)


@FUZZ
@given(x=arrays, y=arrays, client=arrays)
def test_npz_loader_gives_data_or_a_data_error(tmp_path, x, y, client):
    path = _npz(tmp_path, x=x, y=y, client=client)
    try:
        load_npz(DataConfig(dataset="npz", data_path=path))
    except DataError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)
leaf_like = st.fixed_dictionaries(
    {"users": json_values | st.lists(st.text(max_size=3), max_size=3), "user_data": json_values}
)


@FUZZ
@given(payload=json_values | leaf_like, dataset=st.sampled_from(["femnist", "shakespeare"]))
def test_leaf_loaders_give_data_or_a_data_error(tmp_path, payload, dataset):
    path = tmp_path / f"{dataset}.json"
    path.write_text(json.dumps(payload))
    load = load_femnist if dataset == "femnist" else load_shakespeare
    try:
        load(DataConfig(dataset=dataset, data_path=str(path)))
    except DataError:
        pass


def test_abbreviated_flags_are_refused(tmp_path, capsys):
    code, line = _exit_and_line(capsys, ["--n_round", "3", "--workdir", str(tmp_path)])
    assert code == 2 and "unrecognized arguments: --n_round 3" in line
