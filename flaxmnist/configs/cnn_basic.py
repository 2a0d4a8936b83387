"""`cnn_basic` (225,034 params), Fashion-MNIST: Adam, batch 64, 15 epochs — reference ~91–93 %."""

from flaxmnist.configs.default import with_overrides


def get_config():
    """The cnn_basic preset."""
    return with_overrides(dataset="fashion_mnist", model="cnn_basic", batch_size=64, num_epochs=15)
