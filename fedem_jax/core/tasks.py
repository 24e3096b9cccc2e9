"""Prediction tasks: per-sample loss and class probabilities from a model's logits.

A task turns the raw output ``f_m(x)`` of one component into
- the per-sample loss ``l_m(i) = -log p_theta_m(y_i | x_i)`` used by the E-step and M-step
  (FedEM paper, eq. (4)-(6)), and
- class probabilities ``p_theta_m(. | x)`` used by the mixture prediction
  ``sum_m pi_m p_theta_m(y | x)`` (paper, eq. (2)).

Binary tasks use a sigmoid (the model outputs one logit); multiclass tasks use a softmax.
Sequence tasks (next-character prediction) have a label per position; a sample's loss is the mean
over its positions (the FedEM reference's E-step for Shakespeare) and its accuracy is the
fraction of positions predicted correctly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from fedem_jax.core.mixture import clamped_nll


@dataclasses.dataclass(frozen=True)
class Task:
    """``num_classes == 2`` with ``binary=True`` means one logit and a sigmoid; ``sequence``:
    logits ``[B, T, K]`` and labels ``[B, T]``."""

    num_classes: int
    binary: bool = False
    sequence: bool = False

    def per_sample_loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        """Negative log-likelihood of each sample: ``[B, K] or [B, 1] -> [B]`` (sequences: the
        mean over positions, ``[B, T, K] -> [B]``)."""
        if self.binary:
            return optax.sigmoid_binary_cross_entropy(logits[..., 0], labels.astype(logits.dtype))
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return losses.mean(axis=-1) if self.sequence else losses

    def sample_correct(self, probs: jax.Array, labels: jax.Array) -> jax.Array:
        """``[B]`` accuracy of each sample's prediction (sequences: fraction of positions)."""
        hits = (jnp.argmax(probs, axis=-1) == labels).astype(jnp.float32)
        return hits.mean(axis=-1) if self.sequence else hits

    def sample_nll(self, probs: jax.Array, labels: jax.Array) -> jax.Array:
        """``[B]`` clamped ``-log p(y | x)`` of a mixture prediction (sequences: position mean)."""
        nll = clamped_nll(probs, labels)
        return nll.mean(axis=-1) if self.sequence else nll

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
