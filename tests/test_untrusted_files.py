"""Weight and data files are untrusted input: whatever a ``.pth``, ``.npz`` or msgpack file declares,
reading it gives the arrays it really holds or one ``DataError`` naming the file and the field;
never a crash, a read of memory outside the file, an allocation the file cannot back, or a silent
cast. Property-based over the fields of each format."""

import io
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from flax import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_files import STORAGE_OF, Tensor, contiguous, write_pth, write_state_dict

from fedem_jax.data.untrusted import read_npz
from fedem_jax.errors import DataError
from fedem_jax.models.pretrained import load_weights
from fedem_jax.models.torch_weights import mobilenet_v2_weights, read_torch_state_dict

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def expected_view(elements: np.ndarray, offset: int, size: tuple, stride: tuple) -> np.ndarray:
    """The tensor torch would build, element by element from its index arithmetic."""
    out = np.empty(size, elements.dtype)
    for index in np.ndindex(*size):
        out[index] = elements[offset + sum(i * s for i, s in zip(index, stride, strict=True))]
    return out


def view_is_valid(n: int, offset: int, size: tuple, stride: tuple) -> bool:
    if offset < 0 or any(v < 0 for v in (*size, *stride)):
        return False
    if np.prod(size, dtype=np.int64) == 0:
        return True
    return offset + sum((a - 1) * b for a, b in zip(size, stride, strict=True)) < n


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from(sorted(STORAGE_OF, key=str)),
    n=st.integers(0, 24),
    numel_shift=st.sampled_from([0, 0, 0, 1, -1, 1000]),
    offset=st.integers(-3, 30),
    dims=st.lists(st.tuples(st.integers(0, 6), st.integers(-2, 7)), max_size=3),
)
def test_any_tensor_header_gives_its_elements_or_one_error(tmp_path, dtype, n, numel_shift, offset, dims):
    """Offsets, sizes, strides and element counts drawn at random: a valid view gives exactly the
    elements torch's index arithmetic addresses; anything else is refused, naming the tensor."""
    elements = (np.arange(n) % 100).astype(dtype)
    size, stride = tuple(d[0] for d in dims), tuple(d[1] for d in dims)
    declared = max(n + numel_shift, 0)
    path = write_pth(tmp_path / "t.pth", {"w": Tensor("0", offset, size, stride)}, {"0": elements},
                     numel={"0": declared})  # fmt: skip
    valid = declared == n and view_is_valid(n, offset, size, stride)
    if valid:
        np.testing.assert_array_equal(
            read_torch_state_dict(path)["w"], expected_view(elements, offset, size, stride)
        )
    else:
        with pytest.raises(DataError, match=r"--init_from .*t\.pth: (tensor 'w'|storage '0')"):
            read_torch_state_dict(path)


@pytest.mark.parametrize(
    "tensor,message",
    [
        (contiguous("0", (3, 5)), "reach element 14 of storage '0', which holds 12"),  # a small overrun
        (Tensor("0", 0, (3000, 3000), (3000, 1)), "reach element 8999999 of storage '0'"),  # would segfault
        (Tensor("0", -1, (2,), (1,)), "negative or non-integer offset -1"),
        (Tensor("0", 0, (2, 2), (-1, 1)), "negative or non-integer"),
        (Tensor("0", 0, (10**9, 10**9), (0, 0)), "declares .* GiB, more than"),  # stride 0: no overrun
    ],
)
def test_views_beyond_their_storage_are_refused_before_any_read(tmp_path, tensor, message):
    path = write_pth(tmp_path / "t.pth", {"features.0.0.weight": tensor}, {"0": np.zeros(12, np.float32)})
    with pytest.raises(DataError, match=message):
        read_torch_state_dict(path)


def test_a_large_overrun_exits_with_one_line_not_a_crash(tmp_path):
    """In its own process: before the check, this file crashed Python (exit 139)."""
    path = write_pth(tmp_path / "t.pth", {"features.0.0.weight": Tensor("0", 0, (4000, 4000), (4000, 1))},
                     {"0": np.zeros(16, np.float32)})  # fmt: skip
    code = f"from fedem_jax.models.torch_weights import read_torch_state_dict as r; r({path!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "DataError" in done.stderr and "reach element" in done.stderr


def test_element_counts_and_storage_types_must_match_the_bytes(tmp_path):
    raw = {"0": np.zeros(12, np.float32)}
    tensors = {"w": contiguous("0", (12,))}
    with pytest.raises(DataError, match="storage '0' declares 13 elements of float32 .* holds 48 bytes"):
        read_torch_state_dict(write_pth(tmp_path / "a.pth", tensors, raw, numel={"0": 13}))
    with pytest.raises(DataError, match="declares 12 elements of float64 .* holds 48 bytes"):
        read_torch_state_dict(
            write_pth(tmp_path / "b.pth", tensors, raw, storage_type={"0": "DoubleStorage"})
        )
    with pytest.raises(DataError, match="refused: the file holds torch.ComplexFloatStorage"):
        read_torch_state_dict(
            write_pth(tmp_path / "c.pth", tensors, raw, storage_type={"0": "ComplexFloatStorage"})
        )


def test_a_well_formed_file_round_trips(tmp_path):
    arrays = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.ones(4, np.float64),
        "c": np.float32(3),
    }
    got = read_torch_state_dict(
        write_state_dict(tmp_path / "ok.pth", {k: np.asarray(v) for k, v in arrays.items()})
    )
    for key, value in arrays.items():
        np.testing.assert_array_equal(got[key], value)
        assert got[key].dtype == np.asarray(value).dtype


def test_a_partial_torchvision_state_dict_names_the_missing_tensor():
    state = read_torch_state_dict(os.path.join(FIXTURES, "mobilenet_v2_small.pth"))
    del state["features.1.conv.0.1.running_var"]
    with pytest.raises(DataError, match="has no tensor 'features.1.conv.0.1.running_var'"):
        mobilenet_v2_weights(state, "small.pth")


# ------------------------------------------------------------------------------------------- npz
def _npy(array: np.ndarray, header: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    raw = buf.getvalue()
    if header is None:
        return raw
    padded = header + b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(padded)) + padded + array.tobytes()


def _zip(path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        for name, raw in members.items():
            archive.writestr(name, raw)
    return str(path)


@pytest.mark.parametrize(
    "members,message",
    [
        ({"x.npy": _npy(np.ones(6), b"{'descr': '<f8', 'fortran_order': False, 'shape': (10000000000"
                                    b"00,), }")},
         r"header declares shape \(1000000000000,\) of float64 .* holds 48 bytes"),
        ({"x.npy": _npy(np.ones(6), b"{'descr': '<f8', 'fortran_order': False, 'shape': (7,), }")},
         "declares shape"),
        ({"x.npy": _npy(np.ones(2), b"{'descr': '|O', 'fortran_order': False, 'shape': (2,), }")},
         "is not an array of numbers or text"),
        ({"x.npy": _npy(np.ones(2)), "readme.txt": b"hello"}, "member 'readme.txt' is not a .npy array"),
        ({"x.npy": b"\x93NUMPY\x01\x00garbage"}, "field 'x': cannot be read"),
    ],
)  # fmt: skip
def test_npz_members_are_checked_before_they_are_read(tmp_path, members, message):
    with pytest.raises(DataError, match=message):
        read_npz(_zip(tmp_path / "d.npz", members))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.lists(st.integers(0, 10**13), max_size=3),
    descr=st.sampled_from(["<f4", "<f8", "|b1", "<i8", "<c8", "|O", "<U3", "|V8", "<m8[s]", "bogus"]),
    n_held=st.integers(0, 64),
    cut=st.integers(0, 200),
)
def test_any_npy_header_gives_the_array_or_one_error(tmp_path, shape, descr, n_held, cut):
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)}, }}".encode()
    raw = _npy(np.zeros(n_held, np.uint8), header)
    cut = cut if cut < 100 else 0  # sometimes truncated (past the data: into the header)
    raw = raw[: len(raw) - cut]
    held = n_held - cut  # the data's bytes left in the member, if the header is whole
    path = _zip(tmp_path / "d.npz", {"x.npy": raw})
    try:
        arrays = read_npz(path)
    except DataError as err:
        assert "d.npz" in str(err)
        return
    x = arrays["x"]  # read: it must be exactly what the member holds
    assert list(x.shape) == shape and x.nbytes == held and x.dtype != object


def test_a_real_npz_file_round_trips(tmp_path):
    path = tmp_path / "ok.npz"
    np.savez_compressed(path, x=np.arange(12.0).reshape(3, 4), y=np.array([1, 2, 3]), s=np.array(["a", "bc"]))
    got = read_npz(str(path))
    with np.load(path) as reference:
        for key in reference.files:
            np.testing.assert_array_equal(got[key], reference[key])
            assert got[key].dtype == reference[key].dtype


# -------------------------------------------------------------------------------------- weights
@pytest.mark.parametrize(
    "value,message",
    [
        (np.ones((2, 2), np.complex64), "must be an array of real floating-point numbers, got complex64"),
        (np.array([["a", "b"]]), "must be an array of real floating-point numbers, got <U1"),
        (np.ones((2, 2), np.int64), "must be an array of real floating-point numbers, got int64"),
        (np.array([[1.0, np.nan]], np.float32), r"the weights are not finite \(\d+ NaN or Inf values\)"),
    ],
)
@pytest.mark.parametrize("suffix", [".npz", ".msgpack", ".pth"])
def test_weights_that_are_not_finite_real_floats_are_refused(tmp_path, value, message, suffix):
    path = str(tmp_path / f"w{suffix}")
    if suffix == ".npz":
        np.savez(path, **{"Dense_0/kernel": value})
    elif suffix == ".msgpack":
        with open(path, "wb") as f:
            f.write(serialization.msgpack_serialize({"Dense_0": {"kernel": value}}))
        if value.dtype.kind == "U":  # flax's reader itself has no text arrays
            message = "cannot read .* as .npz or flax msgpack"
    else:
        if value.dtype not in STORAGE_OF:
            pytest.skip("torch files hold only numeric storages")
        state = read_torch_state_dict(os.path.join(FIXTURES, "mobilenet_v2_small.pth"))
        state["features.0.1.weight"] = np.resize(value, state["features.0.1.weight"].shape)
        write_state_dict(path, state)
    with pytest.raises(DataError, match=message):
        load_weights(path)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_as_msgpack_weights_give_one_error(payload):
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".msgpack", delete=False) as f:
        f.write(payload)
    try:
        weights = load_weights(f.name)
    except DataError as err:
        assert f.name in str(err)
    else:  # accepted: it held only finite real float arrays
        assert all(v.dtype.kind == "f" and np.isfinite(v).all() for v in weights.values())
    finally:
        os.remove(f.name)


def test_a_weight_of_the_wrong_shape_names_the_file(tmp_path, capsys):
    from fedem_jax.main import main

    path = str(tmp_path / "wrong.npz")
    np.savez(path, **{"Dense_0/kernel": np.ones((3, 1), np.float32)})
    flags = ["--n_clients", "5", "--n_test_per_client", "10", "--n_rounds", "1", "--quiet"]
    assert main([*flags, "--init_from", path, "--workdir", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert f"--init_from {path}: Dense_0/kernel has shape (3, 1), the model needs (150, 1)" in err
