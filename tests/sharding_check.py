"""Run by test_sharding.py in its own process, with 8 forced CPU devices (XLA_FLAGS set there)."""

import sys

import chex
import jax
import numpy as np
from helpers import tiny_binary_data, tiny_config
from jax.sharding import PartitionSpec

from fedem_jax.data.sharding import CLIENTS_AXIS, place, real_clients, shard_data
from fedem_jax.train import build


def run(cfg, data, n_devices, rounds=3):
    _, algo, layout = build(cfg, data, n_devices)
    mesh = layout["mesh"]
    if mesh is not None:
        data = shard_data(data, mesh)
    state = algo.init(data)
    if mesh is not None:
        state = state.replace(clients=place(state.clients, mesh, PartitionSpec(CLIENTS_AXIS)))
    round_fn = jax.jit(algo.round)
    participants = []
    for _ in range(rounds):
        state, metrics = round_fn(state, data.train)
        participants.append(real_clients(metrics["participants"], data.train, 13))
    stats = real_clients(jax.jit(algo.evaluate)(state, data.test), data.test, 13)
    pi = real_clients(state.clients.pi, data.train, 13)
    return state, pi, participants, stats, float(metrics["train_nll_start"])


def main(workdir):
    assert jax.device_count() == 8, jax.devices()
    data = tiny_binary_data(sizes=(7, 3, 12, 5, 9, 2, 6, 11, 4, 8, 3, 10, 5), dim=5)
    cfg = tiny_config(workdir, sampling_rate=0.5, batch_size=4, n_learners=3, client_chunk=1)
    one = run(cfg, data, 1)
    eight = run(cfg, data, 8)
    assert eight[0].params["Dense_0"]["kernel"].sharding.is_fully_replicated
    for a, b in zip(one[2], eight[2], strict=True):
        np.testing.assert_array_equal(a, b)  # identical client sampling
    chex.assert_trees_all_close(one[0].params, eight[0].params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(one[1], eight[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(one[3]["correct"], eight[3]["correct"])
    np.testing.assert_allclose(one[3]["loss_sum"], eight[3]["loss_sum"], rtol=1e-5)
    np.testing.assert_allclose(one[4], eight[4], rtol=1e-5)
    print("sharded run matches single-device run")


if __name__ == "__main__":
    main(sys.argv[1])
