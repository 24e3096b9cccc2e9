"""User-level DP (issue 26): clipping, noise, the estimator, Poisson sampling and the accountant."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_binary_data, tiny_config
from test_sweep import _check_runs_match_single_runs

import fedem_jax
import fedem_jax.main
from fedem_jax.algorithms import registry
from fedem_jax.algorithms.base import sample_participants
from fedem_jax.core.privacy import Mechanism
from fedem_jax.data import FederatedData, build_split
from fedem_jax.errors import ConfigError
from fedem_jax.training import accounting
from fedem_jax.training.experiment import build

dp_accounting = pytest.importorskip("dp_accounting")


def _mechanism(**changes):
    values = dict(clip=1.0, noise_multiplier=0.0, sensitivity_weight=1.0, rate=1.0)
    return Mechanism(**{**values, **changes})


def _tree(rng, scale):
    """Stacked ``[M=3, ...]`` leaves like a component state."""
    return {
        "Dense_0": {
            "kernel": jnp.asarray(scale * rng.normal(size=(3, 5, 2)), jnp.float32),
            "bias": jnp.asarray(scale * rng.normal(size=(3, 2)), jnp.float32),
        }
    }


def _component_norms(start, params):
    leaves = [
        np.asarray(p - s).reshape(3, -1) for s, p in zip(*map(jax.tree.leaves, (start, params)), strict=True)
    ]
    return np.sqrt(sum((leaf.astype(np.float64) ** 2).sum(1) for leaf in leaves))


@pytest.mark.parametrize("per_component", [False, True])
def test_clipping_bounds_every_update_and_keeps_its_direction(per_component):
    rng = np.random.default_rng(0)
    clip = _mechanism(clip=0.7, per_component=per_component).clip_update
    for scale in (0.01, 0.1, 1.0, 10.0):
        start, params = _tree(rng, 1.0), _tree(rng, scale)
        params = jax.tree.map(jnp.add, start, params)
        clipped = clip(start, params)
        norms, before = _component_norms(start, clipped), _component_norms(start, params)
        if per_component:
            assert np.all(norms <= 0.7 / math.sqrt(3) * (1 + 1e-5))
            want = np.minimum(before, 0.7 / math.sqrt(3))
        else:
            assert np.sqrt((norms**2).sum()) <= 0.7 * (1 + 1e-5)
            want = before * min(1.0, 0.7 / np.sqrt((before**2).sum()))
        np.testing.assert_allclose(norms, want, rtol=1e-5)
        for s, p, c in zip(*(jax.tree.leaves(t) for t in (start, params, clipped)), strict=True):
            ratio = np.asarray(c - s) / np.asarray(p - s)  # the same direction: a positive scale
            assert np.all(ratio > 0)


def test_an_update_within_the_bound_is_returned_bit_for_bit():
    rng = np.random.default_rng(1)
    start = _tree(rng, 1.0)
    params = jax.tree.map(lambda s, d: s + d, start, _tree(rng, 1e-3))
    clipped = _mechanism(clip=1e6).clip_update(start, params)
    for p, c in zip(jax.tree.leaves(params), jax.tree.leaves(clipped), strict=True):
        assert np.array_equal(np.asarray(p), np.asarray(c))


def test_every_client_update_of_a_round_is_clipped(tmp_path):
    """Through ClientUpdate.train: each client's contribution (weight 1 for it, 0 for the others)
    is its own update scaled to norm C, the same direction as without clipping."""
    data = tiny_binary_data(sizes=(12, 20, 7), dim=6)
    cfg = tiny_config(tmp_path, n_learners=2, lr=0.5)
    experiment = build(cfg, data)
    state = experiment.raw.init(data)
    update, clip = experiment.ctx.update, _mechanism(clip=0.05).clip_update
    every = jnp.ones((3,), bool)
    for c in range(3):
        weights = jnp.zeros((3,)).at[c].set(1.0)
        key = jax.random.PRNGKey(c)
        args = (state.clients, data.train, key, every)
        ones = jnp.ones((2, data.train.n_samples), jnp.float32)
        free = update.train(*args, start=state.params, weights=ones, agg_weights=weights).delta_sum
        bounded = update.train(
            *args, start=state.params, weights=ones, agg_weights=weights, clip=clip
        ).delta_sum
        norm = math.sqrt(sum(float(jnp.sum(d**2)) for d in jax.tree.leaves(bounded)))
        free_norm = math.sqrt(sum(float(jnp.sum(d**2)) for d in jax.tree.leaves(free)))
        assert free_norm > 0.05  # the bound bites
        assert norm == pytest.approx(0.05, rel=1e-4)
        for f, b in zip(jax.tree.leaves(free), jax.tree.leaves(bounded), strict=True):
            np.testing.assert_allclose(np.asarray(b), np.asarray(f) * 0.05 / free_norm, rtol=1e-4, atol=1e-7)


def test_noise_has_the_calibrated_standard_deviation():
    """``z C max_t w_t / q``: a factor sqrt(2) (or a missing 1/q) is far outside the tolerance."""
    mechanism = _mechanism(clip=0.8, noise_multiplier=1.7, sensitivity_weight=0.05, rate=0.25)
    zeros = {"a": jnp.zeros((200, 100)), "b": jnp.zeros((5000,))}
    noisy = mechanism.privatize(zeros, jax.random.PRNGKey(3))
    values = np.concatenate([np.asarray(v).ravel() for v in jax.tree.leaves(noisy)])
    want = 1.7 * 0.8 * 0.05 / 0.25
    assert values.std() == pytest.approx(want, rel=0.03)
    assert abs(values.mean()) < 4 * want / math.sqrt(values.size)
    assert not np.allclose(np.asarray(noisy["a"][0]), np.asarray(noisy["a"][1]))  # independent draws


def _synthetic(tmp_path, name, **settings):
    values = dict(
        dataset="synthetic", n_clients=12, dim=40, n_test_per_client=20, n_rounds=2, log_freq=1,
        workdir=str(tmp_path / name), quiet=True, plots=False, tensorboard=False, checkpoint_every=0,
    )  # fmt: skip
    return fedem_jax.config(**{**values, **settings})


def test_noise_in_a_round_is_added_to_the_sum_and_divided_by_q(tmp_path):
    """Two rounds from the same start, noise off and on: the components differ by the noise alone,
    of standard deviation ``z C / (N q)`` (uniform weights) times the server's learning rate 1."""
    common = dict(dp_clip=0.5, sampling="poisson", sampling_rate=0.5, n_rounds=1, dim=300)
    quiet = fedem_jax.Session(_synthetic(tmp_path, "a", noise_multiplier=0.0, **common))
    noisy = fedem_jax.Session(_synthetic(tmp_path, "b", noise_multiplier=2.0, **common))
    quiet.step(), noisy.step()
    pairs = zip(jax.tree.leaves(noisy.state.params), jax.tree.leaves(quiet.state.params), strict=True)
    difference = np.concatenate([np.asarray(a - b).ravel() for a, b in pairs])
    assert difference.std() == pytest.approx(2.0 * 0.5 / 12 / 0.5, rel=0.1)


SPLIT = {"FedPer": {"head": "Dense_0/bias"}, "FedRep": {"head": "Dense_0/bias"}}


@pytest.mark.parametrize("method", ["FedEM", "FedPer", "FedRep", "Ditto", "APFL"])
def test_without_noise_and_clipping_the_run_is_the_non_private_one(tmp_path, method):
    """Noise 0, a bound no update reaches, the paper's weights and everyone every round: the same
    rows, bit for bit, as without --dp_clip (and epsilon reported as infinite)."""
    data = tiny_binary_data(sizes=(9, 14, 6, 11), dim=5)
    learners = 2 if method == "FedEM" else 1
    plain = tiny_config(
        tmp_path / "plain", n_rounds=3, method=method, n_learners=learners, **SPLIT.get(method, {})
    )
    private = plain.replace(workdir=str(tmp_path / "dp"), dp_clip=1e9, noise_multiplier=0.0,
                            dp_weighting="samples", sampling="poisson")  # fmt: skip
    rows = {}
    for name, cfg in (("plain", plain), ("dp", private)):
        fedem_jax.run(cfg, data=data, log=lambda *_: None)
        with open(tmp_path / name / "metrics.jsonl") as f:
            rows[name] = [json.loads(line) for line in f]
    drop = ("seconds_per_round", "eval_seconds", "epsilon_spent")
    for a, b in zip(rows["plain"], rows["dp"], strict=True):
        assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    assert [r["epsilon_spent"] for r in rows["dp"]] == [0.0, math.inf, math.inf, math.inf]


@pytest.mark.parametrize("method", ["FedPer", "FedRep"])
def test_split_methods_clip_and_noise_the_body_only(tmp_path, method):
    """Only the shared body is sent: the server's body moves by the clipped average plus noise, its
    head (never sent, never used) stays; with everyone clipped hard, the body's move is
    ``sum_t w_t clip(Delta_t) + noise`` of norm about ``C`` at most plus the noise."""
    data = tiny_binary_data(sizes=(9, 14, 6, 11), dim=5)
    cfg = tiny_config(tmp_path, n_rounds=1, method=method, n_learners=1, dp_clip=1e-3, noise_multiplier=0.0,
                      **SPLIT[method])  # fmt: skip
    session = fedem_jax.Session(cfg, data)
    start = jax.tree.map(np.asarray, session.build().state.global_model)
    session.step()
    end = jax.tree.map(np.asarray, session.state.global_model)
    assert np.array_equal(end["Dense_0"]["bias"], start["Dense_0"]["bias"])  # the head
    body_move = np.linalg.norm(end["Dense_0"]["kernel"] - start["Dense_0"]["kernel"])
    assert 0 < body_move <= 1e-3 * (1 + 1e-5)  # an average of updates each clipped to 1e-3
    noisy = fedem_jax.Session(cfg.replace(noise_multiplier=5.0), data)
    noisy.step()
    moved = np.asarray(noisy.state.global_model["Dense_0"]["kernel"]) - start["Dense_0"]["kernel"]
    quiet_move = end["Dense_0"]["kernel"] - start["Dense_0"]["kernel"]
    assert np.abs(moved - quiet_move).min() > 0  # noise on every body coordinate
    assert np.array_equal(np.asarray(noisy.state.global_model["Dense_0"]["bias"]), start["Dense_0"]["bias"])


@pytest.mark.parametrize("method", ["Ditto", "APFL", "pFedMe-true"])
def test_the_global_model_is_clipped_and_the_personal_ones_kept(tmp_path, method):
    """Only the global model leaves a client (Ditto's, APFL's and pFedMe-true's ``w``): its move is
    an average of updates clipped to ``C``; the personal models (``v``; APFL's ``alpha``;
    pFedMe-true's ``theta``) are trained exactly as without DP (they never leave)."""
    data = tiny_binary_data(sizes=(9, 14, 6, 11), dim=5)
    cfg = tiny_config(tmp_path, n_rounds=1, method=method, n_learners=1)
    plain = fedem_jax.Session(cfg, data)
    plain.step()
    private = fedem_jax.Session(cfg.replace(dp_clip=1e-3, noise_multiplier=0.0), data)
    start = jax.tree.map(np.asarray, private.build().state.global_model)
    private.step()
    for a, b in zip(jax.tree.leaves(plain.state.params), jax.tree.leaves(private.state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    pairs = zip(jax.tree.leaves(private.state.global_model), jax.tree.leaves(start), strict=True)
    move = math.sqrt(sum(float(((np.asarray(end) - begin) ** 2).sum()) for end, begin in pairs))
    assert 0 < move <= 1e-3 * (1 + 1e-5)


def test_poisson_sampling_is_independent_per_client_and_layout_free():
    ids = jnp.arange(40, dtype=jnp.int32)
    split = build_split([np.zeros((1, 1), np.float32)] * 40, [np.zeros(1, np.int32)] * 40)
    counts = []
    for r in range(300):
        key = jax.random.fold_in(jax.random.PRNGKey(0), r)
        chosen = sample_participants(key, split, 40, 0.2, "poisson")
        counts.append(int(chosen.sum()))
        block = split.replace(global_ids=ids[20:], counts=split.counts[20:])
        assert np.array_equal(sample_participants(key, block, 40, 0.2, "poisson"), chosen[20:])
    counts = np.array(counts)
    assert counts.mean() == pytest.approx(8, rel=0.05)  # q N
    assert counts.var() == pytest.approx(40 * 0.2 * 0.8, rel=0.25)  # binomial, not a fixed size
    assert counts.min() < 8 < counts.max()


def test_an_empty_cohort_is_noise_only(tmp_path):
    data = tiny_binary_data(sizes=(9, 14, 6), dim=5)
    cfg = tiny_config(tmp_path, n_rounds=1, dp_clip=1.0, noise_multiplier=1.0, sampling="poisson",
                      sampling_rate=1e-6)  # fmt: skip
    session = fedem_jax.Session(cfg, data)
    start = jax.tree.map(np.asarray, session.build().state.params)
    session.step()
    assert np.all(session.pi == 0.5)  # nobody took part: every pi kept
    pairs = zip(jax.tree.leaves(session.state.params), jax.tree.leaves(start), strict=True)
    moved = [np.asarray(p) - s for p, s in pairs]
    assert all(np.all(np.isfinite(m)) for m in moved) and any(np.abs(m).max() > 0 for m in moved)


def test_accountant_agrees_with_dp_accounting():
    """Our figures are dp-accounting's for the same composed event (built here independently),
    for DP-SGD- and DP-FedAvg-like settings; PLD is never looser than RDP."""
    for q, z, rounds, delta in (
        (0.01, 4.0, 10000, 1e-5),
        (100 / 763430, 1.0, 3000, 1e-9),
        (0.1, 1.2, 200, 1e-4),
    ):
        event = dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds
        )
        rdp = dp_accounting.rdp.RdpAccountant()
        rdp.compose(event)
        assert accounting.epsilon("rdp", q, z, rounds, delta) == pytest.approx(
            rdp.get_epsilon(delta), rel=1e-9
        )
        assert accounting.epsilon("pld", q, z, rounds, delta) <= rdp.get_epsilon(delta) * (1 + 1e-6)
    full = dp_accounting.rdp.RdpAccountant()
    full.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(3.0), 50))
    assert accounting.epsilon("rdp", 1.0, 3.0, 50, 1e-5) == pytest.approx(full.get_epsilon(1e-5), rel=1e-9)
    assert accounting.epsilon("rdp", 0.1, 1.0, 0, 1e-5) == 0.0


def test_the_accountants_excluded_order_warnings_stay_off_the_terminal(caplog):
    """At q = 0.1 the RDP accountant logs one "failed to converge" warning per small order it
    leaves out; a library caller should not get dozens of them. Other absl records still pass."""
    import logging

    with caplog.at_level(logging.WARNING, logger="absl"):
        z = accounting.calibrate("rdp", 0.1, 200, 8.0, 5.2e-4)
        assert accounting.epsilon("rdp", 0.1, z, 200, 5.2e-4) <= 8.0 * (1 + 1e-9)
        logging.getLogger("absl").warning("another absl record")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["another absl record"]
    raw = dp_accounting.rdp.RdpAccountant()
    with caplog.at_level(logging.WARNING, logger="absl"):
        raw.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(z)))
    assert any("failed to converge" in r.getMessage() for r in caplog.records)  # the filter is ours


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_calibration_meets_the_target_and_no_less_noise_does(kind):
    z = accounting.calibrate(kind, 0.2, 50, 2.0, 1e-5)
    assert accounting.epsilon(kind, 0.2, z, 50, 1e-5) <= 2.0 * (1 + 1e-9)
    assert accounting.epsilon(kind, 0.2, 0.98 * z, 50, 1e-5) > 2.0


def test_the_command_reports_epsilon_per_row_and_in_the_summary(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = fedem_jax.main.main([
        "--n_clients", "20", "--dim", "20", "--n_test_per_client", "10", "--n_rounds", "4", "--log_freq", "2",
        "--dp_epsilon", "3", "--dp_delta", "1e-5", "--dp_clip", "1.0", "--sampling", "poisson",
        "--sampling_rate", "0.5", "--workdir", str(workdir), "--quiet", "--plots", "false",
    ])  # fmt: skip
    assert code in (0, None)
    with open(workdir / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    with open(workdir / "summary.json") as f:
        summary = json.load(f)
    z = summary["privacy"]["dp_noise_multiplier"]
    for row in rows:
        assert row["epsilon_spent"] == pytest.approx(accounting.epsilon("rdp", 0.5, z, row["round"], 1e-5))
    assert summary["epsilon_spent"] == rows[-1]["epsilon_spent"] <= 3.0
    assert summary["epsilon_spent"] > 2.9  # the whole budget used by the last round
    assert f"epsilon {summary['epsilon_spent']:.3g} at delta 1e-05, " in capsys.readouterr().out


def test_a_sweep_of_seeds_with_dp_gives_each_run_its_single_run(tmp_path):
    """Each seed draws its own noise and cohorts (the round key is the run's)."""
    _check_runs_match_single_runs(
        tmp_path, tiny_binary_data(), lambda n: range(n), seed=[1, 2], dp_clip=0.3, noise_multiplier=0.8,
        sampling="poisson", sampling_rate=0.7,
    )  # fmt: skip


def test_a_dp_sweep_over_pfedme_true_beta_gives_each_run_its_single_run(tmp_path):
    """pFedMe-true's private server step scales the noised sum by ``beta``, traced in a sweep."""
    _check_runs_match_single_runs(
        tmp_path, tiny_binary_data(), lambda n: range(n), method="pFedMe-true", n_learners=1,
        beta=[1.0, 0.5], dp_clip=0.3, noise_multiplier=0.8,
    )  # fmt: skip


def test_methods_declare_dp_and_the_others_refuse_it_in_one_line():
    supported = [m for m in registry.methods() if registry.get(m).capabilities.dp]
    shared = {"FedEM", "FedAvg", "FedProx", "FedAdam", "FedYogi", "FedAvg+"}
    assert set(supported) == shared | {"FedPer", "FedRep", "FedBN", "Ditto", "APFL", "pFedMe-true"}
    for name in registry.methods():
        if name in supported:
            fedem_jax.config(method=name, dp_clip=1.0, noise_multiplier=1.0)
            continue
        with pytest.raises(ConfigError, match=f"--dp_clip: {name} does not support") as err:
            fedem_jax.config(method=name, dp_clip=1.0, noise_multiplier=1.0)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(dp_epsilon=3.0), "DP is off"),
        (dict(dp_clip=1.0), "--dp_epsilon .* or --noise_multiplier"),
        (dict(dp_clip=1.0, dp_epsilon=3.0, noise_multiplier=1.0), "one of the two"),
        (dict(dp_clip=1.0, noise_multiplier=1.0, sampling_rate=0.5), "needs --sampling poisson"),
        (dict(dp_clip=1.0, noise_multiplier=1.0, dp_delta=1.0), "--dp_delta must be in"),
        (dict(dp_clip=-1.0), "--dp_clip must be >= 0"),
        (dict(dp_clip=1.0, noise_multiplier=1.0, dp_weighting="size"), "--dp_weighting: unknown value"),
        (dict(method="SCAFFOLD", sampling="poisson"), "fixed-size sampling only"),
    ],
)
def test_bad_dp_settings_are_one_line_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        fedem_jax.config(**settings)


def test_federation_data_is_unchanged_by_dp(tmp_path):
    """DP needs nothing of the data but the clients' sizes: the weights use them, nothing else."""
    xs = [np.ones((n, 2), np.float32) for n in (3, 9)]
    ys = [np.zeros(n, np.int32) for n in (3, 9)]
    data = FederatedData("two", build_split(xs, ys), build_split(xs, ys), tiny_binary_data().task)
    cfg = tiny_config(tmp_path, dp_clip=1.0, noise_multiplier=1.0, dp_weighting="samples")
    plan = accounting.plan(cfg, data.train.counts)
    assert plan.mechanism.sensitivity_weight == pytest.approx(9 / 12)
    assert plan.delta == pytest.approx(1 / 2**1.1)


def test_a_private_run_ended_early_resumes_to_the_same_rows_and_epsilon(tmp_path):
    """The noise and the cohorts come from the round's key: a run resumed from its checkpoint
    draws what an uninterrupted one draws, and reports the same epsilon."""
    from test_api import ended_early_and_straight

    settings = dict(
        n_clients=12, dim=10, n_test_per_client=10, n_rounds=3, log_freq=1, plots=False, quiet=True,
        dp_clip=0.2, dp_epsilon=4.0, sampling="poisson", sampling_rate=0.5,
    )  # fmt: skip
    rows, want, resumed, straight = ended_early_and_straight(tmp_path, settings, 1)
    assert resumed["epsilon_spent"] == straight["epsilon_spent"] <= 4.0
    assert rows == want


# ------------------------------------------------------------------------------ adaptive clipping
def test_the_clip_moves_geometrically_toward_the_quantile():
    """``C exp(-eta ((count + sigma_b N(0, 1)) / m - gamma))``, the normal drawn from ``key``."""
    mechanism = _mechanism(quantile=0.6, clip_lr=0.3, count_noise=2.0, expected_cohort=25.0)
    key = jax.random.PRNGKey(11)
    normal = float(jax.random.normal(key, ()))
    want = 0.8 * math.exp(-0.3 * ((17 + 2.0 * normal) / 25.0 - 0.6))
    assert float(mechanism.next_clip(jnp.float32(0.8), jnp.float32(17), key)) == pytest.approx(want, rel=1e-6)


def test_the_update_pays_for_the_count_with_more_noise():
    """Andrew et al. (2021), Theorem 1: ``z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``, and the
    noise added to the sum has that multiplier times this round's clip."""
    mechanism = _mechanism(noise_multiplier=1.7, sensitivity_weight=0.05, rate=0.25, quantile=0.5,
                           count_noise=3.0)  # fmt: skip
    z_update = (1.7**-2 - 6.0**-2) ** -0.5
    assert mechanism.update_noise_multiplier == pytest.approx(z_update)
    assert _mechanism(noise_multiplier=1.7).update_noise_multiplier == 1.7  # a fixed clip: z itself
    zeros = {"a": jnp.zeros((200, 100)), "b": jnp.zeros((5000,))}
    noisy = mechanism.privatize(zeros, jax.random.PRNGKey(3), jnp.float32(0.4))
    values = np.concatenate([np.asarray(v).ravel() for v in jax.tree.leaves(noisy)])
    assert values.std() == pytest.approx(z_update * 0.4 * 0.05 / 0.25, rel=0.03)


def _adaptive_round(tmp_path, name, clip, method):
    """One round with the count exact (no noise: z = 0, sigma_b ~ 0): ``(state, metrics)``."""
    adaptive = dict(dp_clip_quantile=0.25, dp_clip_lr=0.5, dp_clip_count_noise=1e-9)
    cfg = _synthetic(tmp_path, name, dp_clip=clip, noise_multiplier=0.0, method=method, **adaptive,
                     **SPLIT.get(method, {}))  # fmt: skip
    session = fedem_jax.Session(cfg)
    metrics = session.step()
    return session.state, metrics


@pytest.mark.parametrize("method", ["FedEM", "FedRep", "Ditto", "APFL", "pFedMe-true"])
def test_the_round_counts_the_updates_within_the_clip(tmp_path, method):
    """All 12 clients' updates within a huge clip: ``b = 1``; none within a tiny one: ``b = 0``
    (FedRep: the body's updates; Ditto, APFL and pFedMe-true: the global model's). Each round
    reports the clip it used."""
    big, metrics = _adaptive_round(tmp_path, "big", 1e6, method)
    assert float(big.dp_clip) == pytest.approx(1e6 * math.exp(-0.5 * (1 - 0.25)), rel=1e-5)
    tiny, _ = _adaptive_round(tmp_path, "tiny", 1e-6, method)
    assert float(tiny.dp_clip) == pytest.approx(1e-6 * math.exp(0.5 * 0.25), rel=1e-5)
    assert metrics["dp_clip"] == pytest.approx(1e6)  # the clip this round used


def test_an_adaptive_run_resumes_with_its_clip(tmp_path):
    """The clip is part of the checkpointed state: resumed rows (clip included) are the straight run's."""
    from test_api import ended_early_and_straight

    settings = dict(
        n_clients=12, dim=10, n_test_per_client=10, n_rounds=3, log_freq=1, plots=False, quiet=True,
        dp_clip=0.2, noise_multiplier=0.5, sampling="poisson", sampling_rate=0.5, dp_clip_quantile=0.5,
        dp_clip_count_noise=1.0,
    )  # fmt: skip
    rows, want, _, _ = ended_early_and_straight(tmp_path, settings, 1)
    assert rows == want and len({r["dp_clip"] for r in rows[1:]}) == 3  # it moved every round


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(dp_clip_quantile=0.5), "DP is off"),
        (dict(dp_clip=1.0, noise_multiplier=1.0, dp_clip_quantile=1.0), "--dp_clip_quantile must be in"),
        (dict(dp_clip=1.0, noise_multiplier=1.0, dp_clip_quantile=0.5, dp_per_component=True), "jointly"),
        (dict(dp_clip=1.0, noise_multiplier=1.0, dp_clip_count_noise=0.0), "--dp_clip_count_noise must be"),
    ],
)
def test_bad_adaptive_clipping_settings_are_one_line_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        fedem_jax.config(**settings)


def test_a_method_without_adaptive_clipping_refuses_it_in_one_line():
    """A method of one's own declaring ``dp`` but not ``dp_adaptive`` keeps a fixed clip."""
    fedavg = registry.get("FedAvg")
    fixed = fedem_jax.Method("FixedClipAvg", fedavg.factory, "FedAvg, fixed clip", fedavg.hyperparams,
                             registry.Capabilities(dp=True))  # fmt: skip
    fedem_jax.register(fixed)
    try:
        with pytest.raises(ConfigError, match="FixedClipAvg keeps a fixed clip"):
            fedem_jax.config(method="FixedClipAvg", dp_clip=1.0, noise_multiplier=1.0, dp_clip_quantile=0.5)
        with pytest.raises(ConfigError, match="SCAFFOLD does not support"):  # DP itself first
            fedem_jax.config(method="SCAFFOLD", dp_clip=1.0, noise_multiplier=1.0, dp_clip_quantile=0.5)
    finally:
        fedem_jax.unregister("FixedClipAvg")


def test_a_count_noise_too_small_for_the_noise_multiplier_is_refused(tmp_path):
    cfg = _synthetic(tmp_path, "small", dp_clip=1.0, noise_multiplier=3.0, dp_clip_quantile=0.5,
                     sampling="poisson", sampling_rate=0.5, dp_clip_count_noise=1.0)  # fmt: skip
    with pytest.raises(ConfigError, match="must exceed half the noise multiplier"):
        accounting.plan(cfg, np.ones(12))
