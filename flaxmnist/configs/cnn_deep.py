"""`cnn_deep` (330,858 params + BatchNorm stats), Fashion-MNIST: Adam, batch 64, 15 epochs."""

from flaxmnist.configs.default import with_overrides


def get_config():
    """The cnn_deep preset."""
    return with_overrides(dataset="fashion_mnist", model="cnn_deep", batch_size=64, num_epochs=15)
