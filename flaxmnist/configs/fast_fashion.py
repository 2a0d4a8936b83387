"""`fast_fashion`: the shortest wall time to >= 92.0 % Fashion-MNIST test accuracy on a CPU.

`resnet_small` (78,090 params: the ResNet at 16/32/64 channels, about the convnet's compute), all
60,000 training images, Adam at a 3e-3 peak with warmup + cosine, batch 128, 6 epochs, no
augmentation (at this length flips and shifts cost accuracy, and `convnet_bn` stays under 92 %;
how the recipe was chosen: docs/models.md; what it reaches: experiments/results/reproduction.md).
"""

from flaxmnist.configs.default import with_overrides


def get_config():
    """The fast_fashion preset."""
    return with_overrides(
        dataset="fashion_mnist",
        model="resnet_small",
        batch_size=128,
        learning_rate=3e-3,
        schedule="warmup_cosine",
        warmup_epochs=0.2,
        num_epochs=6,
        validation_fraction=0.0,
    )
