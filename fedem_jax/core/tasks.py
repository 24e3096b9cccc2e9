"""Prediction tasks: per-sample loss and class probabilities from a model's logits.

A task turns the raw output ``f_m(x)`` of one component into
- the per-sample loss ``l_m(i) = -log p_theta_m(y_i | x_i)`` used by the E-step and M-step
  (FedEM paper, eq. (4)-(6)), and
- class probabilities ``p_theta_m(. | x)`` used by the mixture prediction
  ``sum_m pi_m p_theta_m(y | x)`` (paper, eq. (2)).

Binary tasks use a sigmoid (the model outputs one logit); multiclass tasks use a softmax.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class Task:
    """``num_classes == 2`` with ``binary=True`` means one logit and a sigmoid."""

    num_classes: int
    binary: bool = False

    def per_sample_loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        """Negative log-likelihood of each sample: ``[..., K] or [..., 1] -> [...]``."""
        if self.binary:
            return optax.sigmoid_binary_cross_entropy(logits[..., 0], labels.astype(logits.dtype))
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    def class_probs(self, logits: jax.Array) -> jax.Array:
        """Class probabilities ``[..., K]`` (binary: ``[1 - sigmoid, sigmoid]``)."""
        if self.binary:
            positive = jax.nn.sigmoid(logits[..., 0])
            return jnp.stack([1.0 - positive, positive], axis=-1)
        return jax.nn.softmax(logits, axis=-1)

    @property
    def output_dim(self) -> int:
        return 1 if self.binary else self.num_classes


BINARY = Task(num_classes=2, binary=True)
