"""How clients and learners are executed: vmap, chunks or a sequential loop, and the device mesh."""

from fedem_jax.execution.layout import Layout

__all__ = ["Layout"]
