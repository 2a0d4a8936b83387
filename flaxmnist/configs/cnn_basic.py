"""`cnn_basic` (225,034 params), Fashion-MNIST: Adam, batch 64, early stopping (ref. ~91-93 %)."""

from flaxmnist.configs.default import fashion_notebook_recipe


def get_config():
    """The cnn_basic preset."""
    return fashion_notebook_recipe("cnn_basic")
