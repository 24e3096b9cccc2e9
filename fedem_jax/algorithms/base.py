"""The algorithm interface: what every method provides, what it is given, and its state.

An algorithm is a few pure functions (like FedJAX's ``FederatedAlgorithm`` or optax's
``GradientTransformation``), built by its module's factory from a :class:`Context`:

- ``init(data) -> state``;
- ``round(state, train) -> (state, metrics)``: one communication round, written for one *block*
  of clients (all of them on one device); what crosses blocks goes through
  ``ctx.layout.client_sum`` / ``all_clients``, so the same code runs sharded over a mesh;
- ``evaluate(view, split) -> {"correct", "loss_sum", "count"}`` per client, where
  ``view = prepare_eval(state, train)`` (the identity unless the method adapts models before
  evaluating, as FedAvg+ does);
- ``evaluate_unseen(state, train, test, max_iters) -> (stats, pi)``: optional, for methods with
  a shared model that clients held out of training can use.

``metrics`` holds ``participants`` (``[C]`` booleans), ``train_nll_start`` and ``params_finite``
(scalars reduced over every client), plus any scalar diagnostics of the method's own.

State is a frozen pytree dataclass. Its class variable ``CLIENT_FIELDS`` names the fields whose
leaves have a leading client axis (sharded on a mesh); the other fields are replicated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from fedem_jax.core.client_update import ClientUpdate
from fedem_jax.core.privacy import Mechanism, uniform_weights
from fedem_jax.core.tasks import Task
from fedem_jax.data.federated import ClientSplit, FederatedData
from fedem_jax.data.sharding import place
from fedem_jax.execution.layout import CLIENT_SPEC, REPLICATED, Layout
from fedem_jax.models import init_stacked_params, torch_default_init
from fedem_jax.models.pretrained import apply_weights

Params = Any  # a pytree of arrays: one model's, or stacked on leading axes as the field says


@flax.struct.dataclass
class ClientState:
    """Per-client state, leading axis ``[C]``."""

    pi: jax.Array  # [C, M] mixture weights
    opt_state: Params  # optimizer state, leaves [C, M, ...] (SGD momentum survives rounds; None: fresh)
    epochs_done: jax.Array  # [C] local epochs done: the clock of the lr schedule


class State(flax.struct.PyTreeNode):
    """Fields every method's state has: per-client state and the round counter."""

    clients: ClientState
    round: jax.Array  # scalar int32: rounds completed

    CLIENT_FIELDS: ClassVar[tuple[str, ...]] = ("clients",)


class GlobalState(State):
    """A method with shared models only: ``params`` are the global components ``[M, ...]``."""

    params: Params


class PersonalState(State):
    """A method whose clients hold their own models: ``params`` leaves ``[C, M, ...]``."""

    params: Params

    CLIENT_FIELDS: ClassVar[tuple[str, ...]] = ("clients", "params")


class PersonalGlobalState(PersonalState):
    """Per-client models ``params`` and one shared model ``global_model [M, ...]`` (each method's
    module says what the two are: Ditto's global and personal models, APFL's ``w`` and ``v``...)."""

    global_model: Params


class PersonalGlobalClipState(PersonalGlobalState):
    """A personal-and-global state with adaptive DP clipping (``--dp_clip_quantile``)."""

    dp_clip: jax.Array  # scalar float32: the next round's clip


def with_dp_clip(state, clip: float, cls):
    """``state`` as ``cls`` (its fields and ``dp_clip``): the clip adaptive clipping starts from."""
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return cls(**fields, dp_clip=jnp.asarray(clip, jnp.float32))


def next_dp_clip(ctx: Context, clip, participates, norms_sq, key):
    """Adaptive clipping's step (:meth:`fedem_jax.core.privacy.Mechanism.next_clip`): the clip
    after a round that used ``clip``, from the sampled clients whose update's squared norm
    ``norms_sq`` (``[C]``, this block) was within it, counted over every block."""
    within = participates & (norms_sq <= jnp.square(clip))
    return ctx.privacy.next_clip(clip, ctx.layout.client_sum(jnp.sum(within.astype(jnp.float32))), key)


def state_specs(state: State):
    """The ``PartitionSpec`` prefix tree of ``state``: client fields sharded, the rest replicated."""
    specs = {
        f.name: CLIENT_SPEC if f.name in state.CLIENT_FIELDS else REPLICATED
        for f in dataclasses.fields(state)
    }
    return type(state)(**specs)


def place_state(state, layout: Layout, keep: tuple[str, ...] = ()):
    """Lay ``state`` out on the layout's mesh: client fields sharded, the rest replicated (the
    fields named in ``keep`` are left as they are)."""
    if layout.mesh is None:
        return state
    specs = state_specs(state)
    fields = {
        f.name: getattr(state, f.name)
        if f.name in keep
        else place(getattr(state, f.name), layout.mesh, getattr(specs, f.name))
        for f in dataclasses.fields(state)
    }
    return type(state)(**fields)


class Algorithm(NamedTuple):
    """A method's pure functions (see the module docstring)."""

    init: Callable[[FederatedData], State]
    round: Callable[[State, ClientSplit], tuple[State, dict]]
    evaluate: Callable[[Any, ClientSplit], dict]
    prepare_eval: Callable[[State, ClientSplit], Any] = lambda state, train: state
    evaluate_unseen: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Context:
    """What a method's factory is given, built once per experiment (see ``experiment.py``)."""

    model: Any  # flax module of one component
    task: Task
    update: ClientUpdate  # local training of one client (its layout says how clients run)
    n_learners: int
    n_clients: int  # training clients of the federation (without a mesh's padding)
    sampling_rate: float
    seed: int
    data_seed: int
    eval_chunk: int
    init_weights: dict | None = None  # --init_from: leaves put into every component
    init_from: str = ""  # the file they were read from (named in errors)
    init_scheme: str = "flax"  # --init: "torch" redraws every component with PyTorch's defaults
    sampling: str = "fixed"  # --sampling: fixed-size cohorts or Poisson (see sample_participants)
    privacy: Mechanism | None = None  # --dp_clip: the DP mechanism of the server's average
    n_samples: int = 0  # training samples of the federation (0: summed over the blocks given)
    # A cohort round (--cohort) is given only its sampled clients: every real client takes part
    # (the draw was made by the cohort's gather, with a context where this is False).
    presampled: bool = False

    @property
    def layout(self) -> Layout:
        return self.update.layout

    def round_key(self, round_index: jax.Array) -> jax.Array:
        """``fold_in(fold_in(PRNGKey(seed), 1), round)``: the key of one round."""
        return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(self.seed), 1), round_index)

    def participants(self, round_key, train: ClientSplit):
        """``[C]`` booleans of this block's clients taking part (see :func:`sample_participants`)."""
        if self.presampled:
            return self.real(train)
        return sample_participants(round_key, train, self.n_clients, self.sampling_rate, self.sampling)

    def client_weights(self, train: ClientSplit) -> jax.Array:
        """``p_t = n_t / n`` of this block's clients, ``n`` over all blocks or the federation's
        (a cohort round holds only its clients), 0 for padding."""
        counts = train.counts.astype(jnp.float32)
        total = float(self.n_samples) if self.n_samples else self.layout.client_sum(counts.sum())
        return counts / total

    def aggregation_weights(self, train: ClientSplit) -> jax.Array:
        """The server's client weights: ``p_t = n_t / n`` (the paper's), or under DP the
        mechanism's fixed weights (``--dp_weighting``, :mod:`fedem_jax.core.privacy`)."""
        if self.privacy is None or self.privacy.weighting == "samples":
            return self.client_weights(train)
        return uniform_weights(train, self.n_clients)

    def real(self, train: ClientSplit) -> jax.Array:
        """``[C]`` booleans: this block's real clients (a mesh pads the last blocks)."""
        return train.global_ids < self.n_clients

    def init_components(self, data: FederatedData) -> Params:
        """M independently initialised components ``[M, ...]`` (``--init``, ``--init_from`` applied)."""
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), 0)
        params = init_stacked_params(self.model, key, data.train.x[:1], self.n_learners)
        if self.init_scheme == "torch":  # learner m from fold_in(fold_in(key, m), 1)
            keys = jax.vmap(lambda m: jax.random.fold_in(jax.random.fold_in(key, m), 1))(
                jnp.arange(self.n_learners)
            )
            params = jax.vmap(torch_default_init)(params, keys)
        if self.init_weights:
            params, _ = apply_weights(params, self.init_weights, self.init_from)
        return params

    def init_clients(self, data: FederatedData, params: Params) -> ClientState:
        """Uniform ``pi``, zero epoch counters, and the local optimizer's state of ``params`` for
        every client (none with ``--client_momentum fresh``)."""
        direction = self.update.direction
        n_clients = data.n_clients
        opt_state = None if self.update.fresh_opt else broadcast_to_clients(direction.init(params), n_clients)
        return ClientState(
            pi=jnp.full((n_clients, self.n_learners), 1.0 / self.n_learners, jnp.float32),
            opt_state=opt_state,
            epochs_done=jnp.zeros((n_clients,), jnp.int32),
        )


def n_sampled_clients(n_clients: int, sampling_rate: float) -> int:
    """Exactly ``max(1, round(rate * C))`` clients take part in each round."""
    return max(1, min(n_clients, int(round(sampling_rate * n_clients))))


def sample_participants(
    round_key, train: ClientSplit, n_real_clients: int, sampling_rate: float, sampling: str = "fixed"
):
    """``[C]`` booleans: exactly ``n_sampled_clients`` real clients (``fixed``), or each real
    client independently with probability ``sampling_rate`` (``poisson``: the cohort may be
    empty), drawn by their global index with ``fold_in(round_key, 0)``, so the draw is the same on
    any number of devices."""
    n_clients = n_real_clients or train.counts.shape[0]
    real = train.global_ids < n_clients
    if sampling == "poisson":
        draws = jax.random.uniform(jax.random.fold_in(round_key, 0), (n_clients,))
        return real & (draws[jnp.minimum(train.global_ids, n_clients - 1)] < sampling_rate)
    order = client_order(round_key, n_clients)
    rank = jnp.zeros((n_clients,), jnp.int32).at[order].set(jnp.arange(n_clients, dtype=jnp.int32))
    chosen = rank[jnp.minimum(train.global_ids, n_clients - 1)] < n_sampled_clients(n_clients, sampling_rate)
    return real & chosen


def client_order(round_key, n_clients: int) -> jax.Array:
    """The round's random order of the federation's clients: fixed-size sampling takes its first
    ``n_sampled_clients`` (see :func:`sample_participants`)."""
    return jax.random.permutation(jax.random.fold_in(round_key, 0), n_clients)


def for_participants(participates, new, old):
    """``new`` for the clients taking part, ``old`` for the others (leaves ``[C, ...]``): an
    unsampled client's stored state stays as it was, as in a cohort round, which never sees it."""

    def pick(n, o):
        return jnp.where(participates.reshape(participates.shape + (1,) * (n.ndim - 1)), n, o)

    return jax.tree.map(pick, new, old)


def broadcast_to_clients(tree, n_clients: int):
    """A copy of ``tree`` for every client: leaves ``[C, ...]``. Run eagerly it materialises the
    result once; an eager ``jnp.repeat`` holds two copies at its peak (3.2 GB extra for the
    per-client momentum of full CIFAR-10)."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n_clients, *a.shape)), tree)


def all_finite(tree) -> jax.Array:
    """Whether every leaf of ``tree`` is finite (checked before checkpointing)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def round_metrics(ctx: Context, participates, *, finite, nll_sum=None, n_samples=None, **extra) -> dict:
    """The engine's metrics of one round, reduced over every block of clients.

    ``finite``: whether this block's new parameters are all finite; ``nll_sum / n_samples``: the
    training loss of the parameters the round started from (0 where a method does not compute it).
    """
    layout = ctx.layout
    all_ok = layout.client_sum(jnp.where(finite, 0, 1)) == 0
    if nll_sum is None:
        nll = jnp.zeros(())
    else:
        nll = layout.client_sum(nll_sum) / layout.client_sum(n_samples)
    return {"train_nll_start": nll, "params_finite": all_ok, "participants": participates, **extra}


def take_first(stacked):
    """``[1, ...] -> [...]``: the one model of a single-model method."""
    return jax.tree.map(lambda a: a[0], stacked)


def padded_mixing(mixing: np.ndarray, row_ids: jax.Array, col_ids: jax.Array) -> jax.Array:
    """Entries ``mixing[row, col]`` of a ``[C, C]`` client matrix for the global ids of a layout's
    rows and columns; padded clients (ids ``>= C``) get zero rows and columns."""
    n = mixing.shape[0]
    padded = jnp.pad(jnp.asarray(mixing), ((0, 1), (0, 1)))
    return padded[jnp.minimum(row_ids, n)][:, jnp.minimum(col_ids, n)]
