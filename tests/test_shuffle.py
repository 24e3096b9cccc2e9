"""The epoch order without argsort (fedem_jax.core.shuffle) is argsort's permutation, exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedem_jax.core.shuffle import BLOCK, MAX_BLOCKS, epoch_order, valid_first_order

# One block, one block plus one slot, several blocks, the last merged size and the fallback.
SIZES = [1, BLOCK - 1, BLOCK, BLOCK + 1, 1000, MAX_BLOCKS * BLOCK, MAX_BLOCKS * BLOCK + 1]


def argsort_order(key, n, count):
    """What client_update computed before: a stable argsort of the masked uniform scores."""
    scores = jax.random.uniform(key, (n,))
    return jnp.argsort(jnp.where(jnp.arange(n) < count, scores, 2.0))


@pytest.mark.parametrize("n", SIZES)
def test_epoch_order_is_the_argsort_permutation(n):
    fast = jax.jit(epoch_order, static_argnums=1)
    slow = jax.jit(argsort_order, static_argnums=1)
    rng = np.random.default_rng(n)
    for count in sorted({0, 1, n // 2, n - 1, n, int(rng.integers(0, n + 1))}):
        for seed in rng.integers(0, 2**31, size=2):
            key = jax.random.PRNGKey(int(seed))
            order = np.asarray(fast(key, n, count))
            np.testing.assert_array_equal(order, np.asarray(slow(key, n, count)))
            assert sorted(order.tolist()) == list(range(n))


@pytest.mark.parametrize("n", [BLOCK, 3 * BLOCK + 7, MAX_BLOCKS * BLOCK])
def test_ties_go_to_the_lower_slot(n):
    """Equal scores within and across blocks, and the largest score (whose packed key can equal
    the padding's), against NumPy's stable argsort."""
    order_of = jax.jit(valid_first_order)
    rng = np.random.default_rng(0)
    cases = [rng.integers(0, 3, n), rng.integers(0, 2**23, n), np.full(n, 2**23 - 1)]
    for scores in cases:
        scores = scores.astype(np.uint32)
        for count in (0, n // 3, n - 1, n):
            keyed = np.where(np.arange(n) < count, scores.astype(np.int64), 2**40)
            want = np.argsort(keyed, kind="stable")
            np.testing.assert_array_equal(np.asarray(order_of(jnp.asarray(scores), count)), want)


def test_vmapped_over_clients_and_runs():
    """As the round uses it: one count and key per client, a runs axis on the keys."""
    n, counts = 1100, jnp.array([0, 5, 600, 1100])
    keys = jax.random.split(jax.random.PRNGKey(3), 2 * 4).reshape(2, 4, -1)

    def per_client(fn):
        return jax.jit(jax.vmap(jax.vmap(lambda k, c: fn(k, n, c))))

    fast = per_client(epoch_order)(keys, jnp.broadcast_to(counts, (2, 4)))
    slow = per_client(argsort_order)(keys, jnp.broadcast_to(counts, (2, 4)))
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(slow))


def test_without_partitionable_threefry():
    """The first-block path draws 512 scores only when that prefix equals the first 512 of the
    full draw (partitionable threefry, JAX's default); without it, it draws them all."""
    n = 1000
    with jax.threefry_partitionable(False):
        for count in (0, 300, 512, 513, n):
            key = jax.random.PRNGKey(count)
            want = np.asarray(argsort_order(key, n, count))
            np.testing.assert_array_equal(
                np.asarray(jax.jit(epoch_order, static_argnums=1)(key, n, count)), want
            )
