"""User-facing errors: their messages are printed as one line, without a traceback."""


class ConfigError(ValueError):
    """A configuration problem; ``main`` exits with code 2."""


def check(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


class PlotError(Exception):
    """Something in the workdirs cannot be plotted; ``python -m fedem_jax.plot`` exits with code 1."""
