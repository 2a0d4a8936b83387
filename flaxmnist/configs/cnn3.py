"""`cnn3` (438,026 params): Adam, batch 32, 5 epochs — reference 98.55 % MNIST test."""

from flaxmnist.configs.default import with_overrides


def get_config():
    """The cnn3 preset."""
    return with_overrides(model="cnn3", batch_size=32, num_epochs=5)
