"""``--client_momentum fresh`` (issue 25, part 3): the local optimizer restarts every round and no
per-client copy of its state is kept."""

import chex
import jax
import numpy as np
import pytest
from helpers import TinyBatchNormModel, tiny_binary_data, tiny_config

import fedem_jax
from fedem_jax.algorithms import registry
from fedem_jax.errors import ConfigError
from fedem_jax.training.experiment import build

EXTRA = {"FedPer": {"head": "Dense_0/bias"}, "FedRep": {"head": "Dense_0/bias"}}


def _config(tmp_path, method, **changes):
    caps = registry.get(method).capabilities
    return tiny_config(
        tmp_path, method=method, n_learners=2 if caps.components else 1, momentum=0.9, batch_size=4,
        sampling_rate=1.0 if caps.full_participation else 0.7, **EXTRA.get(method, {}), **changes,
    )  # fmt: skip


def _rounds(cfg, data, reset: bool, n=2):
    model = TinyBatchNormModel() if cfg.method == "FedBN" else None
    algorithm = build(cfg, data, model=model).algorithm
    state, round_fn = algorithm.init(data), jax.jit(algorithm.round)
    for _ in range(n):
        if reset:  # by hand: a new optimizer state (zeros: momentum, Adam moments) every round
            state = state.replace(clients=state.clients.replace(
                opt_state=jax.tree.map(np.zeros_like, state.clients.opt_state)))  # fmt: skip
        state, _ = round_fn(state, data.train)
    return state


# One method per way of holding optimizer state: the engine's (FedEM), a head and a body state
# (FedRep), state over extra variables (SCAFFOLD, APFL, Ditto), none (pFedMe-true's own step),
# the fine-tuning copy (FedAvg+), a BatchNorm-masked direction (FedBN), personal models (local).
KINDS = ["FedEM", "FedRep", "SCAFFOLD", "APFL", "Ditto", "pFedMe-true", "FedAvg+", "FedBN", "local"]


@pytest.mark.parametrize("method", KINDS)
def test_fresh_is_persistent_with_the_state_reset_every_round(tmp_path, method):
    """Each kind of state: two rounds with ``fresh`` equal two persistent rounds whose optimizer state
    is reset by hand before each, and the fresh state holds no optimizer state at all."""
    data = tiny_binary_data(sizes=(9, 14, 6, 11), dim=5)
    fresh = _rounds(_config(tmp_path, method, client_momentum="fresh"), data, reset=False)
    by_hand = _rounds(_config(tmp_path, method), data, reset=True)
    assert fresh.clients.opt_state is None
    if method != "pFedMe-true":  # its Moreau step keeps no optimizer state either way
        assert jax.tree.leaves(by_hand.clients.opt_state)  # the persistent one keeps some
    fresh_fields = fresh.replace(clients=fresh.clients.replace(opt_state=None))
    by_hand_fields = by_hand.replace(clients=by_hand.clients.replace(opt_state=None))
    chex.assert_trees_all_close(fresh_fields, by_hand_fields, rtol=1e-6, atol=1e-7)


def test_fresh_differs_from_persistent_after_the_first_round(tmp_path):
    data = tiny_binary_data(sizes=(9, 14, 6, 11), dim=5)
    fresh = _rounds(_config(tmp_path, "FedEM", client_momentum="fresh"), data, reset=False, n=1)
    kept = _rounds(_config(tmp_path, "FedEM"), data, reset=False, n=1)
    chex.assert_trees_all_close(fresh.params, kept.params, rtol=1e-6, atol=1e-7)  # both start at 0
    fresh = _rounds(_config(tmp_path, "FedEM", client_momentum="fresh"), data, reset=False, n=2)
    kept = _rounds(_config(tmp_path, "FedEM"), data, reset=False, n=2)
    pairs = zip(jax.tree.leaves(fresh.params), jax.tree.leaves(kept.params), strict=True)
    gap = max(float(np.abs(a - b).max()) for a, b in pairs)
    assert gap > 1e-4


def test_a_fresh_run_checkpoints_and_resumes_exactly(tmp_path):
    from test_api import ended_early_and_straight

    settings = dict(n_clients=12, dim=10, n_test_per_client=10, n_rounds=4, log_freq=1, plots=False,
                    quiet=True, client_momentum="fresh")  # fmt: skip
    rows, want, _, _ = ended_early_and_straight(tmp_path, settings, 2)
    assert rows == want and rows[-1]["round"] == 4


def test_a_bad_value_is_one_line():
    with pytest.raises(
        ConfigError, match="--client_momentum: unknown value 'reset'; valid: persistent, fresh"
    ):
        fedem_jax.config(client_momentum="reset")
