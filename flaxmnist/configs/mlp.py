"""`mlp` (109,386 params), the Fashion-MNIST "ANN": Adam, one-hot CE, batch 32, 10 epochs."""

from flaxmnist.configs.default import with_overrides


def get_config():
    """The mlp preset."""
    return with_overrides(
        dataset="fashion_mnist",
        model="mlp",
        loss="categorical_cross_entropy",
        batch_size=32,
        num_epochs=10,
    )
