"""The race's recipes, framework-neutral: the ``fast`` preset and the two published references.

A :class:`Recipe` says what to train (a CNN from flaxmnist's model registry, as a list of
:data:`Layer` operations that ``keras_recipe`` and ``torch_recipe`` both build from) and how
(optimizer, learning-rate schedule, batch, epochs, when to evaluate). The module imports only the
``fast`` config (no JAX, Keras or PyTorch), so a contestant's process loads its own framework and
nothing else; ``tests/test_benchmark.py`` checks :data:`ARCHITECTURES` against the registry.

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

from flaxmnist.configs import fast

TARGET_ACCURACY = 0.99
TRAIN_EXAMPLES = 60_000
EVAL_BATCH = 1000  # flaxmnist's eval_batch_size and the PyTorch example's test batch
NUM_CLASSES = 10
# flaxmnist's registered CNN architectures (models.MODELS.get(name).keywords) the race trains.
ARCHITECTURES = {
    "convnet_fast": {
        "blocks": ((16,), (32,)),
        "hidden": (128,),
        "batch_norm_layers": True,
        "pool_first": True,
        "batch_norm_momentum": 0.9,
    },
    "convnet": {"blocks": ((32,), (64,)), "head_dropout": 0.5},
    "cnn_dropout": {
        "blocks": ((32, 64),),
        "hidden": (128,),
        "block_dropout": 0.25,
        "head_dropout": 0.5,
    },
}
BATCH_NORM_EPSILON = 1e-3  # flaxmnist's (and Keras's)
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
    """The layers of ``model`` in order, as flaxmnist's ``CNN`` applies them, head included.

    Args:
      model: a key of :data:`ARCHITECTURES`.

    Returns:
      :data:`Layer` tuples; the last is ``("dense", NUM_CLASSES)`` (logits).
    """
    arch = ARCHITECTURES[model]
    momentum = arch.get("batch_norm_momentum", 0.99)
    norm = [("batch_norm", momentum)] if arch.get("batch_norm_layers") else []
    pool_first = arch.get("pool_first", False)
    out: list[Layer] = []
    for widths in arch["blocks"]:
        for i, width in enumerate(widths):
            out.append(("conv", width))
            if pool_first and i == len(widths) - 1:
                out.append(("pool",))
            out += [("relu",), *norm]
        if not pool_first:
            out.append(("pool",))
        if arch.get("block_dropout"):
            out.append(("dropout", arch["block_dropout"]))
    out.append(("flatten",))
    for width in arch.get("hidden", ()):
        out += [("dense", width), ("relu",), *norm]
    if arch.get("head_dropout"):
        out.append(("dropout", arch["head_dropout"]))
    return [*out, ("dense", NUM_CLASSES)]


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
