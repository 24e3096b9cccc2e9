"""Every formula of FEDEM_SPEC.md section 2 against the NumPy reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest

from fedem_jax.core import aggregation, mixture
from fedem_jax.core.optim import lr_schedule, make_direction, sgd_like_step
from fedem_jax.core.tasks import BINARY, Task

RNG = np.random.default_rng(0)


def test_per_sample_loss_binary_and_multiclass():
    z = RNG.normal(size=(7, 1))
    y = RNG.integers(0, 2, size=7)
    chex.assert_trees_all_close(
        BINARY.per_sample_loss(jnp.asarray(z), jnp.asarray(y)), ref.bce_with_logits(z[:, 0], y), rtol=1e-6
    )
    logits = RNG.normal(size=(7, 5))
    labels = RNG.integers(0, 5, size=7)
    chex.assert_trees_all_close(
        Task(5).per_sample_loss(jnp.asarray(logits), jnp.asarray(labels)),
        ref.softmax_ce(logits, labels),
        rtol=1e-5,
    )


def test_e_step_is_softmax_of_log_pi_minus_loss():
    pi = np.array([0.2, 0.5, 0.3])
    losses = RNG.exponential(size=(3, 11))
    q = mixture.e_step(jnp.log(jnp.asarray(pi, jnp.float32)), jnp.asarray(losses, jnp.float32))
    chex.assert_trees_all_close(q, ref.e_step(pi, losses), rtol=1e-5)
    chex.assert_trees_all_close(q.sum(axis=0), jnp.ones(11), rtol=1e-6)


def test_e_step_per_sample_log_pi_matches_per_client():
    pis = np.array([[0.2, 0.8], [0.6, 0.4]])
    losses = RNG.exponential(size=(2, 5))
    owner = np.array([0, 0, 1, 1, 1])
    q = mixture.e_step(jnp.log(jnp.asarray(pis[owner].T, jnp.float32)), jnp.asarray(losses, jnp.float32))
    expected = np.concatenate([ref.e_step(pis[0], losses[:, :2]), ref.e_step(pis[1], losses[:, 2:])], axis=1)
    chex.assert_trees_all_close(q, expected, rtol=1e-5)


def test_pi_is_mean_of_responsibilities_over_valid_samples():
    q = RNG.dirichlet(np.ones(3), size=9).T  # [3, 9]
    mask = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0], bool)
    pi = mixture.update_pi(jnp.asarray(q), jnp.asarray(mask))
    chex.assert_trees_all_close(pi, q[:, :6].mean(axis=1), rtol=1e-6)
    # Flat version over several clients.
    owner = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    counts = np.bincount(owner)
    pis = mixture.update_pi_all_clients(jnp.asarray(q), jnp.asarray(owner), jnp.asarray(counts))
    expected = np.stack([q[:, owner == c].mean(axis=1) for c in range(3)])
    chex.assert_trees_all_close(pis, expected, rtol=1e-6)


def test_weighted_batch_loss_divides_by_batch_size_not_q_mass():
    losses = RNG.exponential(size=(3, 6))
    q = RNG.dirichlet(np.ones(3), size=6).T
    mask = np.ones(6, bool)
    value = mixture.weighted_batch_loss(jnp.asarray(losses), jnp.asarray(q), jnp.asarray(mask))
    np.testing.assert_allclose(value, ref.weighted_batch_loss(losses, q), rtol=1e-6)
    # Padded samples change nothing.
    padded = mixture.weighted_batch_loss(
        jnp.asarray(np.pad(losses, ((0, 0), (0, 2)), constant_values=9.0)),
        jnp.asarray(np.pad(q, ((0, 0), (0, 2)), constant_values=0.5)),
        jnp.asarray(np.pad(mask, (0, 2))),
    )
    np.testing.assert_allclose(padded, value, rtol=1e-6)


def test_aggregation_weights_all_clients_by_samples_and_absent_clients_keep_global():
    global_params = {"w": jnp.asarray(RNG.normal(size=(2, 4)), jnp.float32)}
    local = {"w": jnp.asarray(RNG.normal(size=(3, 2, 4)), jnp.float32)}
    counts = np.array([10, 30, 60])
    participates = np.array([True, False, True])
    p = aggregation.client_weights(jnp.asarray(counts))
    w = jnp.where(jnp.asarray(participates), p, 0.0)
    new = aggregation.apply_delta(global_params, aggregation.weighted_delta_sum(global_params, local, w))
    # Explicit sum over ALL clients; the absent one contributes the current global.
    contributions = [
        (counts[c] / counts.sum()) * (np.asarray(local["w"][c]) if participates[c] else global_params["w"])
        for c in range(3)
    ]
    chex.assert_trees_all_close(new["w"], np.sum(contributions, axis=0), rtol=1e-5, atol=1e-6)


def test_mixture_prediction_and_clamped_nll():
    pi = np.array([0.7, 0.3])
    probs = RNG.dirichlet(np.ones(4), size=(2, 5))  # [M, n, K]
    labels = RNG.integers(0, 4, size=5)
    mixed = mixture.mixture_probs(jnp.asarray(pi), jnp.asarray(probs))
    expected = 0.7 * probs[0] + 0.3 * probs[1]
    chex.assert_trees_all_close(mixed, expected, rtol=1e-6)
    nll = mixture.clamped_nll(mixed, jnp.asarray(labels))
    chex.assert_trees_all_close(nll, -np.log(expected[np.arange(5), labels]), rtol=1e-5)
    # A zero probability gives a large finite loss, not inf.
    zero = mixture.clamped_nll(jnp.asarray([[1.0, 0.0]]), jnp.asarray([1]))
    assert np.isfinite(zero).all() and zero[0] > 20


def test_binary_class_probs_are_sigmoid_pairs():
    z = jnp.asarray([[0.0], [2.0]])
    probs = BINARY.class_probs(z)
    chex.assert_trees_all_close(probs[:, 1], ref.sigmoid(np.array([0.0, 2.0])), rtol=1e-6)
    chex.assert_trees_all_close(probs.sum(-1), jnp.ones(2))


def test_mixture_nll_from_losses_matches_definition():
    pi = np.array([0.25, 0.75])
    losses = RNG.exponential(size=(2, 4))
    value = mixture.mixture_nll_from_losses(jnp.log(jnp.asarray(pi)), jnp.asarray(losses))
    chex.assert_trees_all_close(value, -np.log((pi[:, None] * np.exp(-losses)).sum(0)), rtol=1e-5)


def test_sgd_matches_torch_semantics_weight_decay_before_momentum():
    direction = make_direction("sgd", momentum=0.9, weight_decay=0.1)
    params = {"w": jnp.asarray([1.0, -2.0])}
    state = direction.init(params)
    grads = [np.array([0.5, 0.5]), np.array([-1.0, 2.0])]
    w, buf = np.array([1.0, -2.0]), None
    for g in grads:
        params, state = sgd_like_step(params, state, {"w": jnp.asarray(g)}, jnp.asarray(0.1), direction)
        d = g + 0.1 * w
        buf = d if buf is None else 0.9 * buf + d
        w = w - 0.1 * buf
    chex.assert_trees_all_close(params["w"], w, rtol=1e-6)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("constant", [1, 1, 1, 1, 1, 1, 1, 1]),
        ("sqrt", [1, 1, 1 / np.sqrt(2), 1 / np.sqrt(3), 0.5, 1 / np.sqrt(5), 1 / np.sqrt(6), 1 / np.sqrt(7)]),
        ("linear", [1, 1, 1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6, 1 / 7]),
        ("multi_step", [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01]),  # n_rounds=8: milestones 4 and 6
    ],
)
def test_schedules(name, expected):
    schedule = lr_schedule(name, 2.0, n_rounds=8)
    values = jax.vmap(schedule)(jnp.arange(8))
    chex.assert_trees_all_close(values, 2.0 * np.array(expected), rtol=1e-6)


def test_cosine_schedule_period_200():
    schedule = lr_schedule("cosine", 1.0, n_rounds=10)
    np.testing.assert_allclose(
        [schedule(0), schedule(100), schedule(200)], [1.0, 0.5 * (1 + np.cos(np.pi / 2)), 0.0], atol=1e-6
    )
