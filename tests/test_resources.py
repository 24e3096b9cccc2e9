"""Runs that cannot fit are refused before they allocate; batches larger than every client are capped."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from fedem_jax import memory
from fedem_jax.experiment import build, effective_batch_size
from fedem_jax.main import main
from fedem_jax.outputs import TIMING_KEYS
from tests.helpers import tiny_binary_data, tiny_config

FLAGS = ["--n_clients", "6", "--n_test_per_client", "20", "--n_rounds", "2"]
FLAGS += ["--tensorboard", "false", "--lr_scheduler", "constant", "--plots", "false"]


@pytest.mark.parametrize("method", ["FedEM", "Ditto", "SCAFFOLD"])
def test_state_estimate_is_the_allocated_size(tmp_path, method):
    """The estimate from shapes alone equals the bytes of the state ``init`` really makes."""
    data = tiny_binary_data()
    learners = 2 if method == "FedEM" else 1
    algorithm = build(tiny_config(tmp_path, method=method, n_learners=learners), data).algorithm
    state = algorithm.init(data)
    allocated = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    assert memory.state_bytes_per_device(jax.eval_shape(lambda: algorithm.init(data)), 1) == allocated
    per_client = [memory.tree_bytes(getattr(state, name)) for name in state.CLIENT_FIELDS]
    halves = sum(-(-size // 2) for size in per_client)
    assert memory.state_bytes_per_device(state, 2) == allocated - sum(per_client) + halves


def test_state_check_refuses_and_passes_at_the_boundary(tmp_path):
    data = tiny_binary_data()
    algorithm = build(tiny_config(tmp_path), data).algorithm
    needed = memory.state_bytes_per_device(jax.eval_shape(lambda: algorithm.init(data)), 1)
    memory.check_state(algorithm.init, data, free=int(needed / memory.HEADROOM) + 1)
    with pytest.raises(memory.ConfigError, match="not enough memory: the method's state"):
        memory.check_state(algorithm.init, data, free=needed)


def test_compiled_check_counts_xla_temporaries(tmp_path):
    data = tiny_binary_data()
    algorithm = build(tiny_config(tmp_path), data).algorithm
    state = algorithm.init(data)
    compiled = jax.jit(algorithm.round).lower(state, data.train).compile()
    analysis = compiled.memory_analysis()
    needed = analysis.temp_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
    assert needed > 0
    memory.check_compiled(compiled, free=int(needed / memory.HEADROOM) + 1)
    with pytest.raises(memory.ConfigError, match="one round"):
        memory.check_compiled(compiled, free=needed)


def test_a_run_too_big_for_memory_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda device=None: 10_000)
    assert main([*FLAGS, "--workdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: not enough memory") and "--client_chunk" in err
    assert not os.path.exists(tmp_path / "run" / "checkpoints")  # refused before any training


def test_free_memory_is_known_on_this_machine():
    free = memory.free_bytes()
    assert free is not None and 0 < free < 2**50


def test_batch_size_is_capped_at_the_largest_client(tmp_path):
    data = tiny_binary_data(sizes=(5, 8, 3))
    assert effective_batch_size(tiny_config(tmp_path, batch_size=1000), data) == 8
    assert effective_batch_size(tiny_config(tmp_path, batch_size=4), data) == 4
    assert build(tiny_config(tmp_path, batch_size=1000), data).ctx.update.batch_size == 8


def test_capped_batch_trains_as_the_largest_client_batch(tmp_path, capsys):
    """A batch larger than every client and one the size of the largest client are the same
    update (one step per epoch on all of each client's samples): same metrics, and one line."""

    def rows(batch_size):
        workdir = str(tmp_path / f"b{batch_size}")
        assert main([*FLAGS, "--batch_size", str(batch_size), "--workdir", workdir]) == 0
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f]

    big = rows(100_000)
    assert "--batch_size 100000 is larger than the largest client" in capsys.readouterr().out
    largest = json.load(open(tmp_path / "b100000" / "summary.json"))["layout"]["batch_size"]
    assert largest < 100_000
    exact = rows(largest)
    for row_big, row_exact in zip(big, exact, strict=True):
        for key, value in row_big.items():
            np.testing.assert_allclose(value, row_exact[key], rtol=1e-5, atol=1e-6, err_msg=key)
