"""Warm starts: initialise a run from another run's trained weights (``--config.init_from=RUN``).

Every parameter whose path and shape match is copied. The output layer (``head``) is kept freshly
initialised when the class names differ — e.g. MNIST digits → Fashion-MNIST garments — since its
rows mean different classes. BatchNorm statistics are copied the same way; optimizer state starts
fresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import traverse_util

from flaxmnist import console
from flaxmnist.errors import FlaxmnistError
from flaxmnist.evaluation import loading
from flaxmnist.training.train_state import TrainState

HEAD = "head"


def merge_matching(target: dict, source: dict, skip_prefix: str | None) -> tuple[dict, list[str]]:
    """``target`` with leaves replaced by same-path, same-shape leaves of ``source``.

    Returns the merged tree and the '/'-joined paths that were copied.
    """
    flat_target = traverse_util.flatten_dict(target, sep="/")
    flat_source = traverse_util.flatten_dict(source, sep="/")
    copied = [
        path
        for path, leaf in flat_target.items()
        if path in flat_source
        and flat_source[path].shape == leaf.shape
        and not (skip_prefix and path.startswith(skip_prefix + "/"))
    ]
    merged = {**flat_target, **{path: flat_source[path] for path in copied}}
    return traverse_util.unflatten_dict(merged, sep="/"), copied


def warm_start(state: TrainState, run_dir: str, class_names: Sequence[str]) -> TrainState:
    """``state`` with the weights of run ``run_dir`` copied in where they fit.

    The source run's plugin modules are not imported: a model only they define must already be
    registered by this run's own ``import_modules``.
    """
    loading.check_names_resolve(
        Path(run_dir),
        loading.read_run_config(Path(run_dir)),
        allow_hint="name those modules in --config.import_modules if you trust that code",
    )
    source = loading.load_run(run_dir)
    same_classes = tuple(source.class_names) == tuple(class_names)
    skip = None if same_classes else HEAD
    params, copied = merge_matching(state.params, source.state.params, skip)
    if not copied:
        raise FlaxmnistError(f"init_from {run_dir}: no parameter of that run fits this model")
    batch_stats, _ = merge_matching(state.batch_stats, source.state.batch_stats or {}, skip)
    total = len(traverse_util.flatten_dict(state.params))
    console.say(
        f"init_from {run_dir}: copied {len(copied)} of {total} parameter arrays"
        + ("" if same_classes else " (new classes: head re-initialised)")
    )
    ema = None if state.ema_params is None else jax.tree_util.tree_map(jnp.copy, params)
    return state.replace(params=params, batch_stats=batch_stats, ema_params=ema)
