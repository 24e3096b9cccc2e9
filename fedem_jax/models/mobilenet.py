"""MobileNetV2 (Sandler et al., CVPR 2018) for 32x32 inputs, the model the FedEM paper trains on
CIFAR-10/100 (spec section 5), laid out as ``torchvision.models.mobilenet_v2``: the same layers,
strides and parameter counts (2,236,682 with 10 classes). The classifier's dropout is left out.

BatchNorm keeps running statistics in the ``batch_stats`` collection. fedem_jax treats them as
part of each component's state: they are updated by every training step (train mode), averaged
by the server like the weights, and used in eval mode by the E-step and evaluation, as the
reference's ``state_dict`` averaging does.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedem_jax.models.convolution import conv_slices

# (expansion t, output channels c, repeats n, first stride s) of torchvision's MobileNetV2.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileConv(nn.Module):
    """Bias-free ``nn.Conv`` look-alike (same parameter name and shape) for MobileNetV2's dense
    and depthwise convolutions, implemented by XLA (``impl="xla"``) or as slices (``"matmul"``)."""

    features: int
    kernel: int
    stride: int
    groups: int
    impl: str = "xla"

    @nn.compact
    def __call__(self, x):
        pad = (self.kernel - 1) // 2
        shape = (self.kernel, self.kernel, x.shape[-1] // self.groups, self.features)
        init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        kernel = self.param("kernel", init, shape)
        depthwise = self.groups > 1
        if depthwise and not (self.groups == x.shape[-1] == self.features):
            raise ValueError("only depthwise grouped convolutions are supported")
        if self.impl == "matmul":
            return conv_slices(x, kernel, self.stride, pad, depthwise)
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            (self.stride, self.stride),
            ((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups,
        )


class ConvBNReLU6(nn.Module):
    features: int
    kernel: int = 3
    stride: int = 1
    groups: int = 1
    activation: bool = True
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        x = MobileConv(self.features, self.kernel, self.stride, self.groups, self.conv_impl, name="Conv_0")(x)
        # torch momentum 0.1 == flax momentum 0.9; torch eps 1e-5.
        sample_mask = None if mask is None else mask[:, None, None, None]
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x, mask=sample_mask)
        return jnp.clip(x, 0.0, 6.0) if self.activation else x


class InvertedResidual(nn.Module):
    features: int
    stride: int
    expansion: int
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        hidden = x.shape[-1] * self.expansion
        impl = self.conv_impl
        y = x
        if self.expansion != 1:
            y = ConvBNReLU6(hidden, kernel=1, conv_impl=impl)(y, train, mask)
        y = ConvBNReLU6(hidden, stride=self.stride, groups=hidden, conv_impl=impl)(y, train, mask)
        y = ConvBNReLU6(self.features, kernel=1, activation=False, conv_impl=impl)(y, train, mask)
        if self.stride == 1 and x.shape[-1] == self.features:
            return x + y
        return y


class MobileNetV2(nn.Module):
    output_dim: int
    conv_impl: str = "xla"
    last_channels: int = 1280
    block_settings: tuple = INVERTED_RESIDUAL_SETTING  # smaller ones make quick tests

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        """``mask [B]``: the samples BatchNorm's batch statistics are computed over (training)."""
        impl = self.conv_impl
        x = ConvBNReLU6(32, stride=2, conv_impl=impl)(x, train, mask)
        for expansion, channels, repeats, stride in self.block_settings:
            for i in range(repeats):
                x = InvertedResidual(channels, stride if i == 0 else 1, expansion, impl)(x, train, mask)
        x = ConvBNReLU6(self.last_channels, kernel=1, conv_impl=impl)(x, train, mask)
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.output_dim, kernel_init=nn.initializers.normal(0.01))(x)
