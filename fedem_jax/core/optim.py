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


def make_direction(name: str, momentum: float = 0.9, weight_decay: float = 5e-4):
    """Gradient -> direction, with PyTorch semantics.

    - ``sgd``: ``g + wd * theta`` (decay added *before* momentum, as ``torch.optim.SGD``), then
      heavy-ball momentum ``buf <- momentum * buf + g`` (first step ``buf = g``).
    - ``adam``: L2 decay added to the gradient, then Adam's scaling (``torch.optim.Adam``).
    """
    decay = optax.add_decayed_weights(weight_decay)
    if name == "sgd":
        if is_zero(momentum):  # a traced momentum (a sweep) keeps the trace: 0 * buf + g is g
            return decay
        return optax.chain(decay, optax.trace(decay=momentum, nesterov=False))
    if name == "adam":
        return optax.chain(decay, optax.scale_by_adam())
    raise ValueError(f"unknown optimizer {name!r}")


def is_zero(value) -> bool:
    """Whether ``value`` is a Python number equal to 0. A setting swept over runs is traced, and
    is never taken for 0: its term is kept and computed (exactly, for a run whose value is 0)."""
    return isinstance(value, int | float) and value == 0


def or_default(value, default):
    """``value``, or ``default`` where ``value`` is 0 ("auto"); traced values give a ``where``."""
    if isinstance(value, int | float):
        return value or default
    return jnp.where(value > 0, value, default)


def lr_schedule(name: str, base_lr: float, n_rounds: int):
    """``lr(t)`` for ``t`` = local epochs already done by the client (int array)."""
    milestones = (n_rounds // 2, (3 * n_rounds) // 4)

    def schedule(t: jax.Array) -> jax.Array:
        t = jnp.asarray(t, jnp.float32)
        if name == "constant":
            factor = jnp.ones_like(t)
        elif name == "sqrt":
            factor = jnp.where(t > 0, 1.0 / jnp.sqrt(jnp.maximum(t, 1.0)), 1.0)
        elif name == "linear":
            factor = jnp.where(t > 0, 1.0 / jnp.maximum(t, 1.0), 1.0)
        elif name == "cosine":
            factor = 0.5 * (1.0 + jnp.cos(math.pi * t / COSINE_PERIOD))
        elif name == "multi_step":
            passed = sum((t >= m).astype(jnp.float32) for m in milestones)
            factor = 0.1**passed
        else:
            raise ValueError(f"unknown lr_scheduler {name!r}")
        return base_lr * factor

    return schedule


def sgd_like_step(params, opt_state, grads, lr, direction: optax.GradientTransformation):
    """One local step ``theta <- theta - lr * d(grads)``; returns ``(params, opt_state)``."""
    updates, opt_state = direction.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p - lr.astype(p.dtype) * u, params, updates)
    return params, opt_state
