"""`cnn_deep` (330,858 params + BatchNorm statistics), Fashion-MNIST: Adam, batch 64, early stop."""

from flaxmnist.configs.default import with_keras_early_stopping, with_overrides


def get_config():
    """The cnn_deep preset."""
    config = with_overrides(
        dataset="fashion_mnist",
        model="cnn_deep",
        loss="cross_entropy",
        batch_size=64,
        num_epochs=20,
    )
    return with_keras_early_stopping(config)
