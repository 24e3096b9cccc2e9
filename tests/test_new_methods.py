"""Ditto, FedPer, FedRep and the adaptive server optimizers (FedAdam, FedYogi): golden values
against NumPy transcriptions of each paper's update (full-batch steps on hand-made clients)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from helpers import TinyBatchNormModel, tiny_binary_data, tiny_config
from test_methods import LR, WD, _clients, _close, _linear, _run, _weights

from fedem_jax.algorithms.scaffold import lr_sums
from fedem_jax.main import main
from fedem_jax.training.experiment import build

ROUNDS, EPOCHS = 2, 2  # tiny_config: 2 local epochs, batch 16 > every client (one full batch)


def test_ditto_matches_numpy(tmp_path):
    data = tiny_binary_data()
    cfg = tiny_config(tmp_path, method="Ditto", n_learners=1, momentum=0.0, ditto_lambda=0.3)
    _, start, state, _ = _run(cfg, data, rounds=ROUNDS)
    w, bw = (a[0] for a in _linear(start.global_model))
    personal = [(w, bw)] * 3
    for _ in range(ROUNDS):
        trained = []
        for c, (x, y) in enumerate(_clients(data.train)):
            lw, lb = w, bw
            v, bv = personal[c]
            for _ in range(EPOCHS):
                gw, gb = ref.linear_grad(lw, lb, x, y)
                gv, gbv = ref.linear_grad(v, bv, x, y)
                lw, lb = lw - LR * (gw + WD * lw), lb - LR * (gb + WD * lb)
                v, bv = v - LR * (gv + 0.3 * (v - w) + WD * v), bv - LR * (gbv + 0.3 * (bv - bw) + WD * bv)
            trained.append((lw, lb))
            personal[c] = (v, bv)
        p = _weights(data.train)
        w = sum(pc * t[0] for pc, t in zip(p, trained, strict=True))
        bw = sum(pc * t[1] for pc, t in zip(p, trained, strict=True))
    _close(tuple(a[0] for a in _linear(state.global_model)), (w, bw))
    got_v, got_bv = _linear(state.params)
    _close(
        (got_v[:, 0], got_bv[:, 0]), (np.stack([v for v, _ in personal]), np.array([b for _, b in personal]))
    )


@pytest.mark.parametrize("method", ["FedPer", "FedRep"])
def test_shared_body_personal_head_matches_numpy(tmp_path, method):
    """Linear model split at the bias: the kernel is the shared body, the bias each client's head."""
    data = tiny_binary_data()
    cfg = tiny_config(tmp_path, method=method, n_learners=1, momentum=0.0, head="Dense_0/bias", head_epochs=3)
    _, start, state, _ = _run(cfg, data, rounds=ROUNDS)
    W, b0 = (a[0] for a in _linear(start.global_model))
    heads = [b0] * 3
    for _ in range(ROUNDS):
        bodies = []
        for c, (x, y) in enumerate(_clients(data.train)):
            w, b = W, heads[c]
            if method == "FedPer":  # body and head together
                for _ in range(EPOCHS):
                    gw, gb = ref.linear_grad(w, b, x, y)
                    w, b = w - LR * (gw + WD * w), b - LR * (gb + WD * b)
            else:  # head first (body frozen), then body (head frozen)
                for _ in range(3):
                    b = b - LR * (ref.linear_grad(w, b, x, y)[1] + WD * b)
                for _ in range(EPOCHS):
                    w = w - LR * (ref.linear_grad(w, b, x, y)[0] + WD * w)
            bodies.append(w)
            heads[c] = b
        W = sum(pc * w for pc, w in zip(_weights(data.train), bodies, strict=True))
    got_W, got_b = _linear(state.global_model)
    _close(got_W[0], W)
    _close(_linear(state.params)[1][:, 0], np.array(heads))
    np.testing.assert_array_equal(got_b[0], b0)  # the global model's head is never averaged


@pytest.mark.parametrize("kind", ["FedAdam", "FedYogi"])
def test_adaptive_server_matches_numpy(tmp_path, kind):
    data = tiny_binary_data()
    cfg = tiny_config(tmp_path, method=kind, n_learners=1, momentum=0.0, server_lr=0.05, server_tau=0.01)
    _, start, state, _ = _run(cfg, data, rounds=ROUNDS)
    W, b = (a[0] for a in _linear(start.params))
    theta = np.concatenate([W, [b]])
    m, v = np.zeros_like(theta), np.full_like(theta, 0.01**2)
    for _ in range(ROUNDS):
        W, b = theta[:-1], theta[-1]
        delta = np.zeros_like(theta)
        for pc, (x, y) in zip(_weights(data.train), _clients(data.train), strict=True):
            lw, lb, _ = ref.linear_local_sgd(
                W[None], np.array([b]), x, y, np.ones((1, len(y))), LR, 0.0, WD, EPOCHS
            )
            delta += pc * (np.concatenate([lw[0], lb]) - theta)
        m = 0.9 * m + 0.1 * delta
        if kind == "FedAdam":
            v = 0.99 * v + 0.01 * delta**2
        else:
            v = v - 0.01 * delta**2 * np.sign(v - delta**2)
        theta = theta + 0.05 * m / (np.sqrt(v) + 0.01)
    got_W, got_b = _linear(state.params)
    _close((got_W[0], got_b[0]), (theta[:-1], theta[-1]))


def test_avg_server_at_lr_one_is_fedavg(tmp_path):
    data = tiny_binary_data()
    plain = _run(tiny_config(tmp_path, method="FedAvg", n_learners=1), data, rounds=ROUNDS)[2]
    explicit = _run(tiny_config(tmp_path, method="FedAvg", n_learners=1, server_lr=1.0), data, rounds=ROUNDS)[
        2
    ]
    np.testing.assert_array_equal(_linear(plain.params)[0], _linear(explicit.params)[0])


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--method", "FedRep", "--model", "linear", "--head", "nothing"], "--head 'nothing' must name some"),
        (["--method", "FedRep", "--head_epochs", "0"], "--head_epochs must be >= 1"),
        (["--method", "Ditto", "--ditto_lambda", "-1"], "--ditto_lambda must be >= 0"),
        (["--method", "FedEM", "--server_optimizer", "sgdm"], "--server_optimizer: unknown value 'sgdm'"),
    ],
)
def test_new_method_flag_validation(tmp_path, capsys, flags, message):
    small = ["--n_clients", "6", "--dim", "4", "--n_test_per_client", "10", "--n_rounds", "1", "--quiet"]
    assert main([*small, *flags, "--workdir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("sampling_rate,server_lr", [(1.0, 1.0), (0.67, 0.5)])
def test_scaffold_matches_numpy(tmp_path, sampling_rate, server_lr):
    """Option II control variates, with clients left out of some rounds and a server step size."""
    data = tiny_binary_data()
    cfg = tiny_config(
        tmp_path, method="SCAFFOLD", n_learners=1, sampling_rate=sampling_rate, server_lr=server_lr
    )
    algo = build(cfg, data).algorithm
    state = algo.init(data)
    W0, b0 = _linear(state.params)
    x = np.append(W0[0], b0[0])  # [W, b]
    c, c_i = np.zeros_like(x), [np.zeros_like(x) for _ in range(3)]
    p = _weights(data.train)
    for _ in range(3):
        state, metrics = jax.jit(algo.round)(state, data.train)
        delta_x, delta_c = np.zeros_like(x), np.zeros_like(x)
        for i, (xs, ys) in enumerate(_clients(data.train)):
            if not metrics["participants"][i]:
                continue
            y = x.copy()
            for _ in range(EPOCHS):
                gw, gb = ref.linear_grad(y[:-1], y[-1], xs, ys)
                y = y - LR * (np.append(gw, gb) + WD * y + c - c_i[i])
            new_c_i = c_i[i] - c + (x - y) / (EPOCHS * LR)
            delta_x += p[i] * (y - x)
            delta_c += p[i] * (new_c_i - c_i[i])
            c_i[i] = new_c_i
        x, c = x + server_lr * delta_x, c + delta_c
    assert sampling_rate == 1.0 or not np.asarray(metrics["participants"]).all()
    got_W, got_b = _linear(state.params)
    _close((got_W[0], got_b[0]), (x[:-1], x[-1]))
    ctrl_W, ctrl_b = _linear(state.server_control)
    _close((ctrl_W[0], ctrl_b[0]), (c[:-1], c[-1]))
    ctrl_W, ctrl_b = _linear(state.client_control)
    _close((ctrl_W[:, 0], ctrl_b[:, 0]), (np.stack([v[:-1] for v in c_i]), np.array([v[-1] for v in c_i])))
    np.testing.assert_allclose(np.tensordot(p, np.stack(c_i), axes=1), c, atol=1e-6)  # c = sum_i p_i c_i


def _numpy_bn_local(W, b, gamma, beta, mean, var, x, y):
    """EPOCHS full-batch steps on one client's own samples: BatchNorm in training mode (biased
    batch variance), running statistics with momentum 0.9, weight decay on every parameter."""
    for _ in range(EPOCHS):
        mu, sigma2 = x.mean(0), x.var(0)
        xhat = (x - mu) / np.sqrt(sigma2 + 1e-5)
        h = gamma * xhat + beta
        dz = (ref.sigmoid(h @ W + b) - y) / len(y)
        dh = dz[:, None] * W[None]
        grads = (h.T @ dz, dz.sum(), (dh * xhat).sum(0), dh.sum(0))
        W, b, gamma, beta = (p - LR * (g + WD * p) for p, g in zip((W, b, gamma, beta), grads, strict=True))
        mean, var = 0.9 * mean + 0.1 * mu, 0.9 * var + 0.1 * sigma2
    return W, b, gamma, beta, mean, var


def test_fedbn_matches_numpy(tmp_path):
    """Shared Dense layer averaged, each client's BatchNorm (scale, bias, running statistics) kept;
    clients smaller than the batch: BatchNorm statistics over their real samples only."""
    data = tiny_binary_data()
    cfg = tiny_config(tmp_path, method="FedBN", n_learners=1, momentum=0.0)
    algo = build(cfg, data, model=TinyBatchNormModel()).algorithm
    state = algo.init(data)
    glob = jax.tree.map(lambda a: np.asarray(a[0], np.float64), state.global_model)
    W, b = glob["params"]["Dense_0"]["kernel"][:, 0], glob["params"]["Dense_0"]["bias"][0]
    norm = [glob["params"]["BatchNorm_0"][k] for k in ("scale", "bias")]
    norm += [glob["batch_stats"]["BatchNorm_0"][k] for k in ("mean", "var")]
    local = [tuple(norm)] * 3
    for _ in range(ROUNDS):
        state, _ = jax.jit(algo.round)(state, data.train)
        trained = [_numpy_bn_local(W, b, *local[c], x, y) for c, (x, y) in enumerate(_clients(data.train))]
        local = [t[2:] for t in trained]
        p = _weights(data.train)
        W = sum(pc * t[0] for pc, t in zip(p, trained, strict=True))
        b = sum(pc * t[1] for pc, t in zip(p, trained, strict=True))
    dense = state.global_model["params"]["Dense_0"]
    _close((dense["kernel"][0, :, 0], dense["bias"][0, 0]), (W, b))
    norm, stats = state.params["params"]["BatchNorm_0"], state.params["batch_stats"]["BatchNorm_0"]
    want = [np.stack([t[k] for t in local]) for k in range(4)]
    got = (norm["scale"], norm["bias"], stats["mean"], stats["var"])
    _close(tuple(g[:, 0] for g in got), tuple(want))
    assert not np.allclose(want[0][0], want[0][1])  # the clients' BatchNorm layers differ


def test_fedbn_needs_batch_norm(tmp_path, capsys):
    small = ["--n_clients", "6", "--dim", "4", "--n_test_per_client", "10", "--n_rounds", "1", "--quiet"]
    assert main([*small, "--method", "FedBN", "--workdir", str(tmp_path)]) == 2
    assert "FedBN keeps BatchNorm layers local" in capsys.readouterr().err


@pytest.mark.parametrize("drop_last,steps", [(False, [2, 2, 1]), (True, [1, 2, 1])])
def test_scaffold_lr_sums_count_the_steps_taken(tmp_path, drop_last, steps):
    """``K lr`` of option II: steps each client really takes (sizes 5, 8, 3; batch 4) times the
    rates of its epochs under the schedule (multi-step over 4 rounds: 0.1, 0.1 then 0.01)."""
    data = tiny_binary_data()
    cfg = tiny_config(
        tmp_path, method="SCAFFOLD", n_learners=1, batch_size=4, drop_last=drop_last,
        lr_scheduler="multi_step", n_rounds=4,
    )  # fmt: skip
    update = build(cfg, data).ctx.update
    epochs_done = np.array([0, 1, 2], np.int32)
    rates = np.array([0.1 + 0.1, 0.1 + 0.01, 0.01 + 0.001])  # epochs (t, t + 1), milestones 2 and 3
    got = lr_sums(update, data.train, epochs_done)
    np.testing.assert_allclose(got, np.array(steps) * rates, rtol=1e-6)


@pytest.mark.parametrize("drop_last,steps", [(False, [2, 2, 3, 1, 0]), (True, [1, 2, 2, 1, 0])])
def test_scaffold_lr_sums_for_sizes_that_divide_the_batch_and_a_padded_client(tmp_path, drop_last, steps):
    """Sizes 5, 8, 10, 3 and a mesh's padded client (0 samples), batch 4: a size that divides the
    batch (8) is not the largest, and the largest (10) does not divide it, so neither the step count
    of a divisible size nor the cap of the largest client can hide behind the other."""
    from types import SimpleNamespace

    cfg = tiny_config(tmp_path, method="SCAFFOLD", n_learners=1, batch_size=4, drop_last=drop_last)
    update = build(cfg, tiny_binary_data(sizes=(5, 8, 10, 3))).ctx.update
    counts = np.array([5, 8, 10, 3, 0], np.int32)
    train = SimpleNamespace(counts=jnp.asarray(counts), max_count=10)
    expected = [(max(n // 4, 1) if drop_last else -(-n // 4)) if n else 0 for n in counts]  # NumPy's view
    assert expected == steps
    got = lr_sums(update, train, np.zeros(5, np.int32))
    np.testing.assert_allclose(got, np.array(steps) * 0.1 * 2, rtol=1e-6)  # 2 epochs at lr 0.1
