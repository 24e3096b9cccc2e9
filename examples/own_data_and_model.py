"""Your own data (NumPy arrays, one pair per client) and your own flax model, through a Session.

    python examples/own_data_and_model.py

The clients here hold 2-D points labelled by one of two rules (each client mixes the two in its
own proportion), the situation FedEM's mixture is made for; replace ``make_clients`` with yours.
"""

import argparse

import flax.linen as nn
import numpy as np

import fedem_jax


class TwoLayerNet(nn.Module):
    """Any flax module mapping a batch of inputs to ``output_dim`` logits will do."""

    output_dim: int = 2

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x.reshape((x.shape[0], -1))))
        return nn.Dense(self.output_dim)(x)


def make_clients(n_clients: int, n_samples: int, seed: int = 0):
    """Per client ``(x [n, 2] float32, y [n] int32)``; half the clients mostly follow rule A."""
    rng = np.random.default_rng(seed)
    clients = []
    for c in range(n_clients):
        x = rng.normal(size=(n_samples, 2)).astype(np.float32)
        rule_a = rng.random(n_samples) < (0.9 if c % 2 else 0.1)
        y = np.where(rule_a, x[:, 0] > 0, x[:, 1] > 0).astype(np.int32)
        clients.append((x, y))
    return clients


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args(argv)

    train = make_clients(args.clients, 80, seed=0)
    test = make_clients(args.clients, 40, seed=1)
    data = fedem_jax.FederatedData(
        "two-rules",
        train=fedem_jax.build_split([x for x, _ in train], [y for _, y in train]),
        test=fedem_jax.build_split([x for x, _ in test], [y for _, y in test]),
        task=fedem_jax.Task(num_classes=2),
    )
    # The npz presets are those for data of your own; lists of settings would make a sweep.
    cfg = fedem_jax.config("npz", n_learners=2, n_rounds=args.rounds, lr=0.1, lr_scheduler="constant")
    session = fedem_jax.Session(cfg, data, model=TwoLayerNet(output_dim=2))
    rows = list(session.rounds(eval_every=max(1, args.rounds // 5)))
    for row in rows:
        print(f"round {row['round']:3d}: test accuracy {row['test_accuracy']:.3f}")
    print("mixture weights of the first four clients:\n", np.round(session.pi[:4], 2))
    return session.summary()


if __name__ == "__main__":
    main()
