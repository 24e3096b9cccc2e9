"""A federated method of your own, defined outside the package and registered.

    python examples/own_method.py                         # trains it through Session and run
    python -m fedem_jax.main --plugin examples/own_method.py --method HalfAvg --step 0.3

HalfAvg is FedAvg whose server moves only part of the way (``--step``) toward the clients'
average. A method is a factory ``(Context, hyperparameters) -> Algorithm`` of pure functions, its
hyperparameters (a frozen dataclass: each field becomes a flag) and its capabilities.
"""

import argparse
import dataclasses

import jax

import fedem_jax
from fedem_jax.algorithms.base import GlobalState, all_finite, round_metrics
from fedem_jax.algorithms.fedem import ServerHyperparams, make_fedem
from fedem_jax.errors import check


@dataclasses.dataclass(frozen=True)
class HalfHyperparams:
    step: float = fedem_jax.hyperparam(0.5, "HalfAvg: fraction of the averaged update applied")

    def validate(self):
        check(0 < self.step <= 1, f"--step must be in (0, 1], got {self.step}")


def make_half_avg(ctx: fedem_jax.Context, hp: HalfHyperparams) -> fedem_jax.Algorithm:
    fedavg = make_fedem(ctx, ServerHyperparams())  # its init, evaluation and unseen clients

    def round_fn(state: GlobalState, train):  # one block of clients
        key = ctx.round_key(state.round)
        participates = ctx.participants(key, train)
        result = ctx.update.train(
            state.clients, train, jax.random.fold_in(key, 1), participates,
            start=state.params, agg_weights=ctx.client_weights(train),
        )  # fmt: skip
        delta = ctx.layout.client_sum(result.delta_sum)  # the sum over every block of clients
        params = jax.tree.map(lambda p, d: p + hp.step * d, state.params, delta)
        new = state.replace(params=params, clients=result.client_state(state.clients), round=state.round + 1)
        return new, round_metrics(ctx, participates, finite=all_finite(params))

    return fedavg._replace(round=round_fn)


HALF_AVG = fedem_jax.Method(
    "HalfAvg", make_half_avg, "FedAvg with a damped server step", HalfHyperparams,
    fedem_jax.Capabilities(unseen=True),
)  # fmt: skip
METHODS = (HALF_AVG,)  # what --plugin registers (the registration below is the same object)
fedem_jax.register(HALF_AVG)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args(argv)
    common = dict(
        n_rounds=args.rounds, n_clients=args.clients, n_test_per_client=200, lr_scheduler="constant"
    )

    session = fedem_jax.Session(fedem_jax.config("synthetic", method="HalfAvg", step=0.3, **common))
    last = list(session.rounds())[-1]
    print(f"HalfAvg (step 0.3) through a Session: test accuracy {last['test_accuracy']:.4f}")
    cfg = fedem_jax.config("synthetic", method="FedAvg", **common)
    fedavg = fedem_jax.run(cfg, callbacks=[], log=None)  # run, writing and printing nothing
    print(f"FedAvg through run:                   test accuracy {fedavg['test_accuracy']:.4f}")
    return session.summary()


if __name__ == "__main__":
    main()
