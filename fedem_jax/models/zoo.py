"""Flax models of the FedEM paper (spec section 5) and their registry."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from fedem_jax.models.convolution import conv_as_matmul
from fedem_jax.models.mobilenet import MobileNetV2


class LinearModel(nn.Module):
    """``x -> W x + b``; the synthetic task's model (150 -> 1 with BCE on the logit)."""

    output_dim: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.output_dim)(x.reshape((x.shape[0], -1)))


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, NHWC (even H and W), as a reshape + max.

    Same values as ``nn.max_pool(x, (2, 2), strides=(2, 2))``; its gradient is cheaper on CPU
    than ``reduce_window``'s select-and-scatter (``benchmarks/conv_in_scan.py``).
    """
    batch, height, width, channels = x.shape
    return x.reshape(batch, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


class Conv(nn.Module):
    """VALID stride-1 ``nn.Conv`` look-alike (same parameter names and shapes) with a choice of
    implementation: ``"xla"`` (``lax`` convolution, best on GPU) or ``"matmul"`` (best on CPU)."""

    features: int
    kernel_size: tuple[int, int]
    impl: str = "xla"

    @nn.compact
    def __call__(self, x):
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        if self.impl == "matmul":
            return conv_as_matmul(x, kernel) + bias
        out = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return out + bias


class CIFAR10CNN(nn.Module):
    """conv 3->32 k5, maxpool 2, conv 32->64 k5, maxpool 2, FC 1600->2048, FC 2048->10.

    3,353,034 parameters for 10 classes (spec section 5). Inputs are NHWC 32x32x3. On 28x28x1
    inputs with 62 outputs the same layers are the FEMNIST CNN (FC 1024->2048, 2,278,334 params).
    """

    output_dim: int = 10
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x):
        x = max_pool_2x2(nn.relu(Conv(32, (5, 5), impl=self.conv_impl)(x)))
        x = max_pool_2x2(nn.relu(Conv(64, (5, 5), impl=self.conv_impl)(x)))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(2048)(x))
        return nn.Dense(self.output_dim)(x)


class MLP(nn.Module):
    """Flatten -> FC 256 -> ReLU -> FC out: the default for your own feature-vector data."""

    output_dim: int
    hidden: int = 256

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.hidden)(x.reshape((x.shape[0], -1))))
        return nn.Dense(self.output_dim)(x)


class SmallCNN(nn.Module):
    """conv 3x3 32, maxpool 2, conv 3x3 64, maxpool 2, FC 128, FC out: the default for your own
    image data (any H, W >= 10, any channels)."""

    output_dim: int
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(Conv(32, (3, 3), impl=self.conv_impl)(x)), (2, 2), strides=(2, 2))
        x = nn.max_pool(nn.relu(Conv(64, (3, 3), impl=self.conv_impl)(x)), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(128)(x.reshape((x.shape[0], -1))))
        return nn.Dense(self.output_dim)(x)


class NextCharacterLSTM(nn.Module):
    """Embedding 100 -> 8, two LSTM layers of 256 units, FC 256 -> 100 at every position: the
    FedEM paper's Shakespeare model (825,220 parameters, spec section 5). Each LSTM gate has an
    input and a recurrent bias, as in ``torch.nn.LSTM``, which the parameter count includes.
    Input ``[B, T]`` character ids, output ``[B, T, output_dim]`` logits."""

    output_dim: int
    vocab_size: int = 100
    embed_dim: int = 8
    hidden: int = 256
    n_layers: int = 2

    @nn.compact
    def __call__(self, x):
        h = nn.Embed(self.vocab_size, self.embed_dim)(x.astype(jnp.int32))
        for layer in range(self.n_layers):
            h = _LSTMLayer(self.hidden, name=f"lstm_{layer}")(h)
        return nn.Dense(self.output_dim)(h)


def _symmetric_uniform(bound: float):
    """``U(-bound, bound)``: torch.nn.LSTM's initialisation with ``bound = 1 / sqrt(hidden)``."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class _LSTMLayer(nn.Module):
    """One LSTM layer over ``[B, T, D]`` (gates i, f, g, o), unrolled with ``lax.scan``."""

    hidden: int

    @nn.compact
    def __call__(self, inputs):
        init = _symmetric_uniform(1.0 / self.hidden**0.5)
        # The input projection of every position at once; only the recurrence is sequential.
        gates_in = nn.Dense(4 * self.hidden, kernel_init=init, bias_init=init, name="input")(inputs)
        kernel = self.param("recurrent_kernel", init, (self.hidden, 4 * self.hidden))
        bias = self.param("recurrent_bias", init, (4 * self.hidden,))

        def step(carry, gates_t):
            c, h = carry
            i, f, g, o = jnp.split(gates_t + h @ kernel + bias, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (c, h), h

        zeros = jnp.zeros((inputs.shape[0], self.hidden), gates_in.dtype)
        _, outputs = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(gates_in, 0, 1))
        return jnp.swapaxes(outputs, 0, 1)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model by name: its flax module and what the rest of the package must know about it.

    ``inputs``: the shape one sample must have, ``(rank, smallest height/width, channels or None)``
    (None: any shape, flattened); ``exact_size``: the height must equal that smallest size."""

    module: type
    convolutional: bool = False  # takes conv_impl: XLA's convolution or the matmul form
    stateful: bool = False  # BatchNorm: variables {"params", "batch_stats"}
    # Depthwise convolutions: under vmap with per-client, per-learner weights, XLA makes each one a
    # grouped convolution of clients x learners x channels groups (230,400 for MobileNetV2 on 80
    # clients, M = 3; benchmarks/program_size.py), the program issue 12 saw not finish compiling in
    # 200 s on an H100. The matmul form has no convolution left to group.
    depthwise: bool = False
    torch_own_init: bool = False  # already torchvision's scheme (kaiming-normal fan-out convs)
    sequence: bool = False  # predicts the next token at every position (a sequence task)
    inputs: tuple | None = None
    exact_size: bool = False
    # On CPU, learners vmapped (small dense models) rather than looped (benchmarks/layouts.py).
    vmap_learners_on_cpu: bool = False


MODELS: dict[str, ModelSpec] = {
    "linear": ModelSpec(LinearModel, vmap_learners_on_cpu=True),
    "mlp": ModelSpec(MLP, vmap_learners_on_cpu=True),
    "cnn": ModelSpec(SmallCNN, convolutional=True, inputs=(3, 10, None)),
    "cifar10_cnn": ModelSpec(CIFAR10CNN, convolutional=True, inputs=(3, 32, 3), exact_size=True),
    # The same layers as cifar10_cnn; sizes follow the 28x28x1 input and 62 classes.
    "femnist_cnn": ModelSpec(CIFAR10CNN, convolutional=True, inputs=(3, 28, 1), exact_size=True),
    "lstm": ModelSpec(NextCharacterLSTM, sequence=True),
    "mobilenet_v2": ModelSpec(
        MobileNetV2,
        convolutional=True,
        stateful=True,
        depthwise=True,
        torch_own_init=True,
        inputs=(3, 32, None),
    ),
}
STATEFUL_MODELS = tuple(name for name, spec in MODELS.items() if spec.stateful)
CONV_MODELS = tuple(name for name, spec in MODELS.items() if spec.convolutional)
DEPTHWISE_MODELS = tuple(name for name, spec in MODELS.items() if spec.depthwise)
TORCH_OWN_INIT = tuple(name for name, spec in MODELS.items() if spec.torch_own_init)


def default_conv_impl(model_name: str = "") -> str:
    """``matmul`` on CPU (see :mod:`fedem_jax.models.convolution`) and for depthwise models
    everywhere; XLA's convolution for the other models on GPU/TPU."""
    if jax.default_backend() == "cpu" or model_name in DEPTHWISE_MODELS:
        return "matmul"
    return "xla"


def input_problem(name: str, sample_shape: tuple, sequence_task: bool = False) -> str | None:
    """Why inputs of ``sample_shape`` (one sample) do not fit model ``name``, or None."""
    spec = MODELS[name]
    if spec.sequence and not sequence_task:
        return (
            f"--model {name} predicts the next character at every position: use it with --dataset shakespeare"
        )
    if spec.inputs is None:
        return None  # linear, mlp: any shape, flattened
    rank, smallest, channels = spec.inputs
    if len(sample_shape) != rank:
        kind = "images [H, W, C]" if rank == 3 else "integer sequences [T]"
        return f"--model {name} needs {kind}, the data has samples of shape {tuple(sample_shape)}"
    if rank == 3:
        height, width, depth = sample_shape
        if min(height, width) < smallest or (spec.exact_size and height != smallest):
            size = f"{smallest}x{smallest}" if spec.exact_size else f"at least {smallest}x{smallest}"
            return f"--model {name} needs {size} images, the data's are {height}x{width}"
        if channels is not None and depth != channels:
            return f"--model {name} needs {channels}-channel images, the data's have {depth}"
    return None


def build_model(name: str, output_dim: int, conv_impl: str = "") -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    spec = MODELS[name]
    if not spec.convolutional:
        return spec.module(output_dim=output_dim)
    return spec.module(output_dim=output_dim, conv_impl=conv_impl or default_conv_impl(name))


def init_stacked_params(model: nn.Module, key: jax.Array, sample_input: jax.Array, n_learners: int):
    """Independent initialisations of ``n_learners`` components, stacked on a leading ``[M]`` axis.

    Learner ``m`` is initialised from ``fold_in(key, m)``. Jitted: run op by op, a deep network's
    initialisation (MobileNetV2) takes tens of seconds on CPU.
    """
    keys = jax.vmap(lambda m: jax.random.fold_in(key, m))(jnp.arange(n_learners))  # no Python loop over M
    return jax.jit(jax.vmap(lambda k: model_state(model.init(k, sample_input))))(keys)


INITS = ("flax", "torch")  # --init: flax's own, or torch_default_init


def torch_default_init(params, key):
    """PyTorch's default initialisation of one component's parameters, drawn anew from ``key``:

    - ``nn.Linear`` / ``nn.Conv2d`` (a ``kernel`` of rank 2 / 4, with its ``bias``): weight and bias
      ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (``kaiming_uniform_(a=sqrt(5))``; ``fan_in`` = inputs x
      kernel height x width);
    - ``nn.Embedding``: ``N(0, 1)``;
    - LSTM layers (``recurrent_kernel``) keep theirs: already ``torch.nn.LSTM``'s ``U(+-1/sqrt(H))``.
    """
    flat = flatten_dict(params)
    out = dict(flat)
    modules = sorted({path[:-1] for path in flat})
    lstm_layers = [m for m in modules if (*m, "recurrent_kernel") in flat]
    for i, module in enumerate(modules):
        leaves = {path[-1]: value for path, value in flat.items() if path[:-1] == module}
        k = jax.random.fold_in(key, i)
        if "embedding" in leaves:
            table = leaves["embedding"]
            out[(*module, "embedding")] = jax.random.normal(k, table.shape, table.dtype)
        if "kernel" not in leaves or any(module[: len(layer)] == layer for layer in lstm_layers):
            continue
        kernel = leaves["kernel"]
        fan_in = int(np.prod(kernel.shape[:-1]))
        bound = 1.0 / np.sqrt(fan_in)
        k_w, k_b = jax.random.split(k)
        out[(*module, "kernel")] = jax.random.uniform(k_w, kernel.shape, kernel.dtype, -bound, bound)
        if "bias" in leaves:
            bias = leaves["bias"]
            out[(*module, "bias")] = jax.random.uniform(k_b, bias.shape, bias.dtype, -bound, bound)
    return unflatten_dict(out)


def model_state(variables):
    """What a component is made of: its ``params``, plus ``batch_stats`` for BatchNorm models."""
    return variables["params"] if set(variables) == {"params"} else dict(variables)


def count_params(params) -> int:
    return int(sum(leaf.size for leaf in jax.tree.leaves(params)))
