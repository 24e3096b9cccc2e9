"""``python -m fedem_jax.data.make_store FOLDER --n_clients 100000``: write the paper's synthetic
federation as an on-disk store (:mod:`fedem_jax.data.store`), client by client, for
``--dataset store --data_path FOLDER --federation host``."""

from __future__ import annotations

import argparse

from fedem_jax.data.store import write_synthetic_store
from fedem_jax.errors import DataError


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Write the paper's synthetic federation as an on-disk store."
    )
    parser.add_argument("folder", help="the store's folder (must not exist)")
    parser.add_argument("--n_clients", type=int, default=300)
    parser.add_argument("--dim", type=int, default=150)
    parser.add_argument("--n_components", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.4)
    parser.add_argument("--noise_std", type=float, default=0.1)
    parser.add_argument("--n_test_per_client", type=int, default=50)
    parser.add_argument("--seed", type=int, default=12345, help="the data seed (as --data_seed)")
    args = parser.parse_args(argv)
    if min(args.n_clients, args.dim, args.n_components, args.n_test_per_client) < 1 or args.alpha <= 0:
        parser.error("--n_clients, --dim, --n_components, --n_test_per_client must be >= 1 and --alpha > 0")
    try:
        folder = write_synthetic_store(**vars(args))
    except (DataError, OSError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
