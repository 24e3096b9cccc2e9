"""pFedMe, Clustered FL, APFL, AFL, q-FFL, L2SGD and D-FedEM: golden values against NumPy
transcriptions of each method's update (full-batch steps on hand-made clients), and properties."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from helpers import tiny_binary_data, tiny_config

from fedem_jax.algorithms.afl import project_to_simplex
from fedem_jax.algorithms.decentralized import (
    DFedEMHyperparams,
    erdos_renyi_graph,
    make_dfedem,
    mixing_matrix,
)
from fedem_jax.core import clustering
from fedem_jax.core.tasks import BINARY
from fedem_jax.data import FederatedData, build_split
from fedem_jax.main import main
from fedem_jax.training.experiment import build

LR, WD = 0.1, 5e-4


def _linear(params):
    """(W [..., d], b [...]) of stacked linear binary models, learner axis kept."""
    kernel = np.asarray(params["Dense_0"]["kernel"], np.float64)[..., 0]
    bias = np.asarray(params["Dense_0"]["bias"], np.float64)[..., 0]
    return kernel, bias


def _clients(split):
    x, y = np.asarray(split.x, np.float64), np.asarray(split.y, np.float64)
    return [(x[o : o + n], y[o : o + n]) for o, n in zip(split.offsets, split.counts, strict=True)]


def _weights(split):
    counts = np.asarray(split.counts, np.float64)
    return counts / counts.sum()


def _run(cfg, data, rounds):
    algo = build(cfg, data).algorithm
    state = algo.init(data)
    start = jax.tree.map(np.asarray, state)
    for _ in range(rounds):
        state, metrics = jax.jit(algo.round)(state, data.train)
    return algo, start, state, metrics


def _close(got, want):
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------- pFedMe
def test_pfedme_matches_numpy(tmp_path):
    data = tiny_binary_data()
    cfg = tiny_config(tmp_path, method="pFedMe", n_learners=1, mu=0.5, momentum=0.0)
    _, start, state, _ = _run(cfg, data, rounds=2)
    W0, b0 = _linear(start.global_model)
    models = [(W0.copy(), b0.copy()) for _ in range(3)]
    anchor = (W0, b0)
    for _ in range(2):
        models = [
            ref.linear_local_sgd(
                W, b, x, y, np.ones((1, len(y))), LR, 0.0, WD, epochs=2, mu=0.5, anchor=anchor
            )[:2]
            for (W, b), (x, y) in zip(models, _clients(data.train), strict=True)
        ]
        p = _weights(data.train)
        anchor = (
            sum(pc * W for pc, (W, _) in zip(p, models, strict=True)),
            sum(pc * b for pc, (_, b) in zip(p, models, strict=True)),
        )
    _close(_linear(state.params), (np.stack([W for W, _ in models]), np.stack([b for _, b in models])))
    _close(_linear(state.global_model), anchor)  # the average is computed ...
    assert not np.allclose(_linear(state.params)[0][0], anchor[0])  # ... but not copied to clients


def test_pfedme_moreau_matches_numpy(tmp_path):
    data = tiny_binary_data()
    cfg = tiny_config(
        tmp_path,
        method="pFedMe-true",
        n_learners=1,
        pfedme_lambda=3.0,
        pfedme_k=2,
        personal_lr=0.05,
        beta=0.7,
    )
    _, start, state, _ = _run(cfg, data, rounds=2)
    w, bw = (a[0] for a in _linear(start.global_model))
    thetas = [(w, bw)] * 3
    for _ in range(2):
        locals_ = []
        for c, (x, y) in enumerate(_clients(data.train)):
            lw, lb = w, bw
            th, tb = thetas[c]
            for _ in range(2):  # local epochs, one full batch each
                for _ in range(2):  # K inner steps on the Moreau envelope
                    g, gb = ref.linear_grad(th, tb, x, y)
                    th, tb = th - 0.05 * (g + 3.0 * (th - lw)), tb - 0.05 * (gb + 3.0 * (tb - lb))
                lw, lb = lw - LR * 3.0 * (lw - th), lb - LR * 3.0 * (lb - tb)
            thetas[c] = (th, tb)
            locals_.append((lw, lb))
        p = _weights(data.train)
        w = 0.3 * w + 0.7 * sum(pc * lw for pc, (lw, _) in zip(p, locals_, strict=True))
        bw = 0.3 * bw + 0.7 * sum(pc * lb for pc, (_, lb) in zip(p, locals_, strict=True))
    _close(tuple(a[0] for a in _linear(state.global_model)), (w, bw))
    got_W, got_b = _linear(state.params)
    _close((got_W[:, 0], got_b[:, 0]), (np.stack([t for t, _ in thetas]), np.array([b for _, b in thetas])))


# ----------------------------------------------------------------------------------------- APFL
@pytest.mark.parametrize("learn_alpha", [True, False])
def test_apfl_matches_numpy(tmp_path, learn_alpha):
    data = tiny_binary_data()
    cfg = tiny_config(
        tmp_path, method="APFL", n_learners=1, momentum=0.0, apfl_alpha=0.3, learn_alpha=learn_alpha
    )
    algo, start, state, _ = _run(cfg, data, rounds=2)
    w, bw = (a[0] for a in _linear(start.global_model))
    clients = [(w, bw, w, bw, 0.3) for _ in range(3)]
    for _ in range(2):
        clients = [
            ref.apfl_local(w, bw, v, bv, alpha, x, y, LR, WD, epochs=2, learn_alpha=learn_alpha)
            for (_, _, v, bv, alpha), (x, y) in zip(clients, _clients(data.train), strict=True)
        ]
        p = _weights(data.train)
        w = sum(pc * c[0] for pc, c in zip(p, clients, strict=True))
        bw = sum(pc * c[1] for pc, c in zip(p, clients, strict=True))
        clients = [(w, bw, *c[2:]) for c in clients]
    _close(tuple(a[0] for a in _linear(state.global_model)), (w, bw))
    v_got, bv_got = _linear(state.params["v"])
    _close(
        (v_got[:, 0], bv_got[:, 0]), (np.stack([c[2] for c in clients]), np.array([c[3] for c in clients]))
    )
    _close(np.asarray(state.params["alpha"], np.float64), np.array([c[4] for c in clients]))
    if not learn_alpha:
        np.testing.assert_array_equal(np.asarray(state.params["alpha"]), np.float32(0.3))
    # Evaluation uses the interpolated model alpha v + (1 - alpha) w.
    stats = jax.jit(algo.evaluate)(state, data.test)
    for c, (x, y) in enumerate(_clients(data.test)):
        a = clients[c][4]
        z = x @ (a * clients[c][2] + (1 - a) * w) + (a * clients[c][3] + (1 - a) * bw)
        assert float(stats["correct"][c]) == np.sum((z > 0) == (y > 0.5))


# ----------------------------------------------------------------------------------------- AFL
def test_simplex_projection_satisfies_kkt():
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = rng.normal(size=7) * 2
        x = np.asarray(project_to_simplex(jnp.asarray(v, jnp.float32)), np.float64)
        assert np.all(x >= 0) and abs(x.sum() - 1) < 1e-5
        theta = (v - x)[x > 0]  # KKT: v_i - x_i is one constant on the support ...
        assert np.ptp(theta) < 1e-5
        assert np.all(v[x == 0] <= theta[0] + 1e-5)  # ... and bounds v_i off it
    np.testing.assert_allclose(project_to_simplex(jnp.array([0.2, 0.3, 0.5])), [0.2, 0.3, 0.5], rtol=1e-6)


def test_afl_matches_numpy(tmp_path):
    data = tiny_binary_data()
    cfg = tiny_config(tmp_path, method="AFL", n_learners=1, lr_lambda=0.5)
    _, start, state, _ = _run(cfg, data, rounds=2)
    W, b = (a[0] for a in _linear(start.params))
    lam = _weights(data.train)
    bufs = [(None, None)] * 3
    for _ in range(2):
        losses = np.array([ref.mean_bce(W, b, x, y) for x, y in _clients(data.train)])
        new_W, new_b = W.copy(), b.copy()
        for c, (x, y) in enumerate(_clients(data.train)):
            Wc, bc, bufs[c] = ref.linear_local_sgd(
                W[None], np.array([b]), x, y, np.ones((1, len(y))), LR, 0.9, WD, 2, buf=bufs[c]
            )
            new_W, new_b = new_W + lam[c] * (Wc[0] - W), new_b + lam[c] * (bc[0] - b)
        W, b = new_W, new_b
        lam = np.asarray(project_to_simplex(jnp.asarray(lam + 0.5 * losses, jnp.float32)), np.float64)
    _close(tuple(a[0] for a in _linear(state.params)), (W, b))
    _close(np.asarray(state.lam, np.float64), lam)
    assert lam.max() > _weights(data.train).max() - 1e-3  # lambda moved toward the worst client


def test_afl_without_lambda_steps_is_fedavg(tmp_path):
    data = tiny_binary_data()
    got = _run(tiny_config(tmp_path, method="AFL", n_learners=1, lr_lambda=0.0), data, 3)[2].params
    want = _run(tiny_config(tmp_path, method="FedAvg", n_learners=1), data, 3)[2].params
    _close(jax.tree.map(np.asarray, got), jax.tree.map(np.asarray, want))


# ----------------------------------------------------------------------------------------- q-FFL
def test_qffl_matches_numpy(tmp_path):
    data = tiny_binary_data()
    cfg = tiny_config(tmp_path, method="q-FFL", n_learners=1, q=2.0)
    _, start, state, _ = _run(cfg, data, rounds=2)
    W, b = (a[0] for a in _linear(start.params))
    bufs = [(None, None)] * 3
    L = 1 / LR
    for _ in range(2):
        num_W, num_b, denom = np.zeros_like(W), 0.0, 0.0
        for c, (x, y) in enumerate(_clients(data.train)):
            F = ref.mean_bce(W, b, x, y)
            Wc, bc, bufs[c] = ref.linear_local_sgd(
                W[None], np.array([b]), x, y, np.ones((1, len(y))), LR, 0.9, WD, 2, buf=bufs[c]
            )
            dW, db = L * (W - Wc[0]), L * (b - bc[0])
            num_W, num_b = num_W + F**2 * dW, num_b + F**2 * db
            denom += 2.0 * F * (np.sum(dW**2) + db**2) + L * F**2
        W, b = W - num_W / denom, b - num_b / denom
    _close(tuple(a[0] for a in _linear(state.params)), (W, b))


def test_qffl_with_q_zero_is_uniform_fedavg(tmp_path):
    data = tiny_binary_data(sizes=(6, 6, 6))  # equal sizes: FedAvg's n_t / n is uniform
    got = _run(tiny_config(tmp_path, method="q-FFL", n_learners=1, q=0.0), data, 3)[2].params
    want = _run(tiny_config(tmp_path, method="FedAvg", n_learners=1), data, 3)[2].params
    _close(jax.tree.map(np.asarray, got), jax.tree.map(np.asarray, want))


# ----------------------------------------------------------------------------------------- L2SGD
def test_l2sgd_matches_numpy(tmp_path):
    data = tiny_binary_data()
    cfg = tiny_config(tmp_path, method="L2SGD", n_learners=1, penalty=0.4, comm_prob=0.2)
    _, start, state, _ = _run(cfg, data, rounds=2)
    W0, b0 = _linear(jax.tree.map(lambda a: a[0], start.params))
    models, bufs = [(W0, b0)] * 3, [(None, None)] * 3
    pull = min(1.0, LR * 0.4 / 0.2)
    for _ in range(2):
        trained = []
        for c, ((W, b), (x, y)) in enumerate(zip(models, _clients(data.train), strict=True)):
            Wc, bc, bufs[c] = ref.linear_local_sgd(
                W, b, x, y, np.ones((1, len(y))), LR, 0.9, WD, 2, buf=bufs[c]
            )
            trained.append((Wc, bc))
        p = _weights(data.train)
        mean = (
            sum(pc * W for pc, (W, _) in zip(p, trained, strict=True)),
            sum(pc * b for pc, (_, b) in zip(p, trained, strict=True)),
        )
        models = [(W - pull * (W - mean[0]), b - pull * (b - mean[1])) for W, b in trained]
    _close(_linear(state.params), (np.stack([W for W, _ in models]), np.stack([b for _, b in models])))


# ----------------------------------------------------------------------------------------- clustered
def _two_populations(n_per=3, n=40, dim=4, seed=0) -> FederatedData:
    """Clients 0..n_per-1 label by sign(x . theta), the others by the opposite sign."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=dim)
    xs, ys = [], []
    for c in range(2 * n_per):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        flip = c >= n_per
        ys.append(((x @ theta > 0) ^ flip).astype(np.int32))
        xs.append(x)
    return FederatedData("two", build_split(xs, ys), build_split(xs, ys), BINARY)


def test_clustered_without_split_is_fedavg_per_cluster(tmp_path):
    data = tiny_binary_data()
    cfg = tiny_config(tmp_path, method="clustered", n_learners=1, tol_1=0.0, tol_2=0.0)
    _, start, state, metrics = _run(cfg, data, rounds=2)
    W, b = (a[0, 0] for a in _linear(start.params))
    bufs = [(None, None)] * 3
    for _ in range(2):
        new_W, new_b = 0.0, 0.0
        for c, (x, y) in enumerate(_clients(data.train)):
            Wc, bc, bufs[c] = ref.linear_local_sgd(
                W[None], np.array([b]), x, y, np.ones((1, len(y))), LR, 0.9, WD, 2, buf=bufs[c]
            )
            new_W, new_b = new_W + _weights(data.train)[c] * Wc[0], new_b + _weights(data.train)[c] * bc[0]
        W, b = new_W, new_b
    assert int(metrics["n_clusters"]) == 1
    got_W, got_b = _linear(state.params)
    _close((got_W[:, 0], got_b[:, 0]), (np.stack([W] * 3), np.array([b] * 3)))


def test_clustered_splits_two_populations(tmp_path):
    data = _two_populations()
    # tol_1 high / tol_2 low: the criterion holds in round 1, so the split itself is tested.
    cfg = tiny_config(
        tmp_path, method="clustered", n_learners=1, tol_1=100.0, tol_2=0.0, batch_size=64, lr=0.5
    )
    _, _, state, metrics = _run(cfg, data, rounds=1)
    ids = np.asarray(state.cluster_id)
    assert int(metrics["n_clusters"]) == 2
    assert len(set(ids[:3])) == 1 and len(set(ids[3:])) == 1 and ids[0] != ids[3]
    W, b = _linear(state.params)
    np.testing.assert_allclose(W[0], W[1], rtol=1e-6)  # members hold their cluster's model
    assert not np.allclose(W[0], W[3])
    # Default tolerances on the same problem: near the start the mean update is not small.
    cfg = tiny_config(tmp_path, method="clustered", n_learners=1, batch_size=64, lr=0.5)
    assert int(_run(cfg, data, rounds=1)[3]["n_clusters"]) == 1


def test_split_criterion_uses_each_clients_whole_update():
    # Updates u, -u, u, -u: the mean is 0 and every client's norm is 2 -> split (tol_2 = 1.6).
    u = np.array([[2.0, 0.0], [-2.0, 0.0], [2.0, 0.0], [-2.0, 0.0]], np.float32)
    gram = clustering.update_gram({"w": jnp.asarray(u)})
    ids, n = clustering.split_clusters(
        gram, jnp.full((4,), 0.25), jnp.zeros(4, jnp.int32), jnp.int32(1), 0.4, 1.6
    )
    np.testing.assert_array_equal(np.asarray(ids), [0, 1, 0, 1])
    assert int(n) == 2
    # The same directions with norms 1 < tol_2: no split.
    gram = clustering.update_gram({"w": jnp.asarray(u / 2)})
    ids, n = clustering.split_clusters(
        gram, jnp.full((4,), 0.25), jnp.zeros(4, jnp.int32), jnp.int32(1), 0.4, 1.6
    )
    assert int(n) == 1


def test_complete_linkage_matches_scipy():
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    from scipy.spatial.distance import squareform

    rng = np.random.default_rng(0)
    for _ in range(10):
        points = rng.normal(size=(10, 3))
        dist = np.linalg.norm(points[:, None] - points[None], axis=-1)
        members = rng.random(10) < 0.8
        members[:3] = True
        idx = np.flatnonzero(members)
        labels = hierarchy.fcluster(
            hierarchy.linkage(squareform(dist[np.ix_(idx, idx)]), "complete"), 2, criterion="maxclust"
        )
        want = np.zeros(10, bool)
        want[idx] = labels != labels[0]
        got = clustering.complete_linkage_bipartition(jnp.asarray(dist, jnp.float32), jnp.asarray(members))
        np.testing.assert_array_equal(np.asarray(got), want)


# ----------------------------------------------------------------------------------------- D-FedEM
def test_mixing_matrix_is_doubly_stochastic_on_a_connected_graph():
    W = mixing_matrix(12, 0.5, seed=3)
    adjacency = erdos_renyi_graph(12, 0.5, seed=3)
    np.testing.assert_allclose(W.sum(0), 1, rtol=1e-6)
    np.testing.assert_allclose(W.sum(1), 1, rtol=1e-6)
    np.testing.assert_array_equal(W, W.T)
    assert np.all(np.diag(W) > 0)  # self-weights allowed
    np.testing.assert_array_equal((W > 0) & ~np.eye(12, dtype=bool), adjacency)
    np.testing.assert_array_equal(W, mixing_matrix(12, 0.5, seed=3))  # seeded
    # Gossip converges to the average on a connected graph.
    assert np.abs(np.linalg.matrix_power(W.astype(np.float64), 200) - 1 / 12).max() < 1e-6


def test_dfedem_with_uniform_mixing_equals_fedem(tmp_path):
    data = tiny_binary_data(sizes=(6, 6, 6, 6))  # equal sizes: FedEM's n_t / n is uniform
    cfg = tiny_config(tmp_path, method="FedEM", n_learners=2)
    experiment = build(cfg, data)
    fedem = experiment.algorithm
    dfedem = make_dfedem(experiment.ctx, DFedEMHyperparams(), mixing=np.full((4, 4), 0.25, np.float32))
    a, b = fedem.init(data), dfedem.init(data)
    for _ in range(3):
        a, _ = jax.jit(fedem.round)(a, data.train)
        b, _ = jax.jit(dfedem.round)(b, data.train)
    for c in range(4):
        _close(jax.tree.map(lambda x, c=c: np.asarray(x[c]), b.params), jax.tree.map(np.asarray, a.params))
    _close(np.asarray(b.clients.pi), np.asarray(a.clients.pi))


def test_dfedem_round_matches_numpy(tmp_path):
    data = tiny_binary_data()
    cfg = tiny_config(tmp_path, method="D-FedEM", n_learners=2, graph_p=0.5)
    _, start, state, _ = _run(cfg, data, rounds=1)
    W_mix = mixing_matrix(3, 0.5, cfg.data.data_seed).astype(np.float64)
    W0, b0 = _linear(jax.tree.map(lambda a: a[0], start.params))
    trained, pis = [], []
    for x, y in _clients(data.train):
        losses = np.stack([ref.bce_with_logits(x @ W0[m] + b0[m], y) for m in range(2)])
        q = ref.e_step(np.full(2, 0.5), losses)
        pis.append(q.mean(axis=1))
        trained.append(ref.linear_local_sgd(W0, b0, x, y, q, LR, 0.9, WD, epochs=2)[:2])
    Ws, bs = np.stack([W for W, _ in trained]), np.stack([b for _, b in trained])
    want = (np.tensordot(W_mix, Ws, axes=1), np.tensordot(W_mix, bs, axes=1))
    _close(_linear(state.params), want)
    _close(np.asarray(state.clients.pi, np.float64), np.stack(pis))


# ----------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize(
    "flags,message",
    [
        (["--method", "clustered", "--sampling_rate", "0.5"], "clustered needs every client"),
        (["--method", "D-FedEM", "--sampling_rate", "0.5"], "D-FedEM needs every client"),
        (["--method", "pFedMe", "--mu", "0"], "--mu must be > 0 for pFedMe"),
        (["--method", "q-FFL", "--q", "-1"], "--q must be >= 0"),
        (["--method", "APFL", "--apfl_alpha", "2"], "--apfl_alpha must be in [0, 1]"),
        (["--method", "L2SGD", "--comm_prob", "0"], "--comm_prob must be in (0, 1]"),
        (["--method", "D-FedEM", "--graph_p", "0"], "--graph_p must be in (0, 1]"),
        (["--method", "FedAvg", "--n_learners", "3"], "--n_learners must be 1 for FedAvg"),
        (["--method", "APFL", "--test_clients_frac", "0.2"], "unseen clients are not supported"),
    ],
)
def test_method_flag_validation(tmp_path, capsys, flags, message):
    assert main([*flags, "--workdir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
