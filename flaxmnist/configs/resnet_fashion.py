"""`resnet_wide` (2,778,762 params), Fashion-MNIST: the resnet_mnist recipe, 60 epochs."""

from flaxmnist.configs.default import with_overrides
from flaxmnist.configs.resnet_mnist import RESNET_RECIPE


def get_config():
    """The resnet_fashion preset: horizontal flips, shifts and random erasing, 60 epochs."""
    return with_overrides(
        **RESNET_RECIPE,
        dataset="fashion_mnist",
        model="resnet_wide",
        num_epochs=60,
        augment=dict(flip=True, translate=0.1, cutout=8, cutout_prob=0.5),
    )
