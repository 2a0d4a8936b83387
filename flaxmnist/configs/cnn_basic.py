"""`cnn_basic` (225,034 params), Fashion-MNIST: Adam, batch 64, early stopping (ref. ~91-93 %)."""

from flaxmnist.configs.default import with_keras_early_stopping, with_overrides


def get_config():
    """The cnn_basic preset."""
    config = with_overrides(
        dataset="fashion_mnist",
        model="cnn_basic",
        loss="cross_entropy",
        batch_size=64,
        num_epochs=20,
    )
    return with_keras_early_stopping(config)
