"""Centralized FedEM (Marfoq et al., "Federated Multi-Task Learning under a Mixture of
Distributions", NeurIPS 2021, Algorithm 1). FedAvg is the ``n_learners == 1`` case.

``make_fedem(...)`` returns pure ``init``, ``round`` and ``evaluate`` functions:

- ``init(data) -> FedEMState``
- ``round(state, train_split) -> (state, metrics)``: client sampling, E-step, ``pi`` update,
  local epochs of every learner on every sampled client, and the server aggregation; compiled
  once with ``jax.jit``.
- ``evaluate(state, split) -> per-client (correct, loss_sum, count)`` of the mixture prediction.

Randomness: the round key is ``fold_in(fold_in(seed, 1), round)``; client sampling uses
``fold_in(round_key, 0)`` and client ``c``'s shuffles ``fold_in(fold_in(round_key, 1), c)`` with
``c`` the global client index, so results do not depend on the client layout, chunk size or
number of devices. All learners of a client see the
same batches, so there are no per-learner keys.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from fedem_jax.algorithms.common import all_finite, broadcast_to_clients, shared_sample_losses
from fedem_jax.core import aggregation, mixture
from fedem_jax.core.local import LocalTrainer
from fedem_jax.core.tasks import Task
from fedem_jax.data.federated import ClientSplit
from fedem_jax.data.sharding import CLIENTS_AXIS
from fedem_jax.models import init_stacked_params
from fedem_jax.pretrained import apply_weights


@flax.struct.dataclass
class ClientState:
    """Per-client state, leading axis ``[C]``."""

    pi: jax.Array  # [C, M] mixture weights
    opt_state: object  # optimizer state, leaves [C, M, ...] (SGD momentum survives rounds)
    epochs_done: jax.Array  # [C] local epochs done: the clock of the lr schedule


@flax.struct.dataclass
class FedEMState:
    params: object  # global components, leaves [M, ...]
    clients: ClientState
    round: jax.Array  # scalar int32: rounds completed
    server: object = None  # method-specific server state (AFL: lambda)


class FedEM(NamedTuple):
    """An algorithm's pure functions. The loop evaluates with
    ``evaluate(prepare_eval(state, train_split), split)``; ``prepare_eval`` is the identity except
    for methods that adapt models before evaluating (FedAvg+ fine-tunes a copy)."""

    init: object
    round: object
    evaluate: object
    evaluate_unseen: object
    prepare_eval: object = None


def n_sampled_clients(n_clients: int, sampling_rate: float) -> int:
    """Exactly ``max(1, round(rate * C))`` clients take part in each round."""
    return max(1, min(n_clients, int(round(sampling_rate * n_clients))))


def sample_participants(round_key, train: ClientSplit, n_real_clients: int, sampling_rate: float):
    """``[C]`` booleans: exactly ``n_sampled_clients`` real clients, drawn by their global index
    with ``fold_in(round_key, 0)``, so the draw is the same on any number of devices."""
    n_clients = n_real_clients or train.counts.shape[0]
    order = jax.random.permutation(jax.random.fold_in(round_key, 0), n_clients)
    rank = jnp.zeros((n_clients,), jnp.int32).at[order].set(jnp.arange(n_clients, dtype=jnp.int32))
    real = train.global_ids < n_clients
    chosen = rank[jnp.minimum(train.global_ids, n_clients - 1)] < n_sampled_clients(n_clients, sampling_rate)
    return real & chosen


def make_fedem(
    model,
    task: Task,
    trainer: LocalTrainer,
    *,
    n_learners: int,
    sampling_rate: float,
    eval_chunk: int,
    seed: int,
    mesh: Mesh | None = None,
    n_real_clients: int = 0,
    init_weights: dict | None = None,
) -> FedEM:
    """Build FedEM's pure functions; all arguments are static (closed over).

    With a ``mesh``, the client axis is sharded over its ``clients`` axis (data laid out by
    :func:`fedem_jax.data.sharding.shard_data`; ``n_real_clients`` is the federation's size
    without padding): each device runs its clients and the aggregation is an all-reduce.
    """
    base_key = jax.random.PRNGKey(seed)

    def init(data) -> FedEMState:
        n_clients = data.n_clients
        params = init_stacked_params(model, jax.random.fold_in(base_key, 0), data.train.x[:1], n_learners)
        if init_weights:  # --init_from: the file's leaves in every component
            params, _ = apply_weights(params, init_weights)
        one_client = trainer.direction.init(params)
        opt_state = broadcast_to_clients(one_client, n_clients)
        clients = ClientState(
            pi=jnp.full((n_clients, n_learners), 1.0 / n_learners, jnp.float32),
            opt_state=opt_state,
            epochs_done=jnp.zeros((n_clients,), jnp.int32),
        )
        return FedEMState(params=params, clients=clients, round=jnp.zeros((), jnp.int32))

    def per_sample_map(fn, arrays):
        """``fn`` on each sample, batched ``eval_chunk`` at a time over all clients' samples."""
        return jax.lax.map(fn, arrays, batch_size=eval_chunk)

    def all_sample_losses(params, split: ClientSplit) -> jax.Array:
        """``[M, N]`` per-sample loss of every component (E-step input, paper eq. (4))."""
        return shared_sample_losses(trainer, params, split, eval_chunk)

    def local_round(params, clients: ClientState, train: ClientSplit, participates, agg_weights, key):
        """The round on one block of clients (all of them on one device, or one device's share).

        Returns ``(delta_sum, clients, nll_sum, n_samples)``; sums are over this block only.
        """
        # E-step with the broadcast parameters; all clients share them, so this is one large
        # batched forward pass over every client's samples.
        losses = all_sample_losses(params, train)
        log_pi = jnp.log(clients.pi)[train.client_id].T  # [M, N]
        q = mixture.e_step(log_pi, losses)
        pi_estimate = mixture.update_pi_all_clients(q, train.client_id, train.counts)
        pi = jnp.where(participates[:, None], pi_estimate, clients.pi)
        delta_sum, opt_state, epochs_done, _, _ = trainer.train_clients(
            params, clients.opt_state, clients.epochs_done, q, participates, agg_weights, key, train
        )
        valid = train.client_id < train.counts.shape[0]  # padded samples of a device block
        nll = jnp.where(valid, mixture.mixture_nll_from_losses(log_pi, losses), 0.0)
        new_clients = ClientState(pi=pi, opt_state=opt_state, epochs_done=epochs_done)
        return delta_sum, new_clients, nll.sum(), valid.sum()

    if mesh is not None:
        spec = PartitionSpec(CLIENTS_AXIS)

        def all_reduced_round(*args):
            delta_sum, clients, nll_sum, n = local_round(*args)
            return jax.lax.psum((delta_sum, nll_sum, n), CLIENTS_AXIS) + (clients,)

        sharded = jax.shard_map(
            all_reduced_round,
            mesh=mesh,
            in_specs=(PartitionSpec(), spec, spec, spec, spec, PartitionSpec()),
            out_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec(), spec),
            # The local loop starts from replicated params and makes them per-device; the sums that
            # leave the map are all-reduced explicitly above.
            check_vma=False,
        )

        def block_round(*args):
            delta_sum, nll_sum, n, clients = sharded(*args)
            return delta_sum, clients, nll_sum, n
    else:
        block_round = local_round

    def round_fn(state: FedEMState, train: ClientSplit):
        round_key = jax.random.fold_in(jax.random.fold_in(base_key, 1), state.round)
        participates = sample_participants(round_key, train, n_real_clients, sampling_rate)
        agg_weights = aggregation.client_weights(train.counts)  # padded clients have 0 samples
        delta_sum, clients, nll_sum, n_samples = block_round(
            state.params, state.clients, train, participates, agg_weights, jax.random.fold_in(round_key, 1)
        )
        params = aggregation.apply_delta(state.params, delta_sum)
        metrics = {
            # Mixture NLL on train of the parameters this round started from.
            "train_nll_start": nll_sum / n_samples,
            # Whether the new global parameters are all finite (checked before checkpointing).
            "params_finite": all_finite(params),
            "participants": participates,
        }
        return FedEMState(params=params, clients=clients, round=state.round + 1), metrics

    def local_evaluate_mixture(params, pi, split: ClientSplit):
        """Per-client ``(correct, loss_sum, count)`` of ``p = sum_m pi_m p_theta_m`` (eq. (2))."""

        def one_sample(args):
            x, y, client = args
            logits = trainer.learner_logits(params, x[None])  # [M, 1, out]
            probs = mixture.mixture_probs(pi[client], task.class_probs(logits))
            return task.sample_correct(probs, y[None])[0], task.sample_nll(probs, y[None])[0]

        correct, nll = per_sample_map(one_sample, (split.x, split.y, split.client_id))
        n_clients = split.counts.shape[0]
        return {
            "correct": jax.ops.segment_sum(correct, split.client_id, n_clients),
            "loss_sum": jax.ops.segment_sum(nll, split.client_id, n_clients),
            "count": split.counts,
        }

    if mesh is not None:
        spec = PartitionSpec(CLIENTS_AXIS)
        evaluate_mixture = jax.shard_map(
            local_evaluate_mixture,
            mesh=mesh,
            in_specs=(PartitionSpec(), spec, spec),
            out_specs=spec,
            check_vma=False,
        )
    else:
        evaluate_mixture = local_evaluate_mixture

    def evaluate(state: FedEMState, split: ClientSplit):
        """Training clients, each with its own ``pi`` (per client, in the split's layout)."""
        return evaluate_mixture(state.params, state.clients.pi, split)

    def fit_pi(params, split: ClientSplit, max_iters: int, tol: float = 1e-6) -> jax.Array:
        """EM on ``pi`` alone, components frozen, iterated to convergence (``max |dpi| < tol``).

        The paper's adaptation of FedEM to clients unseen at training time (section 3.3); the
        reference does a single EM step per evaluation.
        """
        losses = all_sample_losses(params, split)
        n_clients = split.counts.shape[0]

        def keep_going(carry):
            it, _, change = carry
            return (it < max_iters) & (change > tol)

        def em_step(carry):
            it, pi, _ = carry
            q = mixture.e_step(jnp.log(pi)[split.client_id].T, losses)
            new_pi = mixture.update_pi_all_clients(q, split.client_id, split.counts)
            return it + 1, new_pi, jnp.max(jnp.abs(new_pi - pi))

        start = jnp.full((n_clients, n_learners), 1.0 / n_learners, jnp.float32)
        _, pi, _ = jax.lax.while_loop(keep_going, em_step, (0, start, jnp.inf))
        return pi

    def evaluate_unseen(state: FedEMState, train: ClientSplit, test: ClientSplit, max_iters: int = 500):
        """Clients held out of training: fit ``pi`` on their train split, evaluate on test.

        Returns ``(stats, pi)``.
        """
        pi = fit_pi(state.params, train, max_iters)
        return local_evaluate_mixture(state.params, pi, test), pi

    return FedEM(
        init=init,
        round=round_fn,
        evaluate=evaluate,
        evaluate_unseen=evaluate_unseen,
        prepare_eval=lambda state, train: state,
    )
