"""Hydra discovers plugins under the `hydra_plugins` namespace: this makes `hydra/sweeper=study` known."""
