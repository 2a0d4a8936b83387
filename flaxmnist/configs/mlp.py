"""`mlp` (109,386 params), the Fashion-MNIST "ANN": Adam, one-hot CE, batch 32, early stopping."""

from flaxmnist.configs.default import fashion_notebook_recipe


def get_config():
    """The mlp preset."""
    return fashion_notebook_recipe("mlp", batch_size=32, loss="categorical_cross_entropy")
