"""map_samples: lax.map(f, xs, batch_size) without copying xs, with the same results."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedem_jax.execution.sample_map import map_samples


def per_sample(xy):
    x, y = xy
    return {"score": jnp.tanh(x @ jnp.arange(1.0, 4.0)) * y, "first": x[0]}


@pytest.mark.parametrize("n", [1, 7, 8, 23, 64])
def test_same_as_lax_map(n):
    rng = np.random.default_rng(n)
    xs = (jnp.asarray(rng.normal(size=(n, 3)), jnp.float32), jnp.asarray(rng.normal(size=(n,)), jnp.float32))
    got = jax.jit(lambda xs: map_samples(per_sample, xs, 8))(xs)
    want = jax.jit(lambda xs: jax.lax.map(per_sample, xs, batch_size=8))(xs)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.shape == w.shape == (n,)
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
