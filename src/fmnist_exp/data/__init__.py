"""Fashion-MNIST from its IDX files: found, verified, read and split."""
