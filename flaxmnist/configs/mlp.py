"""`mlp` (109,386 params), the Fashion-MNIST "ANN": Adam, one-hot CE, batch 32, early stopping."""

from flaxmnist.configs.default import with_keras_early_stopping, with_overrides


def get_config():
    """The mlp preset."""
    config = with_overrides(
        dataset="fashion_mnist",
        model="mlp",
        loss="categorical_cross_entropy",
        batch_size=32,
        num_epochs=20,
    )
    return with_keras_early_stopping(config)
