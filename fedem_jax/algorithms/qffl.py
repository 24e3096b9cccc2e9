"""q-FFL / q-FedAvg: fair resource allocation in federated learning (Li, Sanjabi, Beirami and Smith,
ICLR 2020, Algorithm 3), the update as published.

Each participating client ``k`` starts from ``w``, measures its loss ``F_k = F_k(w)`` (mean
training loss) and runs the local epochs to ``w_k``. With ``L = 1 / lr`` (the client's current
learning rate) and ``Delta w_k = L (w - w_k)``:

    Delta_k = F_k^q Delta w_k,     h_k = q F_k^(q-1) ||Delta w_k||^2 + L F_k^q,
    w <- w - sum_k Delta_k / sum_k h_k.

``q = 0`` is FedAvg with uniform client weights; larger ``q`` weights high-loss clients more.
The reference's version of this update was always zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedem_jax.algorithms.common import all_finite, client_means, round_key, shared_sample_losses
from fedem_jax.algorithms.fedem import FedEM, FedEMState, sample_participants
from fedem_jax.core import aggregation
from fedem_jax.core.local import LocalTrainer
from fedem_jax.data.federated import ClientSplit


def make_qffl(
    trainer: LocalTrainer, fedavg: FedEM, *, seed: int, sampling_rate: float, q: float, eval_chunk: int
) -> FedEM:
    """Built on ``fedavg`` (its initial state, evaluation and unseen-client evaluation)."""

    def round_fn(state: FedEMState, train: ClientSplit):
        key = round_key(seed, state.round)
        participates = sample_participants(key, train, 0, sampling_rate)
        losses = client_means(shared_sample_losses(trainer, state.params, train, eval_chunk)[0], train)
        losses = jnp.maximum(losses, 1e-10)
        lipschitz = 1.0 / trainer.schedule(state.clients.epochs_done)  # [C]
        scaled = jnp.where(participates, lipschitz * losses**q, 0.0)  # L F^q
        ones = jnp.ones((1, train.y.shape[0]), jnp.float32)
        result = trainer.train_clients(
            state.params, state.clients.opt_state, state.clients.epochs_done, ones, participates,
            scaled, jax.random.fold_in(key, 1), train,
        )  # fmt: skip
        # result.delta_sum = sum_k L F_k^q (w_k - w) = -sum_k Delta_k
        curvature = q * losses ** (q - 1) * lipschitz**2 * result.delta_sq_norm if q else 0.0
        h = jnp.where(participates, curvature + scaled, 0.0)
        step = jax.tree.map(lambda d: d / jnp.sum(h).astype(d.dtype), result.delta_sum)
        params = aggregation.apply_delta(state.params, step)
        clients = state.clients.replace(opt_state=result.opt_states, epochs_done=result.epochs_done)
        metrics = {
            "train_nll_start": jnp.sum(losses * train.counts) / jnp.sum(train.counts),
            "params_finite": all_finite(params),
            "participants": participates,
        }
        return FedEMState(params, clients, state.round + 1, state.server), metrics

    return fedavg._replace(round=round_fn)
