"""A tiny NumPy transcription of FedEM's formulas (FEDEM_SPEC.md sections 2-3), used as ground truth.

Written independently of the JAX code: plain loops, float64, no shared helpers.
"""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def bce_with_logits(z, y):
    """-[y log s(z) + (1 - y) log(1 - s(z))]."""
    return np.logaddexp(0.0, z) - y * z


def softmax_ce(logits, y):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -log_probs[np.arange(len(y)), y]


def e_step(pi, losses):
    """q[m, i] = pi_m exp(-l_m(i)) / sum_k pi_k exp(-l_k(i))."""
    unnorm = pi[:, None] * np.exp(-losses)
    return unnorm / unnorm.sum(axis=0, keepdims=True)


def weighted_batch_loss(losses, q):
    return (q * losses).sum() / losses.shape[1]


def linear_local_sgd(
    W, b, x, y, q, lr, momentum, weight_decay, epochs, buf=(None, None), mu=0.0, anchor=None
):
    """Full-batch local epochs of M linear binary learners on one client; returns (W, b, buf).

    ``mu`` adds ``mu * (theta - anchor)`` to the gradient (FedProx: anchor = the start)."""
    Wc, bc = W.copy(), b.copy()
    if anchor is not None:
        W, b = anchor
    buf_W, buf_b = buf
    for _ in range(epochs):
        grad_W, grad_b = np.zeros_like(Wc), np.zeros_like(bc)
        for m in range(len(W)):
            residual = sigmoid(x @ Wc[m] + bc[m]) - y
            grad_W[m] = (q[m] * residual) @ x / len(y)
            grad_b[m] = (q[m] * residual).sum() / len(y)
        grad_W += mu * (Wc - W) + weight_decay * Wc
        grad_b += mu * (bc - b) + weight_decay * bc
        if momentum > 0:
            buf_W = grad_W if buf_W is None else momentum * buf_W + grad_W
            buf_b = grad_b if buf_b is None else momentum * buf_b + grad_b
            grad_W, grad_b = buf_W, buf_b
        Wc, bc = Wc - lr * grad_W, bc - lr * grad_b
    return Wc, bc, (buf_W, buf_b)


def linear_fedem_round(W, b, pis, momenta, xs, ys, lr, momentum, weight_decay, epochs, participants):
    """One FedEM round for M linear binary learners, full-batch local steps (batch >= n_t).

    Args:
      W: [M, d], b: [M] global components.
      pis: [C, M]; momenta: list per client of (buf_W [M, d], buf_b [M]) or None.
      xs, ys: per-client arrays.
      participants: [C] booleans.
    Returns new (W, b, pis, momenta).
    """
    n = np.array([len(y) for y in ys], dtype=np.float64)
    p = n / n.sum()
    new_W, new_b = W.copy(), b.copy()
    new_pis, new_momenta = pis.copy(), list(momenta)
    for c, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if not participants[c]:
            continue
        losses = np.stack([bce_with_logits(x @ W[m] + b[m], y) for m in range(len(W))])
        q = e_step(pis[c], losses)
        new_pis[c] = q.mean(axis=1)
        Wc, bc = W.copy(), b.copy()
        buf_W, buf_b = momenta[c] if momenta[c] is not None else (None, None)
        for _ in range(epochs):
            grad_W = np.zeros_like(Wc)
            grad_b = np.zeros_like(bc)
            for m in range(len(W)):
                residual = sigmoid(x @ Wc[m] + bc[m]) - y
                grad_W[m] = (q[m] * residual) @ x / len(y)
                grad_b[m] = (q[m] * residual).sum() / len(y)
            grad_W += weight_decay * Wc  # decay before momentum, as torch.optim.SGD
            grad_b += weight_decay * bc
            if momentum > 0:
                buf_W = grad_W if buf_W is None else momentum * buf_W + grad_W
                buf_b = grad_b if buf_b is None else momentum * buf_b + grad_b
                grad_W, grad_b = buf_W, buf_b
            Wc = Wc - lr * grad_W
            bc = bc - lr * grad_b
        new_momenta[c] = (buf_W, buf_b)
        new_W += p[c] * (Wc - W)
        new_b += p[c] * (bc - b)
    return new_W, new_b, new_pis, new_momenta


def linear_grad(W, b, x, y):
    """Gradient of the mean BCE of one linear binary model (W [d], b scalar)."""
    residual = sigmoid(x @ W + b) - y
    return residual @ x / len(y), residual.sum() / len(y)


def mean_bce(W, b, x, y):
    return bce_with_logits(x @ W + b, y).mean()


def apfl_local(w, bw, v, bv, alpha, x, y, lr, weight_decay, epochs, learn_alpha=True):
    """Deng et al.'s APFL client steps, full batch, no momentum; returns (w, bw, v, bv, alpha)."""
    for _ in range(epochs):
        gw, gbw = linear_grad(w, bw, x, y)
        mixed_W, mixed_b = alpha * v + (1 - alpha) * w, alpha * bv + (1 - alpha) * bw
        gm, gbm = linear_grad(mixed_W, mixed_b, x, y)
        g_alpha = (v - w) @ gm + (bv - bw) * gbm
        w, bw = w - lr * (gw + weight_decay * w), bw - lr * (gbw + weight_decay * bw)
        v, bv = v - lr * (alpha * gm + weight_decay * v), bv - lr * (alpha * gbm + weight_decay * bv)
        if learn_alpha:
            alpha = float(np.clip(alpha - lr * g_alpha, 0.0, 1.0))
    return w, bw, v, bv, alpha
