r"""Trains a reference recipe in Keras 3 itself, on the vendored MNIST files, one seed at a time.

    python experiments/bench/keras_recipe.py --model mlp_dropout --epochs 10 --batch 128 \
        --seeds 0 1 2

The same model, Adam (lr 1e-3) and cross-entropy as the benchmark's Keras rows, fitted with
``validation_split=0.1`` like the reference notebooks; prints one JSON line per seed with its test
accuracy. It answers whether a reference figure that our runs miss is one Keras reaches reliably.
Needs the ``bench`` extra (tensorflow-cpu).

It also builds the Keras twins of flaxmnist's models from :func:`recipes.layers` and trains them
for the benchmark: :func:`time_fit` times the models section's epochs, and :func:`train` runs a
race contestant, a :class:`recipes.Recipe` (the ``fast`` preset, or the "simple MNIST convnet"
reference), in one ``model.fit`` call, as a Keras user would, with a callback that times every
epoch and tests where the recipe says. ``settings``:

* ``xla``: ``model.compile(jit_compile=True, steps_per_execution=50)``: XLA-compiled steps
  (Keras 3 leaves XLA off on CPU-only TensorFlow), 50 steps per ``tf.function`` call, which
  makes Keras's per-call dispatch a small share of a step while the callbacks still run ten
  times an epoch (a whole epoch per call would leave no per-step clock at all);
* ``default``: ``model.compile()``'s defaults: no XLA, one step per call.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import measure
import numpy as np
import recipes

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # after its backend is chosen

SETTINGS = ("xla", "default")


def build_model(recipe: recipes.Recipe) -> keras.Sequential:
    """The Keras twin of the recipe's flaxmnist model, built from :func:`recipes.layers`.

    Keras's default initialisation is flaxmnist's: Glorot-uniform kernels and zero biases.
    """
    make = {
        "conv": lambda width: keras.layers.Conv2D(width, 3),
        "pool": keras.layers.MaxPooling2D,
        "relu": keras.layers.ReLU,
        "batch_norm": lambda momentum: keras.layers.BatchNormalization(
            momentum=momentum, epsilon=recipes.BATCH_NORM_EPSILON
        ),
        "dropout": keras.layers.Dropout,
        "flatten": keras.layers.Flatten,
        "dense": keras.layers.Dense,
    }
    stack = [make[op](*args) for op, *args in recipes.layers(recipe.model)]
    return keras.Sequential([keras.Input((28, 28, 1)), *stack])


def learning_rate(recipe: recipes.Recipe, steps_per_epoch: int):
    """The recipe's learning rate: a float, or Keras's warm-up + cosine schedule for ``fast``."""
    if recipe.schedule != "warmup_cosine":
        return recipe.learning_rate
    warmup = recipes.warmup_steps(recipe, steps_per_epoch)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=recipe.max_epochs * steps_per_epoch - warmup,
        warmup_target=recipe.learning_rate,
        warmup_steps=warmup,
    )


def compile_settings(
    settings: str, steps_per_execution: int = recipes.KERAS_STEPS_PER_EXECUTION
) -> dict:
    """``model.compile`` keywords of ``settings`` (``xla`` or ``default``)."""
    if settings == "xla":
        return {"jit_compile": True, "steps_per_execution": steps_per_execution}
    return {}


def compiled_model(
    recipe: recipes.Recipe, settings: str, steps_per_epoch: int, steps_per_execution: int
) -> keras.Sequential:
    """:func:`build_model` compiled with the recipe's Adam, cross-entropy and accuracy."""
    model = build_model(recipe)
    beta_1, beta_2 = recipe.adam_betas
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate(recipe, steps_per_epoch), beta_1, beta_2, recipe.epsilon
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **compile_settings(settings, steps_per_execution),
    )
    return model


class EpochTimer(keras.callbacks.Callback):
    """Times each epoch of a ``fit``, less its validation pass, and the first step's end.

    ``first_step_s`` is process start to the first ``on_train_batch_end``: with
    ``steps_per_execution`` > 1 that is the end of the first call (its compiled steps).
    """

    def __init__(self):
        super().__init__()
        self.epoch_s: list[float] = []
        self.val_s: list[float] = []
        self.first_step_s: float | None = None

    def on_epoch_begin(self, epoch, logs=None):  # noqa: D102 (Keras's hooks)
        self.begin, self.validating = time.perf_counter(), 0.0

    def on_train_batch_end(self, batch, logs=None):  # noqa: D102
        if self.first_step_s is None:
            self.first_step_s = measure.process_age_s()

    def on_test_begin(self, logs=None):  # noqa: D102 (the validation pass inside fit)
        self.test_begin = time.perf_counter()

    def on_test_end(self, logs=None):  # noqa: D102
        self.validating += time.perf_counter() - self.test_begin

    def on_epoch_end(self, epoch, logs=None):  # noqa: D102
        self.epoch_s.append(time.perf_counter() - self.begin - self.validating)
        self.val_s.append(self.validating)


class RecipeEpochs(EpochTimer):
    """:class:`EpochTimer` that also tests after the epochs the recipe says and stops it there."""

    def __init__(self, recipe: recipes.Recipe, test_x, test_y):
        super().__init__()
        self.recipe, self.test_x, self.test_y = recipe, test_x, test_y
        self.history: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):  # noqa: D102
        super().on_epoch_end(epoch, logs)
        test = None
        if recipes.tests_after(self.recipe, epoch + 1):
            begin = time.perf_counter()
            scores = self.model.evaluate(
                self.test_x,
                self.test_y,
                batch_size=recipes.EVAL_BATCH,
                verbose=0,
                return_dict=True,
            )
            test = (float(scores["accuracy"]), time.perf_counter() - begin)
        record = recipes.epoch_record(epoch + 1, self.epoch_s[-1], test)
        self.history.append({**record, "val_s": self.val_s[-1]})
        if recipes.stops_after(self.recipe, epoch + 1, test and test[0]):
            self.model.stop_training = True


def unit_arrays(split: str, examples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A split's first ``examples`` images as float32 in [0, 1], and its labels."""
    images, labels = measure.mnist_arrays(split)
    return images[:examples].astype("float32") / 255.0, labels[:examples]


def train(
    recipe: recipes.Recipe,
    settings: str,
    seed: int,
    examples: int | None = None,
    test_examples: int | None = None,
    steps_per_execution: int = recipes.KERAS_STEPS_PER_EXECUTION,
) -> dict:
    """Trains ``recipe`` in one ``model.fit`` (stopping where it says); returns its history.

    Args:
      recipe: what to train.
      settings: ``xla`` or ``default`` (:func:`compile_settings`).
      seed: ``keras.utils.set_random_seed``.
      examples: train on the first ``examples`` training images (all when None; smoke runs).
      test_examples: test on the first ``test_examples`` test images (all when None).
      steps_per_execution: steps per call under ``xla``.

    Returns:
      ``epochs`` (:func:`recipes.epoch_record` each, plus ``val_s``), ``steps_per_epoch``,
      ``first_step_s`` and the last ``test_accuracy``.
    """
    keras.utils.set_random_seed(seed)
    x, y = unit_arrays("train", examples)
    test_x, test_y = unit_arrays("test", test_examples)
    steps = recipes.steps_per_epoch(recipe, len(x), drop_remainder=False)  # fit keeps the rest
    model = compiled_model(recipe, settings, steps, steps_per_execution)
    callback = RecipeEpochs(recipe, test_x, test_y)
    model.fit(
        x,
        y,
        batch_size=recipe.batch,
        epochs=recipe.max_epochs,
        validation_split=recipe.validation_fraction,
        shuffle=True,
        verbose=0,
        callbacks=[callback],
    )
    return {
        "epochs": callback.history,
        "steps_per_epoch": steps,
        "first_step_s": callback.first_step_s,
        "test_accuracy": callback.history[-1].get("test_accuracy"),
    }


def time_fit(
    recipe: recipes.Recipe, settings: str, repeats: int, steps_per_execution: int, examples: int
) -> dict:
    """Times Keras 3 ``model.fit`` on TensorFlow over whole epochs of ``examples`` images.

    A one-batch ``fit`` first gives the startup (its compiled step, and the ``fit`` machinery a
    user's first step pays); then one ``fit`` of ``1 + repeats`` epochs, the first the warm-up
    (it compiles the last, partial batch too), each epoch timed by a callback.

    Returns:
      ``startup_s``, ``run_s`` (each timed epoch), ``run_steps`` (steps per epoch),
      ``flops_per_step`` (0: Keras does not count them) and the ``settings`` compiled with.
    """
    x, y = unit_arrays("train", examples)
    steps = recipes.steps_per_epoch(recipe, len(x), drop_remainder=False)
    model = compiled_model(recipe, settings, steps, steps_per_execution)
    model.fit(x[: recipe.batch], y[: recipe.batch], batch_size=recipe.batch, epochs=1, verbose=0)
    startup = measure.process_age_s()
    timer = EpochTimer()
    model.fit(
        x,
        y,
        batch_size=recipe.batch,
        epochs=1 + repeats,
        verbose=0,
        shuffle=True,
        callbacks=[timer],
    )
    return {
        "startup_s": startup,
        "run_s": timer.epoch_s[1:],
        "run_steps": steps,
        "flops_per_step": 0.0,
        "settings": compile_settings(settings, steps_per_execution),
    }


def main() -> None:
    """Parses the command line and prints one JSON record per seed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=list(recipes.BENCHMARK_MODELS))
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    recipe = recipes.adam_recipe(
        args.model, args.batch, max_epochs=args.epochs, validation_fraction=0.1
    )
    for seed in args.seeds:
        accuracy = train(recipe, "default", seed)["test_accuracy"]
        record = {"model": args.model, "epochs": args.epochs, "batch": args.batch, "seed": seed}
        print(json.dumps({**record, "test_accuracy": accuracy}), flush=True)


if __name__ == "__main__":
    main()
