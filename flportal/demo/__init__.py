"""Demo model and data for the federated-learning portal."""
