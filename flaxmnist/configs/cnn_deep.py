"""`cnn_deep` (330,858 params + BatchNorm statistics), Fashion-MNIST: Adam, batch 64, early stop."""

from flaxmnist.configs.default import fashion_notebook_recipe


def get_config():
    """The cnn_deep preset."""
    return fashion_notebook_recipe("cnn_deep")
