"""Example of user-side Flax NNX models: registered here, trained from the command line.

python -m flaxmnist.train --config=fast --config.import_modules=experiments/nnx_cnn.py \
        --config.model=nnx_cnn --config.num_epochs=3

``nnx_cnn`` is the official Flax example's NNX CNN, copied unchanged (824,458 parameters, as its
Linen twin in flax/examples/mnist); ``nnx_cnn_bn`` adds BatchNorm and Dropout, which follow
``model.train()`` / ``model.eval()`` as in any NNX training loop; ``nnx_mlp_bn`` is an MLP with
both, which trains in seconds on a CPU, where ``nnx.Conv`` is slow (docs/nnx.md, Limits).
docs/nnx.md says what such a module must accept.
"""

from functools import partial

from flax import nnx

from flaxmnist import models


# From the Flax README's NNX example (github.com/google/flax, October 2025; Apache License 2.0).
class CNN(nnx.Module):  # noqa: D101 (copied unchanged)
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
        self.linear2 = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x):  # noqa: D102
        x = self.avg_pool(nnx.relu(self.conv1(x)))
        x = self.avg_pool(nnx.relu(self.conv2(x)))
        x = x.reshape(x.shape[0], -1)  # flatten
        x = nnx.relu(self.linear1(x))
        x = self.linear2(x)
        return x


class CNNBatchNormDropout(nnx.Module):
    """The CNN with BatchNorm after each convolution and Dropout before the output layer.

    Dropout takes its ``dropout`` stream from the constructor's ``rngs``; BatchNorm momentum 0.9
    lets the running statistics keep up in a run of a few epochs.
    """

    def __init__(self, *, num_classes: int, dropout_rate: float = 0.5, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.norm1 = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.norm2 = nnx.BatchNorm(64, momentum=0.9, rngs=rngs)
        self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.linear2 = nnx.Linear(256, num_classes, rngs=rngs)

    def __call__(self, x):
        """Logits [N, num_classes] for images [N, 28, 28, 1]."""
        x = nnx.avg_pool(nnx.relu(self.norm1(self.conv1(x))), window_shape=(2, 2), strides=(2, 2))
        x = nnx.avg_pool(nnx.relu(self.norm2(self.conv2(x))), window_shape=(2, 2), strides=(2, 2))
        x = nnx.relu(self.linear1(x.reshape(x.shape[0], -1)))
        return self.linear2(self.dropout(x))


class MLPBatchNormDropout(nnx.Module):
    """Two hidden layers of 256 with BatchNorm and Dropout: NNX state, no convolution."""

    def __init__(self, *, num_classes: int, dropout_rate: float = 0.2, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(784, 256, rngs=rngs)
        self.norm1 = nnx.BatchNorm(256, momentum=0.9, rngs=rngs)
        self.linear2 = nnx.Linear(256, 256, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.linear3 = nnx.Linear(256, num_classes, rngs=rngs)

    def __call__(self, x):
        """Logits [N, num_classes] for images [N, 28, 28, 1]."""
        x = nnx.relu(self.norm1(self.linear1(x.reshape(x.shape[0], -1))))
        x = self.dropout(nnx.relu(self.linear2(x)))
        return self.linear3(x)


models.register_nnx("nnx_cnn", CNN)
models.register_nnx("nnx_cnn_bn", CNNBatchNormDropout)
models.register_nnx("nnx_mlp_bn", MLPBatchNormDropout)
