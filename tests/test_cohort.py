"""Cohort rounds (issue 25): computing only the sampled clients gives the masked round, with the
cohort gathered on the device (``--cohort``) or from the host (``--federation host``)."""

import chex
import jax
import numpy as np
import pytest
from helpers import TinyBatchNormModel, tiny_binary_data, tiny_config

import fedem_jax
from fedem_jax.algorithms import registry
from fedem_jax.errors import ConfigError
from fedem_jax.training.experiment import build

COHORT_METHODS = [
    m
    for m, info in registry.methods().items()
    if info.capabilities.cohort and not info.capabilities.full_participation
]


def _config(tmp_path, method, **changes):
    caps = registry.get(method).capabilities
    if method in ("FedPer", "FedRep"):  # the linear model's one layer: split inside it
        changes.setdefault("head", "Dense_0/bias")
    return tiny_config(
        tmp_path, method=method, n_learners=2 if caps.components else 1, momentum=0.9, batch_size=4,
        sampling_rate=0.4, **changes,
    )  # fmt: skip


def _run(cfg, data, n=3):
    experiment = build(cfg, data, model=TinyBatchNormModel() if cfg.method == "FedBN" else None)
    state, round_fn = experiment.algorithm.init(data), jax.jit(experiment.algorithm.round)
    chosen = []
    for _ in range(n):
        state, metrics = round_fn(state, data.train)
        chosen.append(np.asarray(metrics["participants"]))
    stats = jax.jit(experiment.evaluate_splits)(state, data.train, [data.test])[0]
    return state, chosen, stats


# Sequential clients for every method (bit for bit); vmapped for one of each kind of state
# (shared components, personal models): the gather and scatter are the same.
CASES = [(m, 1) for m in COHORT_METHODS] + [(m, 0) for m in ("FedEM", "APFL")]


@pytest.mark.parametrize("method, client_chunk", CASES)
def test_cohort_rounds_equal_masked_rounds(tmp_path, method, client_chunk):
    """Sequential clients: bit for bit; all clients vmapped: to float32 rounding."""
    data = tiny_binary_data(sizes=(9, 14, 6, 11, 3, 8, 12), dim=5)
    masked = _run(_config(tmp_path, method, client_chunk=client_chunk), data)
    cohort = _run(_config(tmp_path, method, client_chunk=client_chunk, cohort=True), data)
    for a, b in zip(masked[1], cohort[1], strict=True):
        np.testing.assert_array_equal(a, b)  # the same clients, 3 of 7
        assert a.sum() == 3
    tolerance = dict(rtol=0, atol=0) if client_chunk == 1 else dict(rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(masked[0], cohort[0], **tolerance)
    chex.assert_trees_all_close(masked[2], cohort[2], **tolerance)
    if client_chunk == 1:  # the federation on the host (--federation host): the same, bit for bit
        host = _host_run(_config(tmp_path, method, client_chunk=1, cohort=True, federation="host"), data)
        assert all(isinstance(a, np.ndarray) for a in jax.tree.leaves(client_fields_of(host[0])))
        chex.assert_trees_all_equal(jax.device_get(cohort[0]), jax.device_get(host[0]))
        chex.assert_trees_all_equal(jax.device_get(cohort[2]), host[1])


def client_fields_of(state):
    return [getattr(state, name) for name in state.CLIENT_FIELDS]


def _host_run(cfg, data, n=3):
    """``(state, test stats)`` of ``n`` rounds with ``--federation host`` (client fields on the host)."""
    session = fedem_jax.Session(cfg, data, model=TinyBatchNormModel() if cfg.method == "FedBN" else None)
    for _ in range(n):
        session.step()
    session.evaluate()
    return session.state, session.final_stats[0][1]


def _rows(workdir):
    import json

    with open(workdir / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in ("seconds_per_round", "eval_seconds")} for r in rows]


def test_a_sweep_with_cohort_rounds_writes_the_masked_rows(tmp_path):
    """Through the command's path (fedem_jax.run, a sweep of seeds in groups): the same rows."""
    settings = dict(
        n_clients=20, dim=10, n_test_per_client=10, n_rounds=2, log_freq=1, plots=False, quiet=True,
        sampling_rate=0.25, seeds=[3, 4], checkpoint_every=0, tensorboard=False,
    )  # fmt: skip
    for name, cohort in (("masked", False), ("cohort", True)):
        cfg = fedem_jax.config("synthetic", workdir=str(tmp_path / name), cohort=cohort, **settings)
        fedem_jax.run(cfg, log=None)
    masked, cohort = _rows(tmp_path / "masked"), _rows(tmp_path / "cohort")
    assert len(masked) == len(cohort) == 6  # rounds 0, 1, 2 of two runs
    for a, b in zip(masked, cohort, strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            np.testing.assert_allclose(b[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(method="AFL", cohort=True, sampling_rate=0.5), "--cohort: AFL does not run cohort rounds"),
        (dict(cohort=True, sampling="poisson", sampling_rate=0.5), "--cohort needs --sampling fixed"),
        (dict(cohort=True, n_devices=2), "--cohort runs on one device"),
    ],
)
def test_cohort_settings_it_cannot_run_are_one_line_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        fedem_jax.config(**settings)
