"""Pure math of FedEM: losses, EM steps, aggregation, optimizers and the local-update loop."""
