"""The federation on the host or on disk, the cohort on the device (issue 25, parts 2, 4, 5)."""

import csv
import json
import os

import jax
import numpy as np
import pytest
from helpers import tiny_binary_data

import fedem_jax
from fedem_jax.algorithms import registry
from fedem_jax.algorithms.base import Context
from fedem_jax.data.federated import ClientSplit
from fedem_jax.data.store import (
    HostSplit,
    host_split,
    open_store,
    write_store,
    write_synthetic_store,
)
from fedem_jax.data.synthetic import generate_synthetic
from fedem_jax.errors import ConfigError, DataError
from fedem_jax.execution.cohort import gather_split
from fedem_jax.execution.host_rounds import CohortDraw, eval_clients, first_after_sorts

COHORT_METHODS = [
    m
    for m, info in registry.methods().items()
    if info.capabilities.cohort and not info.capabilities.full_participation
]


# ------------------------------------------------------------------------------ the store
def test_a_written_store_reads_back_the_federation_exactly(tmp_path):
    data = tiny_binary_data(sizes=(9, 14, 6), dim=5)
    store = open_store(write_store(data, str(tmp_path / "tiny"), model="linear"))
    assert store.model == "linear" and store.task == data.task and store.n_clients == 3
    for mine, theirs in ((store.train, data.train), (store.test, data.test)):
        assert isinstance(mine, HostSplit)
        whole = mine.gather(np.arange(3), mine.n_samples)
        for field in ("x", "y", "client_id", "offsets", "counts", "global_ids"):
            np.testing.assert_array_equal(
                getattr(whole, field), np.asarray(getattr(theirs, field)), err_msg=field
            )
    assert not os.path.exists(str(tmp_path / "tiny") + ".partial")
    with pytest.raises(DataError, match="exists"):
        write_store(data, str(tmp_path / "tiny"))


def test_the_synthetic_store_holds_the_synthetic_datasets_draws(tmp_path):
    """Written client by client, the same samples as ``--dataset synthetic`` (same seed)."""
    settings = dict(n_clients=12, dim=6, n_test_per_client=7, seed=5)
    folder = write_synthetic_store(str(tmp_path / "s"), log=lambda *_: None, **settings)
    store = open_store(folder)
    data, _ = generate_synthetic(**settings)
    for mine, theirs in ((store.train, data.train), (store.test, data.test)):
        np.testing.assert_array_equal(mine.gather(np.arange(12), mine.n_samples).x, np.asarray(theirs.x))
        np.testing.assert_array_equal(mine.y, np.asarray(theirs.y))
        np.testing.assert_array_equal(mine.counts, np.asarray(theirs.counts))
    np.testing.assert_array_equal(store.true_pi, data.true_pi)
    assert store.model == "linear"


def test_a_cohort_gathered_on_the_host_is_the_device_cohort():
    data = tiny_binary_data(sizes=(9, 14, 6, 11, 3, 8, 12), dim=5)
    host = host_split(data.train)
    idx = np.array([1, 4, 5])
    mine, theirs = host.gather(idx, 40), gather_split(data.train, jax.numpy.asarray(idx), 40)
    valid = np.asarray(theirs.client_id) < 3
    np.testing.assert_array_equal(mine.x[valid], np.asarray(theirs.x)[valid])
    for field in ("y", "client_id", "offsets", "counts", "global_ids"):
        theirs_field = np.where(valid, theirs.y, 0) if field == "y" else getattr(theirs, field)
        np.testing.assert_array_equal(getattr(mine, field), np.asarray(theirs_field), err_msg=field)
    assert mine.max_count == theirs.max_count == 14
    assert not mine.x[~valid].any()  # padding is zeros


def test_a_process_reads_only_the_blocks_it_is_given(tmp_path):
    """``--distributed``: ``read=`` blocks filled from the file as a full gather fills them, the
    other blocks' inputs left zero (their labels, ids and counts laid out all the same)."""
    folder = write_store(tiny_binary_data(sizes=(9, 14, 6, 11, 3, 8, 12), dim=5), str(tmp_path / "s"))
    train = open_store(folder).train
    idx, capacity = np.array([0, 2, 3, 5, 6]), 30
    whole, mine = train.gather(idx, capacity, 3), train.gather(idx, capacity, 3, read={1})
    np.testing.assert_array_equal(mine.x[capacity : 2 * capacity], whole.x[capacity : 2 * capacity])
    assert whole.x[:capacity].any() and not mine.x[:capacity].any() and not mine.x[2 * capacity :].any()
    for field in ("y", "client_id", "offsets", "counts", "global_ids"):
        np.testing.assert_array_equal(getattr(mine, field), getattr(whole, field), err_msg=field)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: os.remove(os.path.join(f, "federation.json")), "not a fedem_jax store"),
        (
            lambda f: np.save(os.path.join(f, "train_counts.npy"), np.array([1, 2, 3], np.int32)),
            "inconsistent",
        ),
        (lambda f: open(os.path.join(f, "test_y.npy"), "wb").close(), "cannot read the test split"),
        (lambda f: _edit_meta(f, format="other/1"), "not a fedem_jax.store/1 store"),
        (lambda f: _edit_meta(f, model="resnet999"), "unknown model 'resnet999'"),
        (lambda f: _edit_meta(f, task=None), "malformed"),
    ],
)
def test_a_damaged_store_is_refused_in_one_line(tmp_path, damage, message):
    folder = write_store(tiny_binary_data(), str(tmp_path / "s"))
    damage(folder)
    with pytest.raises(DataError, match=message):
        open_store(folder)


def _edit_meta(folder, **changes):
    path = os.path.join(folder, "federation.json")
    with open(path) as f:
        meta = json.load(f)
    meta.update(changes)
    with open(path, "w") as f:
        json.dump(meta, f)


@pytest.mark.parametrize("n_clients, k", [(1, 1), (7, 3), (1000, 100), (70000, 70)])
def test_the_host_draw_is_the_masked_rounds_draw(n_clients, k):
    """The NumPy sorts take the same clients as ``sample_participants`` (rounds past the self-check too)."""
    ctx = Context(None, None, None, 1, n_clients, k / n_clients, seed=3, data_seed=0, eval_chunk=8)
    draw = CohortDraw(ctx, k)
    assert draw.on_host  # this JAX: the fast path is the one checked here
    split = ClientSplit(
        None, None, None, None, np.zeros(n_clients, np.int32), np.arange(n_clients, dtype=np.int32)
    )
    for r in (0, 5, 17):
        expected = np.flatnonzero(np.asarray(ctx.participants(ctx.round_key(r), split)))
        np.testing.assert_array_equal(draw(r), expected)


def test_the_partial_last_sort_breaks_ties_as_a_stable_sort():
    rng = np.random.default_rng(0)
    rounds = rng.integers(0, 6, (2, 500)).astype(np.uint32)  # many equal keys
    order = np.arange(500)
    for bits in rounds:
        order = order[np.argsort(bits, kind="stable")]
    for k in (1, 37, 499, 500):
        np.testing.assert_array_equal(first_after_sorts(rounds, 500, k), order[:k])


def test_eval_clients_are_a_fixed_subset():
    assert np.array_equal(eval_clients(10, 0, 1), np.arange(10))
    assert np.array_equal(eval_clients(10, 10, 1), np.arange(10))
    subset = eval_clients(1000, 50, 1)
    assert len(np.unique(subset)) == 50 and np.all(np.diff(subset) > 0)
    assert np.array_equal(subset, eval_clients(1000, 50, 1)) and not np.array_equal(
        subset, eval_clients(1000, 50, 2)
    )


# ------------------------------------------------------------------------------ host rounds
# (host rounds == device cohort rounds, every method: tests/test_cohort.py)
SMALL = dict(
    n_clients=30, dim=8, n_test_per_client=10, n_rounds=4, log_freq=2, sampling_rate=0.2, cohort=True,
    plots=False, quiet=True, tensorboard=False, lr=0.1,
)  # fmt: skip


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in ("seconds_per_round", "eval_seconds")} for r in rows]


def _clients(workdir):
    with open(os.path.join(workdir, "clients.csv")) as f:
        return list(csv.DictReader(f))


def test_a_store_run_writes_what_the_generated_dataset_writes(tmp_path):
    """``--dataset store --federation host`` == ``--dataset synthetic`` (device cohort): rows, clients.csv."""
    folder = write_synthetic_store(str(tmp_path / "store"), n_clients=30, dim=8, n_test_per_client=10,
                                   log=lambda *_: None)  # fmt: skip
    fedem_jax.run(fedem_jax.config("synthetic", workdir=str(tmp_path / "device"), **SMALL), log=None)
    cfg = fedem_jax.config(
        "store", data_path=folder, federation="host", workdir=str(tmp_path / "host"), **SMALL
    )
    fedem_jax.run(cfg, log=None)
    assert _rows(tmp_path / "host") == _rows(tmp_path / "device")
    assert _clients(tmp_path / "host") == _clients(tmp_path / "device")


def test_eval_clients_reports_the_subset_with_their_own_figures(tmp_path):
    """Rows say how many clients were evaluated; their per-client figures are those of a full evaluation."""
    every = fedem_jax.config("synthetic", federation="host", workdir=str(tmp_path / "all"), **SMALL)
    fedem_jax.run(every, log=None)
    some = every.replace(workdir=str(tmp_path / "some"), eval_clients=7)
    fedem_jax.run(some, log=None)
    rows = _rows(tmp_path / "some")
    assert all(row["eval_clients"] == 7 for row in rows) and "eval_clients" not in _rows(tmp_path / "all")[0]
    full, subset = _clients(tmp_path / "all"), _clients(tmp_path / "some")
    assert len(subset) == 7
    assert subset == [full[int(row["client"])] for row in subset]
    ids = [int(row["client"]) for row in subset]
    assert ids == eval_clients(30, 7, every.training.seed).tolist()
    accuracy = sum(float(r["test_accuracy"]) * int(r["n_test"]) for r in subset) / sum(
        int(r["n_test"]) for r in subset
    )
    assert rows[-1]["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_a_host_run_ended_early_resumes_to_the_straight_runs_rows(tmp_path):
    """The checkpoint holds the host state: resumed, the run ends exactly as one that never stopped."""

    class EndAfterRound(fedem_jax.Callback):
        def after_round(self, session, metrics):
            if metrics["round"] == 1:
                session.end_early()

    cfg = fedem_jax.config(
        "synthetic", federation="host", workdir=str(tmp_path / "early"), checkpoint_every=10,
        client_momentum="persistent", **SMALL,
    )  # fmt: skip
    fedem_jax.run(cfg, callbacks=fedem_jax.default_callbacks(cfg) + [EndAfterRound()], log=None)
    assert os.listdir(tmp_path / "early" / "checkpoints") == ["1"]
    fedem_jax.run(cfg, log=None)
    fedem_jax.run(cfg.replace(workdir=str(tmp_path / "straight")), log=None)
    assert _rows(tmp_path / "early")[-1] == _rows(tmp_path / "straight")[-1]
    assert _clients(tmp_path / "early") == _clients(tmp_path / "straight")


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(federation="host"), "--federation host needs --cohort"),
        (dict(eval_clients=5), "--eval_clients needs --federation host"),
        (dict(federation="host", cohort=True, sampling_rate=0.5, seeds=[1, 2]), "one setting at a time"),
        (dict(federation="disk"), "--federation: unknown value 'disk'"),
        (dict(cohort=True, sampling_rate=0.5, distributed=True), "needs --federation host"),
    ],
)
def test_host_settings_it_cannot_run_are_one_line_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        fedem_jax.config(**settings)


def test_validation_and_unseen_clients_on_the_host_give_the_device_rows(tmp_path):
    """``--val_frac --validation --test_clients_frac``: the same rows (val and unseen_test metrics),
    the data held in memory and written to a store, evaluated a chunk at a time."""
    settings = dict(SMALL, val_frac=0.25, validation=True, test_clients_frac=0.2, unseen_em_iters=20)
    device = fedem_jax.config("synthetic", workdir=str(tmp_path / "device"), **settings)
    fedem_jax.run(device, log=None)
    host = device.replace(federation="host", workdir=str(tmp_path / "host"))
    fedem_jax.run(host, log=None)
    rows = _rows(tmp_path / "device")
    assert "val_accuracy" in rows[-1] and "unseen_test_accuracy" in rows[-1]
    assert _rows(tmp_path / "host") == rows
    data = fedem_jax.load_dataset(device)
    store = open_store(write_store(data, str(tmp_path / "store")))
    assert store.n_unseen == data.n_unseen == 6 and store.val.n_samples == data.val.n_samples
    np.testing.assert_array_equal(store.unseen_test.y, np.asarray(data.unseen_test.y))
    from_store = host.replace(dataset="store", data_path=str(tmp_path / "store"), workdir=str(tmp_path / "s"))
    fedem_jax.run(from_store, log=None)
    assert _rows(tmp_path / "s") == rows


def test_a_store_without_the_asked_split_is_refused(tmp_path):
    folder = write_store(tiny_binary_data(), str(tmp_path / "s"))
    cfg = fedem_jax.config("store", data_path=folder, val_frac=0.25, workdir=str(tmp_path / "run"))
    with pytest.raises(DataError, match="splits were fixed when written"):
        fedem_jax.load_dataset(cfg)
