"""A trained run as a file other programs serve: StableHLO (JAX alone), SavedModel or ONNX.

All three take uint8 images ``[B, H, W, C]`` (any batch size) and return class probabilities
``[B, K]``: the run's preprocessing, its model and parameters (the EMA average when the run kept
one) and its test-time augmentation are all inside, so a serving program needs nothing of
flaxmnist. ``classes.json`` next to the export names the classes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from flaxmnist import models
from flaxmnist.data import datasets
from flaxmnist.errors import FlaxmnistError
from flaxmnist.evaluation.loading import LoadedRun
from flaxmnist.storage import files
from flaxmnist.training import step_functions

FORMATS = ("stablehlo", "saved_model", "onnx")
FILE_NAMES = {"stablehlo": "model.stablehlo", "saved_model": "saved_model", "onnx": "model.onnx"}


def probabilities_function(run: LoadedRun) -> Callable[[jax.Array], jax.Array]:
    """``fn(uint8 images [B, H, W, C]) -> probabilities [B, K]`` with the run's weights inside.

    The model is rebuilt with XLA's own convolution and pooling (the same parameters): the
    CPU kernels split batches into chunks, which a batch of unknown size cannot be, and a
    serving program may run on any backend.
    """
    config = ml_collections.ConfigDict(run.config.to_dict())
    config.conv_impl, config.pool_impl = "xla", "xla"
    portable = models.create_model(config, len(run.class_names))
    state = run.state.replace(apply_fn=portable.apply)
    preprocess = functools.partial(step_functions.normalize_images, **run.normalization)
    predict = functools.partial(
        step_functions.predict_step,
        preprocess=preprocess,
        tta_shift=run.config.get("tta_shift", 0),
    )
    return lambda images: jax.nn.softmax(predict(state, images), axis=-1)


def export_run(run: LoadedRun, out_dir: str | Path, fmt: str) -> Path:
    """Writes ``run`` in format ``fmt`` into ``out_dir``, with ``classes.json``.

    Args:
      run: a run from :func:`flaxmnist.load_run`.
      out_dir: the folder to write into (created); an earlier export there is replaced whole.
      fmt: ``"stablehlo"`` (``jax.export``, serialized), ``"saved_model"`` (``jax2tf``, with a
        ``serving_default`` signature taking ``images``) or ``"onnx"`` (``jax2onnx``, input
        ``images``, output ``probabilities``).

    Returns:
      The path of the export.

    Raises:
      FlaxmnistError: for an unknown format, or one whose converter is not installed.
    """
    if fmt not in FORMATS:
        raise FlaxmnistError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / FILE_NAMES[fmt]
    if fmt == "stablehlo":
        files.write_bytes_atomic(target, stablehlo_bytes(run))
    elif fmt == "onnx":
        files.write_bytes_atomic(target, onnx_bytes(run))
    else:
        write_saved_model(run, target)
    files.write_json_atomic(out_dir / "classes.json", list(run.class_names))
    return target


def stablehlo_bytes(run: LoadedRun) -> bytes:
    """The run serialized by ``jax.export``, for any batch size (``jax.export.deserialize``)."""
    (batch,) = jax.export.symbolic_shape("batch")
    images = jax.ShapeDtypeStruct((batch, *run.image_shape), jnp.uint8)
    exported = jax.export.export(jax.jit(probabilities_function(run)))(images)
    return bytes(exported.serialize())


def write_saved_model(run: LoadedRun, target: Path) -> None:
    """The run as a TensorFlow SavedModel at ``target``, written beside it and then renamed."""
    try:
        tf = datasets.import_tensorflow()
        from jax.experimental import jax2tf  # needs TensorFlow: imported for a SavedModel only
    except ImportError:
        raise FlaxmnistError(
            "a SavedModel needs TensorFlow: pip install -e '.[export]' "
            "(or --format=stablehlo, which needs JAX alone)"
        ) from None
    image_shape = run.image_shape

    convert = jax2tf.convert(
        probabilities_function(run), polymorphic_shapes=[f"(b, {', '.join(map(str, image_shape))})"]
    )
    module = tf.Module()
    module.serve = tf.function(
        convert,
        input_signature=[tf.TensorSpec([None, *image_shape], tf.uint8, name="images")],
        autograph=False,
    )
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
        _replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def onnx_bytes(run: LoadedRun) -> bytes:
    """The run as a serialized ONNX model: uint8 ``images [batch, H, W, C]`` → ``probabilities``.

    Raises:
      FlaxmnistError: when jax2onnx is not installed.
    """
    # jax2onnx converts the JAX function itself; tf2onnx cannot: jax2tf's SavedModel holds the
    # whole model as one XlaCallModule (StableHLO) op.
    try:
        import jax2onnx
    except ImportError:
        raise FlaxmnistError(
            "an ONNX export needs jax2onnx (Python >= 3.11): pip install -e '.[onnx]' "
            "(or --format=stablehlo, which needs JAX alone)"
        ) from None
    images = jax.ShapeDtypeStruct(("batch", *run.image_shape), jnp.uint8)
    function = probabilities_function(run)
    with _quiet_loggers("jax2onnx", "onnx_ir"):  # warnings about its plugins for other libraries
        model = jax2onnx.to_onnx(
            function,
            [images],
            model_name="flaxmnist",
            input_names=["images"],
            output_names=["probabilities"],
        )
    # Its value_info (optional shape annotations) gives some transposed activations their
    # untransposed shapes, which ONNX's checker rejects; runtimes infer the shapes themselves.
    del model.graph.value_info[:]
    return model.SerializeToString()


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Only errors from the loggers ``names`` inside the block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _replace_directory(source: Path, target: Path) -> None:
    """Moves ``source`` to ``target``, an existing ``target`` set aside first and then removed."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(source, target)
    shutil.rmtree(old, ignore_errors=True)


def describe(path: Path) -> str:
    """``saved_model (1.2 MB)``: what was written and its size."""
    size = (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )
    return f"{path} ({size / 1e6:.1f} MB)"
