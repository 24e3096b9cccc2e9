"""Federated algorithms: one module per method, each a factory of pure functions (see ``base``),
listed in ``registry``."""

from fedem_jax.algorithms.base import Algorithm, ClientState, Context, GlobalState, PersonalState, State

__all__ = ["Algorithm", "ClientState", "Context", "GlobalState", "PersonalState", "State"]
