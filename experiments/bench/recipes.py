"""The benchmark's models and recipes, framework-neutral: one description, three frameworks.

:data:`ARCHITECTURES` holds the flaxmnist models the benchmark also trains in Keras and PyTorch;
:func:`layers` turns one into a list of :data:`Layer` operations that ``keras_recipe`` and
``torch_recipe`` both build their twin from (``tests/test_bench_race.py`` checks the entries
against the registry and the twins' parameter counts against the Flax models'). A :class:`Recipe`
says what to train and how (optimizer, learning-rate schedule, batch, epochs, when to evaluate):
:func:`adam_recipe` is the models section's, :data:`RECIPES` the race's. The module imports only
the ``fast`` config (no JAX, Keras or PyTorch), so a worker process loads its own framework and
nothing else.

The race's recipes (:data:`RECIPES`):

* ``fast``: ``flaxmnist/configs/fast.py`` (``convnet_fast``, Adam betas 0.7 / 0.9 at an 8e-3
  peak, linear warm-up over 0.2 epochs then cosine decay to 0, batch 128, 2 epochs, all 60,000
  images, one test evaluation at the end), Glorot-uniform kernels and zero biases as flaxmnist's.
* ``keras_reference``: Keras's "simple MNIST convnet" (``convnet``: Adam lr 1e-3, batch 128,
  ``validation_split=0.1``, 15 epochs), with a test evaluation after every epoch.
* ``torch_reference``: pytorch/examples ``mnist/main.py`` (its ``Net`` is flaxmnist's
  ``cnn_dropout``: two 3x3 convolutions, max-pool, Dropout 0.25, Dense 128, Dropout 0.5;
  Adadelta lr 1.0, StepLR gamma 0.7 per epoch, batch 64, 14 epochs, inputs standardised with
  mean 0.1307 / std 0.3081, PyTorch's default initialisation), a test evaluation every epoch.

The references stop at the first epoch whose test accuracy reaches :data:`TARGET_ACCURACY`.
"""

from __future__ import annotations

import dataclasses
import math

from flaxmnist import configs
from flaxmnist.configs import fast
from flaxmnist.errors import ConfigError

TARGET_ACCURACY = 0.99
TRAIN_EXAMPLES = 60_000
EVAL_BATCH = 1000  # flaxmnist's eval_batch_size and the PyTorch example's test batch
NUM_CLASSES = 10
# flaxmnist's registered architectures (models.MODELS.get(name).keywords) the benchmark trains in
# Keras and PyTorch too: a CNN (``blocks``) or an MLP (``hidden`` only). :func:`layers` turns one
# into the layer list both twins build from, so a new architecture is one entry here.
ARCHITECTURES = {
    "dense": {"hidden": (128,)},
    "mlp_dropout": {"hidden": (128, 64), "dropout_rate": 0.3},
    "cnn_simple": {"blocks": ((32,),)},
    "convnet": {"blocks": ((32,), (64,)), "head_dropout": 0.5},
    "cnn3": {"blocks": ((64,), (128,), (256,)), "hidden": (256,)},
    "convnet_fast": {
        "blocks": ((16,), (32,)),
        "hidden": (128,),
        "batch_norm_layers": True,
        "pool_first": True,
        "batch_norm_momentum": 0.9,
    },
    "cnn_dropout": {
        "blocks": ((32, 64),),
        "hidden": (128,),
        "block_dropout": 0.25,
        "head_dropout": 0.5,
    },
}
# The models section's models (keys of ARCHITECTURES) and their reference batch sizes.
BENCHMARK_MODELS = {"dense": 32, "mlp_dropout": 128, "cnn_simple": 32, "convnet": 128, "cnn3": 32}
KERAS_STEPS_PER_EXECUTION = 50  # Keras with XLA: steps per tf.function call (keras_recipe.py)
GRADIENT_TOLERANCE = 1e-3  # max relative error of torch.compile's gradients against eager ones
BATCH_NORM_EPSILON = 1e-3  # flaxmnist's (and Keras's)
BATCH_NORM_MOMENTUM = 0.99  # flaxmnist's default (and Keras's)
# One layer: ("conv", width) 3x3 VALID, ("pool",) 2x2 max, ("relu",), ("batch_norm", momentum)
# (Flax/Keras convention: running = momentum * running + (1 - momentum) * batch),
# ("dropout", rate), ("flatten",), ("dense", width).
Layer = tuple


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One training recipe: model, optimizer, schedule, batching and evaluation."""

    name: str
    model: str  # a key of ARCHITECTURES
    batch: int
    max_epochs: int
    optimizer: str  # adam | adadelta
    learning_rate: float  # the peak for warmup_cosine
    schedule: str = "constant"  # constant | warmup_cosine | step (per epoch, lr_gamma)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    epsilon: float = 1e-7  # Keras's Adam epsilon (flaxmnist uses it too)
    warmup_epochs: float = 0.0
    lr_gamma: float = 1.0
    stop_at_target: bool = False  # test after every epoch, stop at the first >= TARGET_ACCURACY
    validation_fraction: float = 0.0
    mean: float = 0.0  # inputs are (pixels / 255 - mean) / std
    std: float = 1.0
    glorot_init: bool = True  # Keras/flaxmnist initialisation (False: the framework's default)


def fast_recipe() -> Recipe:
    """The ``fast`` preset of flaxmnist as a :class:`Recipe` (read from its config)."""
    config = fast.get_config()
    return Recipe(
        name="fast",
        model=config.model,
        batch=config.batch_size,
        max_epochs=config.num_epochs,
        optimizer=config.optimizer,
        learning_rate=config.learning_rate,
        schedule=config.schedule,
        adam_betas=(config.adam_b1, config.adam_b2),
        warmup_epochs=config.warmup_epochs,
        validation_fraction=config.validation_fraction,
    )


RECIPES = {
    "fast": fast_recipe(),
    "keras_reference": Recipe(
        name="keras_reference",
        model="convnet",
        batch=128,
        max_epochs=15,
        optimizer="adam",
        learning_rate=1e-3,
        stop_at_target=True,
        validation_fraction=0.1,
    ),
    "torch_reference": Recipe(
        name="torch_reference",
        model="cnn_dropout",
        batch=64,
        max_epochs=14,
        optimizer="adadelta",
        learning_rate=1.0,
        schedule="step",
        epsilon=1e-6,  # torch.optim.Adadelta's default (rho 0.9)
        lr_gamma=0.7,
        stop_at_target=True,
        mean=0.1307,
        std=0.3081,
        glorot_init=False,
    ),
}


def layers(model: str) -> list[Layer]:
    """The layers of ``model`` in order, as flaxmnist's ``CNN`` or ``MLP`` applies them.

    Args:
      model: a key of :data:`ARCHITECTURES`.

    Returns:
      :data:`Layer` tuples; the last is ``("dense", NUM_CLASSES)`` (logits).
    """
    arch = ARCHITECTURES[model]
    momentum = arch.get("batch_norm_momentum", BATCH_NORM_MOMENTUM)
    norm = [("batch_norm", momentum)] if arch.get("batch_norm_layers") else []
    out: list[Layer] = []
    for widths in arch.get("blocks", ()):
        out += conv_block(widths, arch, norm)
    out.append(("flatten",))
    dropout = [("dropout", arch["dropout_rate"])] if arch.get("dropout_rate") else []
    for width in arch.get("hidden", ()):
        out += [("dense", width), ("relu",), *norm, *dropout]
    if arch.get("head_dropout"):
        out.append(("dropout", arch["head_dropout"]))
    return [*out, ("dense", NUM_CLASSES)]


def conv_block(widths: tuple[int, ...], arch: dict, norm: list[Layer]) -> list[Layer]:
    """One CNN block of ``arch``: conv, ReLU (and ``norm``) per width, max-pool, dropout."""
    pool_first = arch.get("pool_first", False)
    out: list[Layer] = []
    for i, width in enumerate(widths):
        out.append(("conv", width))
        if pool_first and i == len(widths) - 1:
            out.append(("pool",))
        out += [("relu",), *norm]
    if not pool_first:
        out.append(("pool",))
    if arch.get("block_dropout"):
        out.append(("dropout", arch["block_dropout"]))
    return out


def adam_recipe(model: str, batch: int | None = None, **changes) -> Recipe:
    """The models section's recipe: ``model`` with Adam (lr 1e-3, Keras's defaults), one epoch.

    Args:
      model: a key of :data:`ARCHITECTURES`.
      batch: the batch size (default: the model's in :data:`BENCHMARK_MODELS`).
      **changes: other :class:`Recipe` fields (``max_epochs``, ``validation_fraction``...).
    """
    batch = batch or BENCHMARK_MODELS[model]
    fields = {"max_epochs": 1, **changes}
    return Recipe("adam", model, batch, optimizer="adam", learning_rate=1e-3, **fields)


def wrong_gradients(error: float) -> str | None:
    """Why a ``torch.compile`` run with this gradient error is not timed (None: it is right)."""
    if error <= GRADIENT_TOLERANCE:
        return None
    return (
        "torch.compile's gradients differ from eager ones (max relative error "
        f"{error:.2f} on one batch)"
    )


def warmup_steps(recipe: Recipe, steps_per_epoch: int) -> int:
    """Warm-up steps of a ``warmup_cosine`` recipe, rounded down as flaxmnist's schedule does."""
    return int(recipe.warmup_epochs * steps_per_epoch)


def learning_rate(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """The learning rate of update ``step`` (0-based), as ``optax`` schedules give it.

    ``warmup_cosine`` is ``optax.warmup_cosine_decay_schedule(0, peak, warmup, total)`` with
    ``total = max_epochs * steps_per_epoch``; ``step`` multiplies by ``lr_gamma`` every epoch
    (``torch.optim.lr_scheduler.StepLR(step_size=1)`` stepped once an epoch).
    """
    if recipe.schedule == "step":
        return recipe.learning_rate * recipe.lr_gamma ** (step // steps_per_epoch)
    if recipe.schedule != "warmup_cosine":
        return recipe.learning_rate
    warmup = warmup_steps(recipe, steps_per_epoch)
    total = max(recipe.max_epochs * steps_per_epoch, warmup + 1)
    if step < warmup:
        return recipe.learning_rate * step / warmup
    progress = min(step - warmup, total - warmup) / (total - warmup)
    return recipe.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def steps_per_epoch(recipe: Recipe, examples: int, drop_remainder: bool) -> int:
    """Training steps in an epoch of ``examples`` images, the validation split held out."""
    kept = examples - round(recipe.validation_fraction * examples)
    return kept // recipe.batch if drop_remainder else -(-kept // recipe.batch)


def tests_after(recipe: Recipe, epoch: int) -> bool:
    """Whether ``recipe`` evaluates on the test set after ``epoch`` (1-based)."""
    return recipe.stop_at_target or epoch == recipe.max_epochs


def stops_after(recipe: Recipe, epoch: int, test_accuracy: float | None) -> bool:
    """Whether training ends after ``epoch``: its last epoch, or a reference that reached 99 %."""
    reached = test_accuracy is not None and test_accuracy >= TARGET_ACCURACY
    return epoch >= recipe.max_epochs or (recipe.stop_at_target and reached)


def epoch_record(epoch: int, train_s: float, test: tuple[float, float] | None) -> dict:
    """One epoch of a history: train seconds, and (accuracy, eval seconds) when tested."""
    record = {"epoch": epoch, "train_s": train_s}
    if test is not None:
        record["test_accuracy"], record["eval_s"] = test
    return record


def check_presets(names: list[str]) -> None:
    """Raises ConfigError when ``--models`` names a preset flaxmnist does not have."""
    unknown = sorted(set(names) - set(configs.preset_names()))
    if unknown:
        raise ConfigError(f"--models: unknown presets {', '.join(unknown)}")
