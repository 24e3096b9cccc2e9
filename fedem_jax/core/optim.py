"""Local optimizers and learning-rate schedules (spec section 3, reference defaults).

An optimizer here is an ``optax.GradientTransformation`` that turns gradients into an update
*direction* ``d``; the local step is ``theta <- theta - lr_t * d``. The learning rate is applied
outside the transformation because it depends on each client's own epoch counter ``t``: the
schedules are stepped once per local epoch, as the reference's ``lr_scheduler.step()`` is.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

COSINE_PERIOD = 200


def _sgd(momentum, weight_decay):
    decay = optax.add_decayed_weights(weight_decay)
    if is_zero(momentum):  # a traced momentum (a sweep) keeps the trace: 0 * buf + g is g
        return decay
    return optax.chain(decay, optax.trace(decay=momentum, nesterov=False))


def _adam(momentum, weight_decay):
    del momentum  # Adam's own moments
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_adam())


# --optimizer: name -> (momentum, weight_decay) -> the local direction (PyTorch semantics).
OPTIMIZERS = {"sgd": _sgd, "adam": _adam}


def make_direction(name: str, momentum: float = 0.9, weight_decay: float = 5e-4):
    """Gradient -> direction, with PyTorch semantics.

    - ``sgd``: ``g + wd * theta`` (decay added *before* momentum, as ``torch.optim.SGD``), then
      heavy-ball momentum ``buf <- momentum * buf + g`` (first step ``buf = g``).
    - ``adam``: L2 decay added to the gradient, then Adam's scaling (``torch.optim.Adam``).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}")
    return OPTIMIZERS[name](momentum, weight_decay)


def is_zero(value) -> bool:
    """Whether ``value`` is a Python number equal to 0. A setting swept over runs is traced, and
    is never taken for 0: its term is kept and computed (exactly, for a run whose value is 0)."""
    return isinstance(value, int | float) and value == 0


def or_default(value, default):
    """``value``, or ``default`` where ``value`` is 0 ("auto"); traced values give a ``where``."""
    if isinstance(value, int | float):
        return value or default
    return jnp.where(value > 0, value, default)


def _multi_step(t, n_rounds):
    milestones = (n_rounds // 2, (3 * n_rounds) // 4)
    passed = sum((t >= m).astype(jnp.float32) for m in milestones)
    return 0.1**passed


# --lr_scheduler: name -> (t, n_rounds) -> the factor of the base lr after t local epochs.
SCHEDULES = {
    "constant": lambda t, n_rounds: jnp.ones_like(t),
    "sqrt": lambda t, n_rounds: jnp.where(t > 0, 1.0 / jnp.sqrt(jnp.maximum(t, 1.0)), 1.0),
    "linear": lambda t, n_rounds: jnp.where(t > 0, 1.0 / jnp.maximum(t, 1.0), 1.0),
    "cosine": lambda t, n_rounds: 0.5 * (1.0 + jnp.cos(math.pi * t / COSINE_PERIOD)),
    "multi_step": _multi_step,  # x0.1 at n_rounds / 2 and 3 n_rounds / 4
}


def lr_schedule(name: str, base_lr: float, n_rounds: int):
    """``lr(t)`` for ``t`` = local epochs already done by the client (int array)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr_scheduler {name!r}")
    factor = SCHEDULES[name]

    def schedule(t: jax.Array) -> jax.Array:
        return base_lr * factor(jnp.asarray(t, jnp.float32), n_rounds)

    return schedule


def sgd_like_step(params, opt_state, grads, lr, direction: optax.GradientTransformation):
    """One local step ``theta <- theta - lr * d(grads)``; returns ``(params, opt_state)``."""
    updates, opt_state = direction.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p - lr.astype(p.dtype) * u, params, updates)
    return params, opt_state
