"""fmnist_exp: a config-driven experiment runner for CNNs on Fashion-MNIST.

Kept free of imports so that `--help`, `--cfg job` and config validation answer without TensorFlow.
"""

__version__ = "0.1.0"
