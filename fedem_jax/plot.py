"""``python -m fedem_jax.plot``: see :mod:`fedem_jax.reporting.plot`."""

import sys

from fedem_jax.reporting.plot import main

if __name__ == "__main__":
    sys.exit(main())
