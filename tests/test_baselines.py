"""local, FedAvg+ and FedProx on the FedEM engine, against NumPy (golden values) and properties."""

import chex
import jax
import numpy as np
import numpy_reference as ref
import pytest
from helpers import tiny_binary_data, tiny_config

from fedem_jax.main import main
from fedem_jax.training.experiment import build

LR, WD = 0.1, 5e-4


def _linear(params):
    kernel = np.asarray(params["Dense_0"]["kernel"], np.float64)[..., 0]
    bias = np.asarray(params["Dense_0"]["bias"], np.float64)[..., 0]
    return kernel, bias


def _clients(split):
    x, y = np.asarray(split.x, np.float64), np.asarray(split.y, np.float64)
    return [(x[o : o + n], y[o : o + n]) for o, n in zip(split.offsets, split.counts, strict=True)]


def test_local_trains_each_client_alone(tmp_path):
    data = tiny_binary_data()
    cfg = tiny_config(tmp_path, method="local", n_learners=1, local_epochs=2)
    algo = build(cfg, data).algorithm
    state = algo.init(data)
    W0, b0 = _linear(jax.tree.map(lambda a: a[0], state.params))
    for _ in range(2):
        state, _ = jax.jit(algo.round)(state, data.train)
    for c, (x, y) in enumerate(_clients(data.train)):
        W, b, buf = ref.linear_local_sgd(W0, b0, x, y, np.ones((1, len(y))), LR, 0.9, WD, epochs=2)
        W, b, _ = ref.linear_local_sgd(W, b, x, y, np.ones((1, len(y))), LR, 0.9, WD, epochs=2, buf=buf)
        got_W, got_b = _linear(jax.tree.map(lambda a, c=c: a[c], state.params))
        chex.assert_trees_all_close((got_W, got_b), (W, b), rtol=1e-4, atol=1e-6)


def test_fedavg_plus_tunes_a_copy_and_leaves_the_global_model(tmp_path):
    data = tiny_binary_data()
    cfg = tiny_config(tmp_path, method="FedAvg+", n_learners=1, local_epochs=1, tune_epochs=2)
    algo = build(cfg, data).algorithm
    state, _ = jax.jit(algo.round)(algo.init(data), data.train)
    before = jax.tree.map(np.asarray, state)
    view = jax.jit(algo.prepare_eval)(state, data.train)
    chex.assert_trees_all_equal(before, jax.tree.map(np.asarray, state))  # global untouched
    W_g, b_g = _linear(state.params)
    momenta = jax.tree.map(np.asarray, state.clients.opt_state)
    for c, (x, y) in enumerate(_clients(data.train)):
        buf = (
            momenta[1].trace["Dense_0"]["kernel"][c][..., 0],
            momenta[1].trace["Dense_0"]["bias"][c][..., 0],
        )
        W, b, _ = ref.linear_local_sgd(W_g, b_g, x, y, np.ones((1, len(y))), LR, 0.9, WD, epochs=2, buf=buf)
        got = _linear(jax.tree.map(lambda a, c=c: a[c], view.params))
        chex.assert_trees_all_close(got, (W, b), rtol=1e-4, atol=1e-6)
    # The evaluation is of the tuned copies: its train loss is below that of the global model.
    tuned_loss = float(np.asarray(jax.jit(algo.evaluate)(view, data.train)["loss_sum"]).sum())
    global_view = view.replace(params=jax.tree.map(lambda g: np.broadcast_to(g, (3, *g.shape)), state.params))
    global_loss = float(np.asarray(jax.jit(algo.evaluate)(global_view, data.train)["loss_sum"]).sum())
    assert tuned_loss < global_loss


def test_fedprox_with_mu_zero_equals_fedavg_without_momentum(tmp_path):
    data = tiny_binary_data(sizes=(20, 7, 13), dim=4)
    results = []
    for method in ("FedProx", "FedAvg"):
        cfg = tiny_config(tmp_path, method=method, n_learners=1, mu=0.0, momentum=0.0, batch_size=4)
        algo = build(cfg, data).algorithm
        state = algo.init(data)
        for _ in range(3):
            state, _ = jax.jit(algo.round)(state, data.train)
        results.append(jax.tree.map(np.asarray, state.params))
    chex.assert_trees_all_equal(results[0], results[1])


def test_fedprox_round_matches_numpy(tmp_path):
    data = tiny_binary_data()
    cfg = tiny_config(tmp_path, method="FedProx", n_learners=1, mu=0.5, momentum=0.0, local_epochs=3)
    algo = build(cfg, data).algorithm
    state = algo.init(data)
    W0, b0 = _linear(state.params)
    state, _ = jax.jit(algo.round)(state, data.train)
    counts = np.asarray(data.train.counts, np.float64)
    W, b = W0.copy(), b0.copy()
    for (x, y), p in zip(_clients(data.train), counts / counts.sum(), strict=True):
        Wc, bc, _ = ref.linear_local_sgd(W0, b0, x, y, np.ones((1, len(y))), LR, 0.0, WD, epochs=3, mu=0.5)
        W, b = W + p * (Wc - W0), b + p * (bc - b0)
    chex.assert_trees_all_close(_linear(state.params), (W, b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--method", "local", "--n_learners", "3"], "--n_learners must be 1 for local"),
        (["--method", "FedAvg+", "--test_clients_frac", "0.2"], "unseen clients are not supported"),
        (["--method", "FedProx", "--mu", "-1"], "--mu must be >= 0"),
        (["--method", "FedAvg+", "--tune_epochs", "0"], "--tune_epochs must be >= 1"),
    ],
)
def test_baseline_flag_validation(tmp_path, capsys, flags, message):
    assert main([*flags, "--workdir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
