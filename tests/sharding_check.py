"""Run by test_sharding.py in its own process, with 8 forced CPU devices (XLA_FLAGS set there):
every registered method, sharded over the ``clients`` mesh, matches its single-device run."""

import sys

import chex
import jax
import numpy as np
from helpers import TinyBatchNormModel, tiny_binary_data, tiny_config

from fedem_jax.algorithms import registry
from fedem_jax.algorithms.base import place_state
from fedem_jax.data.sharding import real_clients, shard_data
from fedem_jax.training.experiment import build
from fedem_jax.training.session import Session

N_CLIENTS = 13


def run(cfg, data, n_devices, rounds=2):
    needs_batch_norm = cfg.method == "FedBN"
    experiment = build(cfg, data, n_devices, model=TinyBatchNormModel() if needs_batch_norm else None)
    algo, layout = experiment.algorithm, experiment.layout
    if layout.mesh is not None:
        data = shard_data(data, layout.mesh)
    state = place_state(algo.init(data), layout)
    round_fn = jax.jit(algo.round)
    participants, metrics = [], {}
    for _ in range(rounds):
        state, metrics = round_fn(state, data.train)
        participants.append(real_clients(metrics["participants"], data.train, N_CLIENTS))
    stats = real_clients(
        jax.jit(experiment.evaluate_splits)(state, data.train, [data.test])[0], data.test, N_CLIENTS
    )
    pi = real_clients(state.clients.pi, data.train, N_CLIENTS)
    scalars = {k: float(v) for k, v in metrics.items() if k != "participants"}
    return state, pi, participants, stats, scalars


def method_config(workdir, method):
    caps = registry.get(method).capabilities
    rate = 1.0 if caps.full_participation else 0.5
    learners = 3 if caps.components else 1
    extra = {
        "clustered": {"tol_1": 10.0, "tol_2": 0.01},  # so that clusters split
        "FedPer": {"head": "Dense_0/bias"},  # the linear model's one layer: split inside it
        "FedRep": {"head": "Dense_0/bias"},
    }.get(method, {})
    return tiny_config(
        workdir, method=method, sampling_rate=rate, batch_size=4, n_learners=learners, client_chunk=1, **extra
    )


def check(method, one, eight):
    for a, b in zip(one[2], eight[2], strict=True):
        np.testing.assert_array_equal(a, b)  # identical client sampling
    chex.assert_trees_all_close(one[1], eight[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(one[3]["correct"], eight[3]["correct"])
    np.testing.assert_allclose(one[3]["loss_sum"], eight[3]["loss_sum"], rtol=1e-5, atol=1e-6)
    assert one[4].keys() == eight[4].keys(), method
    for key, value in one[4].items():
        np.testing.assert_allclose(eight[4][key], value, rtol=1e-5, atol=1e-6, err_msg=f"{method} {key}")


def host_cohorts(cfg, data, n_devices, rounds=2):
    """``--federation host`` cohort rounds on ``n_devices``: (pi, test stats) in federation order."""
    cfg = cfg.replace(cohort=True, federation="host", n_devices=n_devices)
    session = Session(cfg, data, model=TinyBatchNormModel() if cfg.method == "FedBN" else None)
    for _ in range(rounds):
        session.step()
    session.evaluate()
    assert session.experiment.layout.n_devices == n_devices
    return session.state.clients.pi, session.final_stats[0][1]


def check_host_cohorts(method, masked, host):
    """The masked rounds on one device == cohort rounds gathered on the host and sharded."""
    chex.assert_trees_all_close(masked[1], host[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(masked[3]["correct"], host[1]["correct"])
    np.testing.assert_allclose(masked[3]["loss_sum"], host[1]["loss_sum"], rtol=1e-5, atol=1e-6)


def main(workdir):
    assert jax.device_count() == 8, jax.devices()
    data = tiny_binary_data(sizes=(7, 3, 12, 5, 9, 2, 6, 11, 4, 8, 3, 10, 5), dim=5)
    methods = sys.argv[2].split(",") if len(sys.argv) > 2 else list(registry.methods())
    for method in methods:
        cfg = method_config(workdir, method)
        one, eight = run(cfg, data, 1), run(cfg, data, 8)
        check(method, one, eight)
        if method == "FedEM":
            assert eight[0].params["Dense_0"]["kernel"].sharding.is_fully_replicated
            chex.assert_trees_all_close(one[0].params, eight[0].params, rtol=1e-5, atol=1e-6)
        print(f"{method}: sharded run matches single-device run", flush=True)
        caps = registry.get(method).capabilities
        if caps.cohort and not caps.full_participation:
            check_host_cohorts(method, one, host_cohorts(cfg, data, 8))
            print(f"{method}: host cohorts on 8 devices match the masked rounds", flush=True)
        if method == "FedEM":  # DP: clipping in the blocks, one noise draw after the sum
            cfg = cfg.replace(dp_clip=0.05, noise_multiplier=1.0, sampling="poisson")
            one, eight = run(cfg, data, 1), run(cfg, data, 8)
            check(method, one, eight)
            shared = "global_model" if method == "FedRep" else "params"  # the noised model
            chex.assert_trees_all_close(
                getattr(one[0], shared), getattr(eight[0], shared), rtol=1e-5, atol=1e-6
            )
            print(f"{method} with DP: sharded run matches single-device run", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
