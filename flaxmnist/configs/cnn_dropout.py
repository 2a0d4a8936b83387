"""`cnn_dropout` (1,199,882 params), Keras mnist_cnn: Adam, batch 128, 12 epochs (ref. > 99 %)."""

from flaxmnist.configs.default import with_overrides


def get_config():
    """The cnn_dropout preset."""
    return with_overrides(model="cnn_dropout", batch_size=128, num_epochs=12)
