"""Flax Linen classifiers: every reference architecture, exact parameter counts, one registry.

Two generic modules cover the reference set: :class:`MLP` (Flatten → Dense blocks → Dense head)
and :class:`CNN` (blocks of stride-1 3×3 convolutions each followed by a 2×2 max-pool, then Dense
layers); :class:`ResNet` (residual blocks, global average pooling) adds stronger models. Each
registered name is a configuration of one of them; see the tables in docs/models.md.
All models take ``train`` to switch Dropout and BatchNorm between training and inference, and return
float32 logits. Kernels use Glorot-uniform initialisation and biases zeros, as Keras does.
A user's ``nnx.Module`` class joins the registry with :func:`register_nnx` and trains as a Linen
module through Flax's bridge (:mod:`flaxmnist.models.nnx_models`, docs/nnx.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flaxmnist import config_schema
from flaxmnist.errors import ConfigError
from flaxmnist.models import layers
from flaxmnist.registry import Registry

if TYPE_CHECKING:  # flax.nnx is imported by register_nnx, not by every Linen run
    from flaxmnist.models import nnx_models

# The config's names (config_schema declares them) mapped to the flax.linen functions and JAX
# dtypes of the same names.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    name: getattr(nn, name) for name in config_schema.choices("activation")
}
# Activations that max-pool commutes with: pool(f(x)) == f(pool(x)), gradients included.
NON_DECREASING_ACTIVATIONS = tuple(
    ACTIVATIONS[name] for name in ("relu", "elu", "selu", "tanh", "sigmoid", "leaky_relu")
)
DTYPES = {name: getattr(jnp, name) for name in config_schema.choices("dtype")}
# Keras BatchNormalization defaults, so cnn_deep matches its reference.
BATCH_NORM_MOMENTUM = 0.99
BATCH_NORM_EPSILON = 1e-3

# A Linen module factory taking create_model's keywords, or a registered nnx.Module class.
MODELS: Registry[Callable[..., nn.Module] | nnx_models.NNXModel] = Registry("model")


class Classifier(nn.Module):
    """Options every model shares: classes, activation, layer implementations, compute dtype."""

    num_classes: int = 10
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    conv_impl: str = "auto"
    pool_impl: str = "auto"
    dtype: jnp.dtype | None = None
    batch_norm_momentum: float = BATCH_NORM_MOMENTUM

    def dense(self, features: int, name: str | None = None) -> nn.Dense:
        """A Dense layer with Keras-style initialisation in the compute dtype."""
        return nn.Dense(
            features, dtype=self.dtype, kernel_init=nn.initializers.glorot_uniform(), name=name
        )

    def batch_norm(self, x: jax.Array, train: bool) -> jax.Array:
        """BatchNorm (Keras ε, ``batch_norm_momentum``); running averages when not training."""
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=self.batch_norm_momentum,
            epsilon=BATCH_NORM_EPSILON,
            dtype=self.dtype,
        )(x)

    def head(self, x: jax.Array) -> jax.Array:
        """The output layer, returning float32 logits."""
        return self.dense(self.num_classes, name="head")(x).astype(jnp.float32)


class MLP(Classifier):
    """Flatten → (Dense → activation → Dropout) per hidden width → Dense logits."""

    hidden: tuple[int, ...] = (128,)
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns logits [N, num_classes] for images [N, H, W, C]."""
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = self.activation(self.dense(width)(x))
            if self.dropout_rate:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return self.head(x)


class CNN(Classifier):
    """Conv blocks (each: 3×3 convs, optional BatchNorm, 2×2 max-pool, Dropout) → Dense layers.

    ``blocks`` lists the conv widths of each block; ``hidden`` the Dense widths after Flatten;
    ``head_dropout`` applies right before the output layer (the Keras convnet's Dropout(0.5)).
    ``pool_first`` max-pools right after a block's last conv, before its activation and
    BatchNorm, which then touch 4× fewer values (with BatchNorm a slightly different model).
    Without BatchNorm and with a non-decreasing activation (ReLU and most others) the pool moves
    before the activation anyway: max-pool commutes with it, so the function is the same.
    """

    blocks: tuple[tuple[int, ...], ...] = ((32,),)
    hidden: tuple[int, ...] = ()
    batch_norm_layers: bool = False
    block_dropout: float = 0.0
    head_dropout: float = 0.0
    padding: str = "VALID"
    pool_first: bool = False

    def conv_block(self, x: jax.Array, widths: tuple[int, ...], train: bool) -> jax.Array:
        """One block: conv → activation (→ BatchNorm) per width, then max-pool and dropout.

        The max-pool runs inside the block's last convolution (one fused pass on CPU) when it
        would come right after it: with ``pool_first``, or when only a non-decreasing activation
        lies between them (max-pool commutes with it: the same values and gradients).
        """
        pool_in_conv = self.pool_first or (
            not self.batch_norm_layers and self.activation in NON_DECREASING_ACTIVATIONS
        )
        for i, width in enumerate(widths):
            pool_here = pool_in_conv and i == len(widths) - 1
            x = layers.Conv(
                width,
                padding=self.padding,
                impl=self.conv_impl,
                pool_window=2 if pool_here else 1,
                pool_impl=self.pool_impl,
                dtype=self.dtype,
            )(x)
            x = self.activation(x)
            if self.batch_norm_layers:
                x = self.batch_norm(x, train)
        if not pool_in_conv:
            x = layers.max_pool(x, 2, impl=self.pool_impl)
        if self.block_dropout:
            x = nn.Dropout(self.block_dropout, deterministic=not train)(x)
        return x

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns logits [N, num_classes] for images [N, H, W, C]."""
        for widths in self.blocks:
            x = self.conv_block(x, widths, train)
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = self.activation(self.dense(width)(x))
            if self.batch_norm_layers:
                x = self.batch_norm(x, train)
        if self.head_dropout:
            x = nn.Dropout(self.head_dropout, deterministic=not train)(x)
        return self.head(x)


class ResNet(Classifier):
    """Stem (3×3 conv → BatchNorm → activation) → stages of basic residual blocks → GAP → Dense.

    Each stage holds ``blocks_per_stage`` post-activation blocks of ``stage_widths[i]`` channels
    (3×3 convs, 'SAME' padding). A 2×2 max-pool halves the resolution before every stage (the
    convolutions are stride 1), the first one after the stem as in ImageNet ResNets: a 28×28
    input runs its stages at 14×14, 7×7 and 3×3, at a fraction of the cost of full resolution.
    Global average pooling and optional Dropout precede the head. BatchNorm momentum defaults to
    0.9 so that the running averages keep up in short runs.
    """

    stage_widths: tuple[int, ...] = (32, 64, 128)
    blocks_per_stage: int = 1
    dropout_rate: float = 0.0
    batch_norm_momentum: float = 0.9

    def conv_bn(self, x: jax.Array, width: int, train: bool, kernel_size: int = 3) -> jax.Array:
        """A 'SAME' ``kernel_size``² convolution followed by BatchNorm."""
        conv = layers.Conv(
            width,
            (kernel_size, kernel_size),
            padding="SAME",
            impl=self.conv_impl,
            dtype=self.dtype,
        )
        return self.batch_norm(conv(x), train)

    def residual_block(self, x: jax.Array, width: int, train: bool) -> jax.Array:
        """One basic block: conv → BN → activation → conv → BN, + shortcut, → activation.

        The shortcut is the identity, or a 1×1 conv → BN projection when the width changes.
        """
        y = self.conv_bn(self.activation(self.conv_bn(x, width, train)), width, train)
        if x.shape[-1] != width:
            x = self.conv_bn(x, width, train, kernel_size=1)
        return self.activation(y + x)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns logits [N, num_classes] for images [N, H, W, C]."""
        x = self.activation(self.conv_bn(x, self.stage_widths[0], train))
        for width in self.stage_widths:
            x = layers.max_pool(x, 2, impl=self.pool_impl)
            for _ in range(self.blocks_per_stage):
                x = self.residual_block(x, width, train)
        x = jnp.mean(x, axis=(1, 2))
        if self.dropout_rate:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return self.head(x)


def _register(name: str, module: type[nn.Module], **architecture) -> None:
    MODELS.add(name, functools.partial(module, **architecture))


# The reference architectures (docs/models.md lists them); parameter counts are for 28×28×1 inputs.
_register("dense", MLP, hidden=(128,))  # 101,770
_register("mlp", MLP, hidden=(128, 64))  # 109,386
_register("mlp_dropout", MLP, hidden=(128, 64), dropout_rate=0.3)  # 109,386
_register("cnn_simple", CNN, blocks=((32,),))  # 54,410
_register("convnet", CNN, blocks=((32,), (64,)), head_dropout=0.5)  # 34,826
# The convnet with BatchNorm after each convolution and no dropout.
_register("convnet_bn", CNN, blocks=((32,), (64,)), batch_norm_layers=True)  # 35,018
# Half its widths, pooled before BatchNorm: about a quarter of its convolutions' multiply-adds.
_register(
    "convnet_small", CNN, blocks=((16,), (32,)), batch_norm_layers=True, pool_first=True
)  # 12,906
# convnet_small with a Dense 128 layer and BatchNorm momentum 0.9 (running averages that keep up
# in a 2-epoch run): the `fast` preset's model.
_register(
    "convnet_fast",
    CNN,
    blocks=((16,), (32,)),
    hidden=(128,),
    batch_norm_layers=True,
    pool_first=True,
    batch_norm_momentum=0.9,
)  # 108,970
_register("cnn3", CNN, blocks=((64,), (128,), (256,)), hidden=(256,))  # 438,026
_register("cnn_basic", CNN, blocks=((32,), (64,)), hidden=(128,))  # 225,034
_register(
    "cnn_deep",
    CNN,
    blocks=((32, 32), (64, 64)),
    hidden=(256,),
    batch_norm_layers=True,
    block_dropout=0.25,
    head_dropout=0.5,
)
_register(
    "cnn_dropout", CNN, blocks=((32, 64),), hidden=(128,), block_dropout=0.25, head_dropout=0.5
)  # 1,199,882
# Residual networks; counts exclude the BatchNorm statistics (batch_stats).
_register("resnet", ResNet, stage_widths=(32, 64, 128), blocks_per_stage=1)  # 308,746
# A quarter of resnet's compute (about convnet's): the `fast_fashion` candidate.
_register("resnet_small", ResNet, stage_widths=(16, 32, 64), blocks_per_stage=1)  # 78,090
_register(
    "resnet_wide", ResNet, stage_widths=(64, 128, 256), blocks_per_stage=2, dropout_rate=0.3
)  # 2,778,762


def register_nnx(name: str, nnx_class: type, **kwargs) -> None:
    """Registers the ``nnx.Module`` class ``nnx_class`` as model ``name`` (``--config.model``).

    Each model builds ``nnx_class(**kwargs, rngs=rngs)`` (and ``num_classes=`` the dataset's
    class count where the constructor takes it); its ``__call__(images)`` returns logits, in
    training or inference mode as ``module.train()`` / ``module.eval()`` set it, and gets
    ``train=`` too where it declares that parameter (docs/nnx.md).

    Raises:
      TypeError: when ``nnx_class`` is no ``nnx.Module`` class or ``kwargs`` do not fit it.
      ValueError: when ``name`` is already registered.

    Example::

        from flax import nnx
        from flaxmnist import models

        class Linear(nnx.Module):
            def __init__(self, *, rngs: nnx.Rngs):
                self.linear = nnx.Linear(784, 10, rngs=rngs)

            def __call__(self, x):
                return self.linear(x.reshape(x.shape[0], -1))

        models.register_nnx("nnx_linear", Linear)
    """
    from flaxmnist.models import nnx_models

    MODELS.add(name, nnx_models.checked_model(name, nnx_class, kwargs))


def _build_nnx(
    config: ml_collections.ConfigDict, model: nnx_models.NNXModel, num_classes: int
) -> nn.Module:
    """The bridged NNX model; refuses an activation or dtype its own layers would ignore."""
    for field in ("activation", "dtype"):
        default = config_schema.FIELDS_BY_NAME[field].default
        if config[field] != default:
            raise ConfigError(
                f"--config.{field}: model {config.model!r} is an nnx.Module, whose layers "
                f"choose their own {field}; leave it at {default!r}"
            )
    return model.build(num_classes)


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """Builds the Linen model named ``config.model`` with the config's activation and dtype.

    A model registered with :func:`register_nnx` comes wrapped as a Linen module with the same
    ``init`` / ``apply`` (its own layers fix activation and dtype, which must stay at their
    defaults; ``conv_impl`` and ``pool_impl`` do not apply).

    Args:
      config: a run config (``flaxmnist.configs.default.get_config()``); reads ``model``,
        ``activation``, ``dtype``, ``conv_impl`` and ``pool_impl``.
      num_classes: the size of the output layer.

    Returns:
      An unbound ``flax.linen.Module``; ``model.apply(variables, images, train=False)`` maps
      float images [N, H, W, C] to logits [N, num_classes].

    Raises:
      ConfigError: for an unknown model, activation, dtype or layer implementation.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flaxmnist import models
      >>> from flaxmnist.configs import default
      >>> config = default.get_config()
      >>> config.model = "dense"
      >>> model = models.create_model(config, num_classes=10)
      >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
      >>> models.count_params(variables["params"])
      101770
    """
    factory = MODELS.get(config.model)
    for field in ("activation", "dtype", "conv_impl", "pool_impl"):
        config_schema.check(field, config[field])
    if not callable(factory):  # an nnx_models.NNXModel, from register_nnx
        return _build_nnx(config, factory, num_classes)
    return factory(
        num_classes=num_classes,
        activation=ACTIVATIONS[config.activation],
        conv_impl=config.conv_impl,
        pool_impl=config.pool_impl,
        dtype=DTYPES[config.dtype],
    )


def count_params(params) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))


def init_variables(model: nn.Module, image_shape: tuple[int, ...], rng: jax.Array) -> dict:
    """Initialises ``params`` (and ``batch_stats`` where the model has BatchNorm)."""
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    init = jax.jit(functools.partial(model.init, train=False))
    return dict(init({"params": rng}, dummy))
