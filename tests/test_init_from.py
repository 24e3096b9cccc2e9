"""--init_from: components start from a file's weights; missing leaves keep their random init."""

import jax
import numpy as np
from helpers import tiny_binary_data, tiny_config

from fedem_jax.main import main
from fedem_jax.models.pretrained import save_component, save_components
from fedem_jax.training.experiment import build


def test_every_component_starts_from_the_file(tmp_path):
    data = tiny_binary_data()
    algo = build(tiny_config(tmp_path, n_learners=1, seed=99), data).algorithm
    source = jax.tree.map(lambda a: np.asarray(a[0]), algo.init(data).params)
    path = str(tmp_path / "w.npz")
    save_component(source, path)
    algo = build(tiny_config(tmp_path, n_learners=3, init_from=path), data).algorithm
    params = algo.init(data).params
    for m in range(3):
        np.testing.assert_array_equal(np.asarray(params["Dense_0"]["kernel"][m]), source["Dense_0"]["kernel"])


def test_each_component_starts_from_its_own_weights(tmp_path):
    """A file of M stacked components (as another run's state holds them): component m starts from
    slice m, every leaf, whatever this run's seed."""
    data = tiny_binary_data()
    source = build(tiny_config(tmp_path, n_learners=3, seed=7), data).algorithm.init(data).params
    source = jax.tree.map(np.asarray, source)
    path = str(tmp_path / "stacked.npz")
    save_components(source, path)
    params = (
        build(tiny_config(tmp_path, n_learners=3, seed=99, init_from=path), data).algorithm.init(data).params
    )
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), source)
    kernel = source["Dense_0"]["kernel"]
    assert not np.array_equal(kernel[0], kernel[1])  # the components do differ


def test_per_component_files_of_another_size_or_form_are_one_line(tmp_path, capsys):
    base = ["--n_clients", "5", "--n_test_per_client", "10", "--n_rounds", "1", "--dim", "4"]
    base += ["--n_learners", "3", "--workdir", str(tmp_path / "w")]
    two = str(tmp_path / "two.npz")
    np.savez(two, **{"Dense_0/kernel": np.ones((2, 4, 1), np.float32), "Dense_0/bias": np.ones((2, 1))})
    assert main([*base, "--init_from", two]) == 1
    err = capsys.readouterr().err
    assert "Dense_0/bias holds 2 components; this run has --n_learners 3" in err and "Traceback" not in err
    mixed = str(tmp_path / "mixed.npz")
    np.savez(mixed, **{"Dense_0/kernel": np.ones((3, 4, 1), np.float32), "Dense_0/bias": np.ones(1)})
    assert main([*base, "--init_from", mixed]) == 1
    err = capsys.readouterr().err
    assert "mixes one set of weights (Dense_0/bias) with one per component (Dense_0/kernel)" in err
    stacked = str(tmp_path / "stacked.npz")
    np.savez(stacked, **{"Dense_0/kernel": np.ones((3, 5, 1), np.float32)})
    assert main([*base, "--init_from", stacked]) == 1
    assert "Dense_0/kernel has shape (3, 5, 1), the model needs [M, *(4, 1)]" in capsys.readouterr().err


def test_leaves_missing_from_the_file_keep_their_random_init(tmp_path):
    data = tiny_binary_data()
    path = str(tmp_path / "w.npz")
    np.savez(path, **{"params/Dense_0/kernel": np.ones((4, 1), np.float32)})  # no bias in the file
    algo = build(tiny_config(tmp_path, n_learners=2, init_from=path), data).algorithm
    params = algo.init(data).params
    np.testing.assert_array_equal(np.asarray(params["Dense_0"]["kernel"]), 1.0)
    plain = build(tiny_config(tmp_path, n_learners=2), data).algorithm
    np.testing.assert_array_equal(
        np.asarray(params["Dense_0"]["bias"]), np.asarray(plain.init(data).params["Dense_0"]["bias"])
    )


def test_bad_init_files_give_clear_errors(tmp_path, capsys):
    base = [
        "--n_clients",
        "5",
        "--n_test_per_client",
        "10",
        "--n_rounds",
        "1",
        "--workdir",
        str(tmp_path / "w"),
    ]
    assert main([*base, "--init_from", str(tmp_path / "missing.npz")]) == 1
    assert "no file" in capsys.readouterr().err
    wrong = str(tmp_path / "wrong.npz")
    np.savez(wrong, **{"Dense_0/kernel": np.ones((3, 1), np.float32)})
    assert main([*base, "--init_from", wrong]) == 1
    assert "Dense_0/kernel has shape (3, 1), the model needs (150, 1)" in capsys.readouterr().err
    unrelated = str(tmp_path / "unrelated.npz")
    np.savez(unrelated, other=np.ones(3))
    assert main([*base, "--init_from", unrelated]) == 1
    assert "no parameter of the model is in the file" in capsys.readouterr().err
    junk = tmp_path / "junk.msgpack"
    junk.write_bytes(b"\x00\x01garbage")
    assert main([*base, "--init_from", str(junk)]) == 1
    assert "cannot read" in capsys.readouterr().err
