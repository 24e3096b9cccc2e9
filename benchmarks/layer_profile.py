"""Where a CIFAR10CNN training step spends its time: each layer's forward + backward, in fedem_jax
(convolution as slices + matmul, and XLA's convolution, both inside ``lax.scan`` as in a round)
and in PyTorch, side by side, batch 128.

    python benchmarks/layer_profile.py [--batch 128] [--steps 10] [--alternatives]

``--alternatives`` also times conv2 with two other formulations of its input gradient (the
slices convolution's own forward and weight gradient, a ``custom_vjp`` input gradient): a full
convolution of the padded output gradient with the flipped kernel, as slices + matmul; and the
col2im sum as two contractions with 0/1 shift matrices (width, then height).

Each layer is timed alone on random inputs with the upstream gradient of ``0.5 * sum(out**2)``
(a non-constant gradient, so no backward pass is folded away). conv1's input needs no gradient
(it is the image), conv2's and fc1's do. Compilation is excluded; timings are the best of three
``jax.block_until_ready`` runs of a ``steps``-long scan. Writes
``benchmarks/results/layer_profile.json``.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from timing import write_result

from fedem_jax.models.convolution import conv_as_matmul

LAYERS = {  # name: (input shape without batch, parameter shape, input needs a gradient)
    "conv1 5x5 3->32": ((32, 32, 3), (5, 5, 3, 32), False),
    "conv2 5x5 32->64": ((14, 14, 32), (5, 5, 32, 64), True),
    "fc1 1600->2048": ((1600,), (1600, 2048), True),
}


def xla_conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def shift_matrix(n_out: int, k: int) -> jax.Array:
    """``S[o, j, x] = 1`` where ``o + j == x``: the col2im sum along one axis as a contraction."""
    s = np.zeros((n_out, k, n_out + k - 1), np.float32)
    for o in range(n_out):
        s[o, np.arange(k), o + np.arange(k)] = 1.0
    return jnp.asarray(s)


def with_input_grad(input_grad_fn):
    """``conv_as_matmul`` whose input gradient is ``input_grad_fn(g, x, kernel)``."""

    @jax.custom_vjp
    def conv(x, kernel):
        return conv_as_matmul(x, kernel)

    def forward(x, kernel):
        return conv_as_matmul(x, kernel), (x, kernel)

    def backward(res, g):
        x, kernel = res
        kernel_grad = jax.grad(lambda k: jnp.vdot(conv_as_matmul(x, k), g))(kernel)
        return input_grad_fn(g, x, kernel), kernel_grad

    conv.defvjp(forward, backward)
    return conv


def flipped_kernel_input_grad(g, x, kernel):
    kh, kw = kernel.shape[:2]
    padded = jnp.pad(g, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    return conv_as_matmul(padded, kernel[::-1, ::-1].transpose(0, 1, 3, 2))


def contraction_input_grad(g, x, kernel):
    kh, kw, cin, cout = kernel.shape
    batch, out_h, out_w, _ = g.shape
    patches_grad = (g.reshape(-1, cout) @ kernel.reshape(-1, cout).T).reshape(
        batch, out_h, out_w, kh, kw, cin
    )
    rows = jnp.einsum("bopijc,pjx->boixc", patches_grad, shift_matrix(out_w, kw))
    return jnp.einsum("boixc,oiy->byxc", rows, shift_matrix(out_h, kh))


ALTERNATIVES = {
    "jax_flipped_kernel_igrad_ms": with_input_grad(flipped_kernel_input_grad),
    "jax_contraction_igrad_ms": with_input_grad(contraction_input_grad),
}


def flops(batch: int, in_shape, param_shape, input_grad: bool) -> float:
    """Multiply-adds x 2 of forward, weight gradient and (if needed) input gradient."""
    if len(param_shape) == 2:
        forward = 2 * batch * param_shape[0] * param_shape[1]
    else:
        kh, kw, cin, cout = param_shape
        out_pixels = (in_shape[0] - kh + 1) * (in_shape[1] - kw + 1)
        forward = 2 * batch * out_pixels * kh * kw * cin * cout
    return forward * (3 if input_grad else 2)


def jax_seconds(op, x, w, input_grad: bool, steps: int) -> float:
    def loss(w, x):
        return 0.5 * jnp.sum(jnp.square(op(x, w)))

    grad = jax.grad(loss, argnums=(0, 1) if input_grad else 0)

    def step(carry, _):
        w, x = carry
        if input_grad:
            gw, gx = grad(w, x)
            return (w - 1e-6 * gw, x - 1e-6 * gx), None
        return (w - 1e-6 * grad(w, x), x), None

    run = jax.jit(lambda w, x: jax.lax.scan(step, (w, x), None, length=steps)[0])
    jax.block_until_ready(run(w, x))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(run(w, x))
        best = min(best, time.perf_counter() - t0)
    return best / steps


def torch_seconds(x, w, input_grad: bool, steps: int) -> float:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    if w.ndim == 4:  # NHWC/HWIO -> NCHW/OIHW
        xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()
        wt = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous()
        op = torch.nn.functional.conv2d
    else:
        xt, wt = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(w)).T.contiguous()
        op = torch.nn.functional.linear
    xt.requires_grad_(input_grad)
    wt.requires_grad_(True)
    best = float("inf")
    for _ in range(4):  # the first pass warms up
        t0 = time.perf_counter()
        for _ in range(steps):
            out = op(xt, wt)
            (0.5 * out.square().sum()).backward()
        best = min(best, time.perf_counter() - t0)
    return best / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--alternatives", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = {}
    for name, (in_shape, param_shape, input_grad) in LAYERS.items():
        x = jnp.asarray(rng.normal(size=(args.batch, *in_shape)), jnp.float32)
        w = jnp.asarray(rng.normal(size=param_shape) * 0.05, jnp.float32)
        row = {"gflop": flops(args.batch, in_shape, param_shape, input_grad) / 1e9}
        if len(param_shape) == 4:
            row["jax_matmul_ms"] = 1e3 * jax_seconds(conv_as_matmul, x, w, input_grad, args.steps)
            row["jax_xla_conv_ms"] = 1e3 * jax_seconds(xla_conv, x, w, input_grad, args.steps)
            for key, conv in ALTERNATIVES.items() if args.alternatives and input_grad else ():
                want = jax.grad(lambda x, w=w: jnp.sum(jnp.sin(conv_as_matmul(x, w))))(x)
                got = jax.grad(lambda x, w=w, conv=conv: jnp.sum(jnp.sin(conv(x, w))))(x)
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))
                row[key] = 1e3 * jax_seconds(conv, x, w, input_grad, args.steps)
        else:
            row["jax_matmul_ms"] = 1e3 * jax_seconds(lambda x, w: x @ w, x, w, input_grad, args.steps)
        try:
            row["pytorch_ms"] = 1e3 * torch_seconds(x, w, input_grad, args.steps)
        except ImportError:
            pass
        rows[name] = row
    print(
        f"{f'layer (fwd + bwd, batch {args.batch})':28s} {'GFLOP':>6s} {'jax matmul':>11s} "
        f"{'jax XLA conv':>13s} {'pytorch':>8s}  (ms per step; GFLOP/s in brackets)"
    )
    for name, row in rows.items():
        cells = []
        for key in ("jax_matmul_ms", "jax_xla_conv_ms", "pytorch_ms"):
            ms = row.get(key)
            cells.append(f"{ms:6.1f} ({row['gflop'] / ms * 1e3:3.0f})" if ms else "     -     ")
        print(f"{name:28s} {row['gflop']:6.2f} " + " ".join(f"{c:>13s}" for c in cells))
        for key in ALTERNATIVES:
            if key in row:
                print(f"  alternative input gradient, {key[4:-3]}: {row[key]:.1f} ms")
    out = {
        "command": "python benchmarks/layer_profile.py " + " ".join(os.sys.argv[1:]),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "batch": args.batch,
        "layers": rows,
    }
    print(f"wrote {write_result('layer_profile', out)}")


if __name__ == "__main__":
    main()
