"""Convolutions as shifted slices + matmul, for training on CPU.

XLA:CPU runs the gradient of its native convolution far slower inside a ``lax.scan`` body than
outside (jax-ml/jax#12868), and a FedEM round is a scan over local steps. Slices, concatenation
and ``dot`` have no such cliff; their gradients are slices, pads and matmuls. Both functions give
the values of ``lax.conv_general_dilated`` up to float rounding. See docs/performance.md,
"Convolutions on CPU".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CONV_IMPLS = ("xla", "matmul")  # --conv_impl: lax's convolution, or the slices + matmul form here


def conv_slices(x: jax.Array, kernel: jax.Array, stride: int = 1, pad: int = 0, depthwise: bool = False):
    """Padded, strided convolution NHWC x HWIO -> NHWC with a square ``k x k`` kernel.

    Dense: the ``k * k`` shifted (strided) slices stacked on the channel axis, times the kernel
    as one matmul (im2col). Depthwise (kernel ``[k, k, 1, C]``): a sum of per-channel products.
    """
    k = kernel.shape[0]
    if pad:
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    batch, height, width, _ = x.shape
    out_h, out_w = (height - k) // stride + 1, (width - k) // stride + 1
    rows, cols = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
    slices = [x[:, i : i + rows : stride, j : j + cols : stride, :] for i in range(k) for j in range(k)]
    if depthwise:
        return sum(s * kernel[i // k, i % k, 0] for i, s in enumerate(slices))
    patches = jnp.concatenate(slices, axis=-1).reshape(batch * out_h * out_w, -1)  # (i, j, c) order
    out = jnp.dot(patches, kernel.reshape(patches.shape[1], -1))
    return out.reshape(batch, out_h, out_w, -1)


def conv_as_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """VALID stride-1 convolution (the CNNs' layers) as slices + one matmul."""
    return conv_slices(x, kernel)
