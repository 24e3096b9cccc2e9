"""Federated algorithms, each a factory of pure ``init`` / ``round`` / ``evaluate`` functions."""

from fedem_jax.algorithms.fedem import ClientState, FedEM, FedEMState, make_fedem

__all__ = ["ClientState", "FedEM", "FedEMState", "make_fedem"]
