"""Per-example classification losses and the registry that resolves ``config.loss``.

A loss is a pure function ``fn(logits, labels, **options) -> per-example loss [N]`` where
``logits`` is float [N, K] and ``labels`` int [N]; options are keyword-only. Register your own from
anywhere (e.g. a file in ``experiments/`` named in ``--config.import_modules``)::

    from flaxmnist import losses

    @losses.register("my_loss")
    def my_loss(logits, labels, *, temperature=1.0):
        ...

A loss whose value changes during training (a schedule) declares the keyword-only parameter
``step``: the optimizer step, i.e. the number of updates done so far (0 for the first batch), an
int32 scalar array (traced under ``jit``: compute with ``jnp``, not Python ``if``)::

    @losses.register("annealed")
    def annealed(logits, labels, *, step, start=1.0, steps=1000):
        temperature = start + (1.0 - start) * jnp.minimum(step / steps, 1.0)
        ...

:func:`get_loss` gives every loss the same signature ``fn(logits, labels, *, step=0)`` and passes
``step`` on only to losses that declare it. ``step`` is reserved: it cannot be a loss option.
"""

from __future__ import annotations

import ast
import functools
import inspect
from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp
import optax

from flaxmnist import config_schema
from flaxmnist.errors import ConfigError
from flaxmnist.registry import Registry

LossFn = Callable[..., jax.Array]  # a registered loss: fn(logits, labels, **options)
LOSSES: Registry[LossFn] = Registry("loss")


def register(name: str) -> Callable[[LossFn], LossFn]:
    """A decorator that registers a loss under ``name``, for ``--config.loss=name``.

    Args:
      name: the config value that selects the loss; a name can be registered once.

    Returns:
      A decorator returning the function unchanged.

    Example:
      >>> import optax
      >>> from flaxmnist import losses
      >>> @losses.register("doc_tempered")
      ... def tempered(logits, labels, *, temperature=1.0):
      ...     return optax.softmax_cross_entropy_with_integer_labels(logits / temperature, labels)
      >>> loss = losses.get_loss("doc_tempered", "temperature=2.0")
    """
    return LOSSES.register(name)


class BoundLoss(Protocol):
    """A loss with its options bound, as :func:`get_loss` returns it."""

    def __call__(
        self, logits: jax.Array, labels: jax.Array, *, step: jax.Array | int = 0
    ) -> jax.Array:
        """Per-example loss [N] of ``logits`` [N, K] and ``labels`` [N] at optimizer ``step``."""
        ...


@register("cross_entropy")
def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Sparse (integer-label) softmax cross-entropy, Keras ``sparse_categorical_crossentropy``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


@register("categorical_cross_entropy")
def categorical_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0
) -> jax.Array:
    """Cross-entropy against one-hot targets, Keras ``categorical_crossentropy``.

    ``label_smoothing`` moves that much probability mass from the true class to a uniform
    distribution over all classes: target = one_hot * (1 - s) + s / K.
    """
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return optax.softmax_cross_entropy(logits, optax.smooth_labels(targets, label_smoothing))


@register("label_smoothing")
def label_smoothed_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, smoothing: float = 0.1
) -> jax.Array:
    """Cross-entropy with label smoothing (default 0.1)."""
    return categorical_cross_entropy(logits, labels, label_smoothing=smoothing)


def parse_options(text: str) -> dict[str, object]:
    """Parses ``"name=value,name=value"`` (values as Python literals) into keyword options."""
    return {
        name: _literal_or_text(value)
        for name, value in config_schema.option_items("loss_options", text)
    }


def _literal_or_text(value: str) -> object:
    """``value`` as a Python literal (``0.1``, ``True``, ``(1, 2)``), or as the text itself."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def get_loss(name: str, options: str = "") -> BoundLoss:
    """The registered loss ``name`` with keyword ``options`` bound.

    Args:
      name: a registered loss (``config.loss``): ``cross_entropy``, ``label_smoothing``, ...
      options: ``"key=value,key=value"`` (``config.loss_options``), Python literals.

    Returns:
      ``fn(logits, labels, *, step=0)`` giving the per-example loss [N] of float logits [N, K]
      and int labels [N]; ``step`` reaches the loss only if it declares it.

    Raises:
      ConfigError: for an unknown name, an option the loss rejects, or an option named ``step``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flaxmnist import losses
      >>> loss = losses.get_loss("label_smoothing", "smoothing=0.1")
      >>> per_example = loss(jnp.zeros((2, 10)), jnp.array([3, 7]))  # uniform logits: ln 10
      >>> print(per_example.shape, f"{float(per_example[0]):.4f}")
      (2,) 2.3026
    """
    fn = LOSSES.get(name)
    kwargs = parse_options(options)
    if "step" in kwargs:
        raise ConfigError(f"loss {name!r}: 'step' is the optimizer step, not a loss option")
    bound = functools.partial(fn, **kwargs)
    takes_step = "step" in inspect.signature(fn).parameters

    def loss(logits: jax.Array, labels: jax.Array, *, step: jax.Array | int = 0) -> jax.Array:
        return bound(logits, labels, step=step) if takes_step else bound(logits, labels)

    try:
        # Trace once (no computation) so that a bad option name fails now, not mid-training.
        logits, labels = (
            jax.ShapeDtypeStruct((1, 2), jnp.float32),
            jax.ShapeDtypeStruct((1,), jnp.int32),
        )
        jax.eval_shape(loss, logits, labels)
    except TypeError as e:
        raise ConfigError(f"loss {name!r} rejects options {kwargs}: {e}") from None
    return loss
