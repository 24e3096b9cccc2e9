"""Per-dataset defaults: one module per dataset, each with ``get_config() -> dict``.

Installed as ``fedem_jax.configs`` (see ``pyproject.toml``). Values are the FedEM paper's
hyperparameters (spec section 5); command-line flags override them.
"""
