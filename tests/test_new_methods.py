"""Ditto, FedPer, FedRep and the adaptive server optimizers (FedAdam, FedYogi): golden values
against NumPy transcriptions of each paper's update (full-batch steps on hand-made clients)."""

import numpy as np
import numpy_reference as ref
import pytest
from helpers import tiny_binary_data, tiny_config
from test_methods import LR, WD, _clients, _close, _linear, _run, _weights

from fedem_jax.main import main

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
