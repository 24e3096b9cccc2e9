"""The jitted FedEM round: golden values against NumPy, masking, layouts, tracing, seeds."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from helpers import tiny_binary_data, tiny_config

from fedem_jax.execution import Layout
from fedem_jax.training.experiment import build

LAYOUTS = [(0, 1), (1, 0), (2, 1), (1, 1)]  # (client_chunk, learner_vmap)


def _linear_numpy(params):
    return np.asarray(params["Dense_0"]["kernel"][..., 0], np.float64), np.asarray(
        params["Dense_0"]["bias"][..., 0], np.float64
    )


@pytest.mark.parametrize("client_chunk,learner_vmap", LAYOUTS)
@pytest.mark.parametrize("sampling_rate", [1.0, 0.67])
def test_two_rounds_match_numpy_reference(tmp_path, client_chunk, learner_vmap, sampling_rate):
    data = tiny_binary_data()
    cfg = tiny_config(
        tmp_path, client_chunk=client_chunk, learner_vmap=learner_vmap, sampling_rate=sampling_rate
    )
    algo = build(cfg, data).algorithm
    state = algo.init(data)
    round_fn = jax.jit(algo.round)

    W, b = _linear_numpy(state.params)
    pis = np.full((3, 2), 0.5)
    momenta = [None] * 3
    xs = [
        np.asarray(data.train.x[o : o + n], np.float64)
        for o, n in zip(data.train.offsets, data.train.counts, strict=True)
    ]
    ys = [
        np.asarray(data.train.y[o : o + n], np.float64)
        for o, n in zip(data.train.offsets, data.train.counts, strict=True)
    ]
    for _ in range(2):
        state, metrics = round_fn(state, data.train)
        participants = np.asarray(metrics["participants"])
        assert participants.sum() == (3 if sampling_rate == 1.0 else 2)
        W, b, pis, momenta = ref.linear_fedem_round(
            W,
            b,
            pis,
            momenta,
            xs,
            ys,
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            epochs=2,
            participants=participants,
        )
    got_W, got_b = _linear_numpy(state.params)
    chex.assert_trees_all_close((got_W, got_b), (W, b), rtol=1e-4, atol=1e-6)
    chex.assert_trees_all_close(state.clients.pi, pis, rtol=1e-4, atol=1e-6)


def test_state_axes(tmp_path):
    data = tiny_binary_data()
    algo = build(tiny_config(tmp_path, n_learners=3), data).algorithm
    state = algo.init(data)
    chex.assert_tree_shape_prefix(state.params, (3,))
    chex.assert_tree_shape_prefix(state.clients.opt_state, (3, 3))
    chex.assert_shape(state.clients.pi, (3, 3))
    chex.assert_shape(state.clients.epochs_done, (3,))
    # Learners start from different initialisations.
    kernel = state.params["Dense_0"]["kernel"]
    assert not np.allclose(kernel[0], kernel[1])


@pytest.mark.parametrize("client_chunk", [0, 1])
def test_drop_last_keeps_a_small_clients_only_batch(tmp_path, client_chunk):
    """The reference's rule: with batches larger than every client, ``--drop_last`` drops nothing
    (each client's one partial batch is its only one), bit for bit as without it. With batch 6
    (sizes 5, 8, 3) the clients of 5 and 3 samples still take their one step per epoch, and the
    masked step after it changes nothing: their local models equal those of full-batch steps."""
    data = tiny_binary_data()
    results = []
    for drop_last in (True, False):
        cfg = tiny_config(tmp_path, batch_size=32, drop_last=drop_last, client_chunk=client_chunk)
        algo = build(cfg, data).algorithm
        state, _ = jax.jit(algo.round)(algo.init(data), data.train)
        results.append(jax.tree.map(np.asarray, (state.params, state.clients.opt_state)))
        np.testing.assert_array_equal(state.clients.epochs_done, [2, 2, 2])
    chex.assert_trees_all_equal(*results)
    local = []
    for batch in (6, 32):
        cfg = tiny_config(
            tmp_path,
            method="local",
            n_learners=1,
            batch_size=batch,
            drop_last=True,
            client_chunk=client_chunk,
        )
        algo = build(cfg, data).algorithm
        state, _ = jax.jit(algo.round)(algo.init(data), data.train)
        local.append(jax.tree.map(lambda a: np.asarray(a)[[0, 2]], state.params))  # the small clients
    chex.assert_trees_all_close(*local, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("client_chunk", [0, 1])
def test_absent_client_state_is_bit_identical(tmp_path, client_chunk):
    data = tiny_binary_data()
    cfg = tiny_config(tmp_path, sampling_rate=0.34, client_chunk=client_chunk)
    algo = build(cfg, data).algorithm
    state = algo.init(data)
    round_fn = jax.jit(algo.round)
    state, _ = round_fn(state, data.train)  # give every client some momentum history
    before = jax.tree.map(np.asarray, state.clients)
    state, metrics = round_fn(state, data.train)
    absent = ~np.asarray(metrics["participants"])
    assert absent.sum() == 2
    after = jax.tree.map(np.asarray, state.clients)
    chex.assert_trees_all_equal(
        jax.tree.map(lambda a: a[absent], before), jax.tree.map(lambda a: a[absent], after)
    )


@pytest.mark.parametrize("client_chunk", [0, 1])
def test_masked_helper_returns_old_state_exactly(client_chunk):
    layout = Layout(client_chunk=client_chunk)
    state = {"a": jnp.asarray([1.5, np.nan, -0.0]), "b": jnp.asarray(3)}
    bump = lambda s: jax.tree.map(lambda x: x + 1, s)  # noqa: E731
    out = jax.jit(lambda s: layout.masked(jnp.asarray(False), bump, s))(state)
    chex.assert_trees_all_equal(out, state)
    out = jax.jit(lambda s: layout.masked(jnp.asarray(True), bump, s))(state)
    chex.assert_trees_all_equal(out["b"], jnp.asarray(4))


def test_layouts_agree(tmp_path):
    data = tiny_binary_data(sizes=(20, 7, 13, 2, 9), dim=6)
    results = []
    for client_chunk, learner_vmap in LAYOUTS:
        cfg = tiny_config(
            tmp_path, client_chunk=client_chunk, learner_vmap=learner_vmap, batch_size=4, n_learners=3
        )
        algo = build(cfg, data).algorithm
        state = algo.init(data)
        for _ in range(2):
            state, _ = jax.jit(algo.round)(state, data.train)
        results.append((state.params, state.clients.pi))
    for other in results[1:]:
        chex.assert_trees_all_close(results[0], other, rtol=1e-5, atol=1e-6)


def test_round_compiles_once(tmp_path):
    data = tiny_binary_data()
    algo = build(tiny_config(tmp_path, batch_size=4), data).algorithm
    state = algo.init(data)
    round_fn = jax.jit(chex.assert_max_traces(algo.round, n=1))
    for _ in range(4):
        state, _ = round_fn(state, data.train)
    assert int(state.round) == 4


def test_same_seed_same_result_different_seed_different(tmp_path):
    data = tiny_binary_data()

    def final(seed):
        algo = build(tiny_config(tmp_path, seed=seed, batch_size=4, sampling_rate=0.67), data).algorithm
        state = algo.init(data)
        for _ in range(3):
            state, _ = jax.jit(algo.round)(state, data.train)
        return jax.tree.map(np.asarray, state.params)

    chex.assert_trees_all_equal(final(1), final(1))
    with pytest.raises(AssertionError):
        chex.assert_trees_all_close(final(1), final(2))


def test_evaluate_counts_mixture_predictions(tmp_path):
    data = tiny_binary_data()
    algo = build(tiny_config(tmp_path), data).algorithm
    state = algo.init(data)
    stats = jax.jit(algo.evaluate)(state, data.test)
    W, b = _linear_numpy(state.params)
    for c in range(3):
        x = np.asarray(data.test.x[c * 4 : (c + 1) * 4], np.float64)
        y = np.asarray(data.test.y[c * 4 : (c + 1) * 4])
        p1 = sum(0.5 * ref.sigmoid(x @ W[m] + b[m]) for m in range(2))
        correct = ((p1 > 0.5).astype(int) == y).sum()
        nll = -np.log(np.where(y == 1, p1, 1 - p1)).sum()
        assert float(stats["correct"][c]) == correct
        np.testing.assert_allclose(float(stats["loss_sum"][c]), nll, rtol=1e-5)


def test_partial_batches_as_sub_batches_give_the_same_round(tmp_path):
    """--micro_batch: a client's last partial batch as 4-sample sub-batches = one padded batch."""
    import chex
    import jax
    import numpy as np
    from helpers import tiny_binary_data, tiny_config

    from fedem_jax.training.experiment import build

    data = tiny_binary_data(sizes=(21, 7, 13), dim=4)
    results = []
    for micro in (0, 4):
        cfg = tiny_config(tmp_path, batch_size=8, client_chunk=1, micro_batch=micro, local_epochs=2)
        algo = build(cfg, data).algorithm
        state = algo.init(data)
        for _ in range(2):
            state, _ = jax.jit(algo.round)(state, data.train)
        results.append(jax.tree.map(np.asarray, (state.params, state.clients)))
    chex.assert_trees_all_close(results[0], results[1], rtol=1e-5, atol=1e-6)
