"""fedem_jax: FedEM (Marfoq et al., NeurIPS 2021) as pure, jitted JAX functions."""

__version__ = "0.1.0"
