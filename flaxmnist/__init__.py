"""flaxmnist: pure-functional JAX/Flax training of MNIST-family classifiers."""

__version__ = "0.1.0"
