"""`dense` (101,770 params): SGD lr 0.01, batch 64, 5 epochs — reference 96.89 % MNIST test."""

from flaxmnist.configs.default import with_overrides


def get_config():
    """The dense preset."""
    return with_overrides(
        model="dense", optimizer="sgd", learning_rate=0.01, batch_size=64, num_epochs=5
    )
