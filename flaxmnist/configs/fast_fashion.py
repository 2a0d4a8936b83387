"""`fast_fashion`: the shortest wall time to >= 92.0 % Fashion-MNIST test accuracy on a CPU.

`resnet_small` (78,090 params: the ResNet at 16/32/64 channels, about the convnet's compute), the
`fast` recipe (all 60,000 training images, Adam at a 3e-3 peak, warmup + cosine, batch 128) for 6
epochs, no augmentation. Chosen from a sweep on one GPU (README "Fast presets"): 6 epochs gave
92.17 / 92.40 / 92.11 % over seeds 0-2; augmentation (flips, shifts) lost 0.3-1.6 points at this
length, and convnet_bn stayed under 92 % (91.43 % with label smoothing at 10 epochs).
"""

from flaxmnist.configs import fast


def get_config():
    """The fast_fashion preset."""
    config = fast.get_config()
    config.update(dict(dataset="fashion_mnist", model="resnet_small", num_epochs=6))
    return config
