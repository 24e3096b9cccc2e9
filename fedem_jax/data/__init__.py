"""Federated datasets: generators, loaders and client partitioners -> :class:`FederatedData`."""

from fedem_jax.data.federated import ClientSplit, FederatedData, build_split
from fedem_jax.data.registry import load_dataset

__all__ = ["ClientSplit", "FederatedData", "build_split", "load_dataset"]
