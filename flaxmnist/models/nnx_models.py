"""Flax NNX models: a user's ``nnx.Module`` class trained by the one Linen ``train_step``.

Mechanism: Flax's bridge (``flax.nnx.bridge.ToLinen``) wraps the class as a Linen module, because
then ``init`` / ``apply``, the ``params`` and ``batch_stats`` collections and the ``dropout`` rng
of the existing steps, checkpoints, multi-device sharding and exports work unchanged.

How the bridge maps an ``nnx.Module`` (flax 0.12): the module is built afresh in every traced call
(at ``apply`` as shapes, see :func:`_construct`) and loaded from the Linen variables;
``nnx.Param`` is the ``params`` collection, ``nnx.BatchStat`` ``batch_stats`` (written back where
the step makes it mutable), and RNG state is never stored: each call builds ``nnx.Rngs`` from the
Linen rng streams of that call, so dropout follows the step's key. :class:`NNXClassifier`
switches the module with ``module.train()`` / ``module.eval()`` (Dropout's ``deterministic``,
BatchNorm's ``use_running_average``) and passes ``train`` on where its ``__call__`` declares it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import FrozenDict
from flax.nnx import bridge

from flaxmnist.errors import ConfigError


def _declares(function: Any, name: str) -> bool:
    """Whether ``function``'s signature has a parameter called ``name``."""
    return name in inspect.signature(function).parameters


def _construct(nnx_class: type[nnx.Module], /, *, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
    """``nnx_class(**kwargs, rngs=...)`` as the bridge builds it, at ``init`` or at ``apply``.

    The bridge passes ``init`` the Linen call's streams (``params`` alone, as ``init(key, ...)``
    makes them) and every ``apply`` those plus ``default``. At ``init`` a ``default`` drawn from
    ``params`` covers the streams a constructor forks (``nnx.Dropout(..., rngs=rngs)`` forks
    ``dropout``). At ``apply`` the bridge loads every variable next, so the module is built as
    shapes, running no initialiser (dead code that jax.export and jax2tf would keep), and
    each RNG stream it keeps starts from a key of this call's stream of its name.
    """
    streams = set(rngs)
    if "default" not in streams:
        return nnx_class(**kwargs, rngs=nnx.Rngs(rngs.params(), **{s: rngs[s] for s in streams}))
    module = nnx.eval_shape(lambda: nnx_class(**kwargs, rngs=nnx.Rngs(**dict.fromkeys(streams, 0))))
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.RngStream):
            node.key.set_value(rngs[node.tag]())
            node.count.set_value(jnp.zeros((), jnp.uint32))
    return module


def _forward(module: nnx.Module, images: jax.Array, train: bool) -> jax.Array:
    """Runs ``module`` on ``images`` in training or inference mode (the bridge's method)."""
    if train:
        module.train()
    else:
        module.eval()
    if _declares(type(module).__call__, "train"):
        return module(images, train=train)
    return module(images)


class NNXClassifier(bridge.ToLinen):
    """An ``nnx.Module`` classifier as a Linen module: ``apply(variables, images, train=...)``.

    ``nnx_class`` is ``functools.partial(_construct, the class)``; ``num_classes`` is the width
    its logits must have (a module returning another is refused).
    """

    num_classes: int = 10

    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """Float32 logits [N, num_classes] for images [N, H, W, C]."""
        logits = super().__call__(images, train, nnx_method=_forward)
        if logits.ndim != 2 or logits.shape[-1] != self.num_classes:
            raise ConfigError(
                f"the nnx.Module {self.nnx_class.args[0].__name__} returns an array of shape "
                f"{tuple(logits.shape)}; expected logits [batch, {self.num_classes}]"
            )
        return logits.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class NNXModel:
    """A registered ``nnx.Module`` class and the keyword arguments its constructor gets."""

    nnx_class: type[nnx.Module]
    kwargs: Mapping[str, Any]

    def build(self, num_classes: int) -> NNXClassifier:
        """The Linen module of this model; ``num_classes`` also reaches a constructor taking it."""
        kwargs = dict(self.kwargs)
        if _declares(self.nnx_class.__init__, "num_classes"):
            kwargs["num_classes"] = num_classes
        return NNXClassifier(
            functools.partial(_construct, self.nnx_class),
            kwargs=FrozenDict(kwargs),
            num_classes=num_classes,
        )


def checked_model(name: str, nnx_class: Any, kwargs: Mapping[str, Any]) -> NNXModel:
    """``NNXModel(nnx_class, kwargs)`` once the class and its arguments are fit to train.

    Raises:
      TypeError: in one line naming ``name``, when ``nnx_class`` is no ``nnx.Module`` class, its
        constructor takes no ``rngs``, or ``kwargs`` do not fit it (``num_classes`` comes from
        the dataset, never from ``kwargs``).
    """
    where = f"register_nnx({name!r})"
    if not (isinstance(nnx_class, type) and issubclass(nnx_class, nnx.Module)):
        raise TypeError(f"{where}: {nnx_class!r} is not an nnx.Module class")
    if "num_classes" in kwargs:
        raise TypeError(f"{where}: num_classes comes from the dataset; do not pass it")
    try:
        inspect.signature(nnx_class.__init__).bind_partial(None, rngs=None, **kwargs)
    except TypeError as e:
        raise TypeError(f"{where}: {nnx_class.__name__}(rngs=..., **kwargs) fails: {e}") from None
    return NNXModel(nnx_class, FrozenDict(kwargs))
