"""Runs that cannot fit are refused before they allocate; batches larger than every client are capped."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from fedem_jax.execution import memory
from fedem_jax.main import main
from fedem_jax.reporting.outputs import TIMING_KEYS
from fedem_jax.training.experiment import build, effective_batch_size
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


def test_compiled_check_does_not_count_donated_outputs_twice(tmp_path):
    """The round donates its state: outputs written into the donated input buffers (XLA's
    ``alias_size``) need no new memory, so a round that fits only thanks to them is accepted."""
    data = tiny_binary_data()
    algorithm = build(tiny_config(tmp_path), data).algorithm
    state = algorithm.init(data)
    compiled = jax.jit(algorithm.round, donate_argnums=0).lower(state, data.train).compile()
    analysis = compiled.memory_analysis()
    assert analysis.alias_size_in_bytes >= memory.tree_bytes(state) > 0
    needed = analysis.temp_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
    free = int(needed / memory.HEADROOM) + 1
    assert analysis.temp_size_in_bytes + analysis.output_size_in_bytes > memory.HEADROOM * free
    memory.check_compiled(compiled, free=free)  # fits only without the aliased outputs
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


def test_training_step_bytes_are_the_backward_pass_residuals():
    """A linear model keeps its input batch for the gradient of its weights, and nothing else;
    for the CNN the estimate is of the order of XLA's own temporaries for the same gradient."""
    from fedem_jax.models import build_model

    linear = build_model("linear", 1)
    for batch in (8, 32):
        assert memory.training_step_bytes(linear, False, np.zeros((5, 4), np.float32), batch) == batch * 4 * 4
    cnn = build_model("cifar10_cnn", 10, "matmul")
    x = jax.ShapeDtypeStruct((16, 32, 32, 3), np.float32)
    one = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
    variables = jax.eval_shape(cnn.init, jax.random.PRNGKey(0), one)
    grad = jax.jit(jax.grad(lambda v, x: cnn.apply(v, x).sum())).lower(variables, x).compile()
    xla_temp = grad.memory_analysis().temp_size_in_bytes
    sample = np.zeros((1, 32, 32, 3), np.float32)
    estimate = memory.training_step_bytes(cnn, False, sample, 16)
    assert xla_temp <= estimate < 3 * xla_temp  # never below what XLA keeps: a GPU chunk must fit
    # Linear in the batch: the weights it keeps once, and per sample at least the input of every
    # weighted layer (image, first pooled map, flattened map, hidden layer: NumPy's count).
    small, large = (memory.training_step_bytes(cnn, False, sample, b) for b in (8, 24))
    per_sample = (large - small) // 16
    assert large - small == 16 * per_sample and estimate == small + 8 * per_sample
    kept_weights = small - 8 * per_sample
    assert 0 <= kept_weights <= memory.tree_bytes(variables)
    assert per_sample >= 4 * (32 * 32 * 3 + 14 * 14 * 32 + 1600 + 2048)


def test_client_chunk_that_fits_at_the_boundaries():
    assert memory.client_chunk_that_fits(100, 10, 2000)[0] == 0  # all 10 fit in half of 2000
    assert memory.client_chunk_that_fits(100, 10, 1999)[0] == 5  # 9 fit: two chunks of 5
    assert memory.client_chunk_that_fits(100, 80, 3800)[0] == 16  # 19 fit: five chunks of 16
    assert memory.client_chunk_that_fits(100, 10, 100)[0] == 1  # not even one: one at a time
    assert memory.client_chunk_that_fits(100, 10, None)[0] == 0
    assert "9 of 10 fit" in memory.client_chunk_that_fits(100, 10, 1999)[1]


def test_accelerator_layout_vmaps_only_the_clients_that_fit(tmp_path, monkeypatch):
    """On GPU/TPU the automatic layout vmaps all clients unless memory says otherwise; then
    chunks of what fits, with the same results (to float32 rounding)."""
    from fedem_jax.training.session import build_experiment

    data = tiny_binary_data(sizes=(5, 8, 3, 6, 7))
    cfg = tiny_config(tmp_path, client_chunk=-1, learner_vmap=-1, batch_size=4)
    per_client = 2 * memory.training_step_bytes(build(cfg, data).model, False, data.train.x, 4)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    results = {}
    for free, chunk in ((10 * per_client, 0), (4 * per_client + 1, 2)):
        monkeypatch.setattr(memory, "free_bytes", lambda device=None, free=free: free)
        experiment, placed, state = build_experiment(cfg, data)
        assert experiment.layout.client_chunk == chunk and experiment.layout.learner_vmap
        for _ in range(2):
            state, _ = jax.jit(experiment.algorithm.round)(state, placed.train)
        results[chunk] = state.params
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[2]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_sweep_counts_each_runs_client_steps_on_accelerators(tmp_path, monkeypatch):
    """On GPU/TPU a run's working memory includes its vmapped clients' training steps, so fewer
    runs are vmapped together than the state alone would allow."""
    from fedem_jax.training import sweep
    from fedem_jax.training.session import build_experiment

    data = tiny_binary_data(sizes=(5, 8, 3, 6, 7), dim=64)
    cfg = tiny_config(tmp_path, client_chunk=-1, learner_vmap=-1, batch_size=4, seeds=[1, 2, 3, 4])
    single = build(cfg, data)
    per_client = 2 * memory.training_step_bytes(single.model, False, data.train.x, 4)
    state = sweep.STATE_COPIES * memory.tree_bytes(jax.eval_shape(lambda: single.algorithm.init(data)))
    per_run = state + 5 * per_client  # all 5 clients vmapped in each run
    free = int(2.5 * per_run / 0.8) + 1  # room for two runs' working memory
    assert min(4, int(0.8 * free) // state) > 2  # the state alone would allow more
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(memory, "free_bytes", lambda device=None: free)
    estimates = []
    step_bytes = memory.training_step_bytes
    monkeypatch.setattr(memory, "training_step_bytes", lambda *a: estimates.append(a) or step_bytes(*a))
    experiment, placed, state = build_experiment(cfg, data)
    assert experiment.info["client_step_bytes"] == per_client and experiment.info["client_chunk"] == 0
    assert experiment.info["runs_per_chunk"] == 2
    jax.jit(experiment.algorithm.round).lower(state, placed.train)  # every run's build, traced
    assert len(estimates) == 1  # the layout is decided once, not again inside each run's trace
