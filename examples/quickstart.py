"""FedEM on the synthetic mixture, step by step with the Python API (notebook style).

    python examples/quickstart.py                 # the paper's synthetic setting, 200 rounds
    python examples/quickstart.py --rounds 10 --clients 30   # a quick look

Builds one session (data, model, compiled round), iterates its evaluation rows, then reads the
mixture weights each client learned and how close they are to the ones the data were drawn from.
"""

import argparse

import numpy as np

import fedem_jax


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--test_per_client", type=int, default=5000)
    args = parser.parse_args(argv)

    cfg = fedem_jax.config(
        "synthetic", n_rounds=args.rounds, n_clients=args.clients, n_test_per_client=args.test_per_client
    )
    session = fedem_jax.Session(cfg, log=print)  # log=print: what it builds, on which layout
    for row in session.rounds(eval_every=max(1, args.rounds // 5)):
        accuracy, bottom = row["test_accuracy"], row["test_accuracy_bottom10"]
        print(f"round {row['round']:4d}: test accuracy {accuracy:.4f}, bottom 10% {bottom:.4f}")

    pi = session.pi  # [clients, components]: how much each client relies on each component
    dominant = np.bincount(pi.argmax(axis=1), minlength=pi.shape[1])
    print(f"clients per dominant component: {dominant.tolist()}")
    print(f"distance of the learned pi to the true one (TV, 0 = exact): {row['pi_tv_to_truth']:.3f}")
    return session.summary()


if __name__ == "__main__":
    main()
