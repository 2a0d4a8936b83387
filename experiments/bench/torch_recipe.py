"""flaxmnist's models and the race's recipes in PyTorch (CPU), built from :func:`recipes.layers`.

:func:`build_model` makes the PyTorch twin of a flaxmnist model. :func:`time_steps` times the
models section's training loop (Adam, lr 1e-3). ``train(recipe, settings, seed)`` is one
contestant of ``race.py``: it trains the recipe's model on the vendored MNIST arrays held in
memory as tensors (the PyTorch example reads torchvision's files through a ``DataLoader``;
in-memory batches only make it faster) and returns its per-epoch history. ``settings``:

* ``compile``: the training forward and backward run through ``torch.compile`` (default mode,
  Inductor's C++ kernels); the optimizer step and the test evaluation (eager: one or a few
  passes, not worth compiling a second, inference graph for) stay eager;
* ``eager``: plain PyTorch, as the published example runs.

:func:`model_gradient_error` checks ``torch.compile``'s gradients against eager ones before a
compiled contestant (or a ``torch`` row of the benchmark's models section) is timed: on torch
2.13.0+cpu (Inductor) the pytorch/examples ``Net``'s compiled backward gives both convolutions
zero gradients, so that run trained only its dense head (97.7 % after 14 epochs); the ``fast``
model's compiled gradients agree.

Needs the ``bench`` extra (CPU torch).
"""

from __future__ import annotations

import copy
import functools
import os
import time

import measure
import numpy as np
import recipes
import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch's own convention)
from torch import nn

SETTINGS = ("compile", "eager")
GRADIENT_CHECK_EXAMPLES = 64


def build_model(recipe: recipes.Recipe) -> nn.Sequential:
    """The PyTorch twin of the recipe's flaxmnist model (NCHW, 28x28x1 inputs).

    Built from :func:`recipes.layers`; Glorot-initialised (flaxmnist's) when the recipe says so.
    """
    channels, size, flat = 1, 28, None
    modules: list[nn.Module] = []
    for op, *args in recipes.layers(recipe.model):
        if op == "conv":
            modules.append(nn.Conv2d(channels, args[0], 3))
            channels, size = args[0], size - 2
        elif op == "pool":
            modules.append(nn.MaxPool2d(2))
            size //= 2
        elif op == "relu":
            modules.append(nn.ReLU())
        elif op == "batch_norm":  # PyTorch's momentum is the weight of the new batch
            norm = nn.BatchNorm1d if flat else nn.BatchNorm2d
            width = flat or channels
            modules.append(norm(width, eps=recipes.BATCH_NORM_EPSILON, momentum=1 - args[0]))
        elif op == "dropout":
            modules.append(nn.Dropout(args[0]))
        elif op == "flatten":
            modules.append(nn.Flatten())
            flat = channels * size * size
        else:  # dense
            modules.append(nn.Linear(flat, args[0]))
            flat = args[0]
    model = nn.Sequential(*modules)
    if recipe.glorot_init:
        glorot_initialise(model)
    return model


def glorot_initialise(model: nn.Module) -> None:
    """Gives ``model``'s convolutions and dense layers Glorot-uniform kernels and zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)


def tensors(
    recipe: recipes.Recipe, split: str, examples: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's first ``examples`` images as standardised float NCHW and int64 labels."""
    images, labels = measure.mnist_arrays(split)
    images, labels = images[:examples], labels[:examples]
    x = (images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - recipe.mean) / recipe.std
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))


def make_optimizer(recipe: recipes.Recipe, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimizer (Adam or Adadelta) at its peak learning rate."""
    if recipe.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(), recipe.learning_rate, betas=recipe.adam_betas, eps=recipe.epsilon
        )
    return torch.optim.Adadelta(model.parameters(), recipe.learning_rate)


def optimizer_and_schedule(
    recipe: recipes.Recipe, model: nn.Module, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The recipe's optimizer and a per-step LambdaLR giving :func:`recipes.learning_rate`."""
    optimizer = make_optimizer(recipe, model)

    def factor(step: int) -> float:
        return recipes.learning_rate(recipe, step, steps_per_epoch) / recipe.learning_rate

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(test accuracy, seconds) in batches of :data:`recipes.EVAL_BATCH`, inference mode."""
    begin = time.perf_counter()
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), recipes.EVAL_BATCH):
            logits = model(x[start : start + recipes.EVAL_BATCH])
            correct += int((logits.argmax(1) == y[start : start + recipes.EVAL_BATCH]).sum())
    model.train()
    return correct / len(x), time.perf_counter() - begin


def compiled_gradient_error(
    recipe: recipes.Recipe, examples: int = GRADIENT_CHECK_EXAMPLES
) -> float:
    """:func:`model_gradient_error` of the recipe's model (seed 0) on the first training images."""
    torch.manual_seed(0)
    return model_gradient_error(build_model(recipe), *tensors(recipe, "train", examples))


def model_gradient_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """How far ``torch.compile``'s gradients of ``model`` are from eager ones, dropout off.

    Args:
      model: the model to check (a copy goes through ``torch.compile``; ``model`` is unchanged
        except for its ``.grad`` fields and dropout rates).
      x: one batch of NCHW inputs.
      y: its integer labels.

    Returns:
      The largest ``max |compiled - eager| / max |eager|`` over the parameters (1.0 where a
      compiled gradient is zero or missing).
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0  # the same function in both, so the gradients must agree
    compiled = copy.deepcopy(model)
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(torch.compile(compiled)(x), y).backward()
    errors = []
    for mine, theirs in zip(compiled.parameters(), model.parameters(), strict=True):
        scale = float(theirs.grad.abs().max()) or 1.0
        errors.append(
            1.0 if mine.grad is None else float((mine.grad - theirs.grad).abs().max()) / scale
        )
    return max(errors)


def train(
    recipe: recipes.Recipe,
    settings: str,
    seed: int,
    examples: int | None = None,
    test_examples: int | None = None,
) -> dict:
    """Trains ``recipe`` (stopping where it says) and returns its history.

    Args:
      recipe: what to train.
      settings: ``compile`` or ``eager``.
      seed: ``torch.manual_seed`` (initialisation, shuffling, dropout).
      examples: train on the first ``examples`` training images (all when None; smoke runs).
      test_examples: test on the first ``test_examples`` test images (all when None).

    Returns:
      ``epochs`` (:func:`recipes.epoch_record` each), ``steps_per_epoch``, ``first_step_s``
      (process start to the first training step done) and the last ``test_accuracy``.
    """
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    x, y = tensors(recipe, "train", examples)
    test_x, test_y = tensors(recipe, "test", test_examples)
    drop_remainder = recipe.name == "fast"  # flaxmnist's batching; the example keeps the rest
    steps = recipes.steps_per_epoch(recipe, len(x), drop_remainder)
    model = build_model(recipe)
    step_model = torch.compile(model) if settings == "compile" else model
    optimizer, schedule = optimizer_and_schedule(recipe, model, steps)
    result = {"epochs": [], "steps_per_epoch": steps, "first_step_s": None}
    for epoch in range(1, recipe.max_epochs + 1):
        begin = time.perf_counter()
        order = torch.randperm(len(x))
        for step in range(steps):
            index = order[step * recipe.batch : (step + 1) * recipe.batch]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(step_model(x[index]), y[index]).backward()
            optimizer.step()
            schedule.step()
            if result["first_step_s"] is None:
                result["first_step_s"] = measure.process_age_s()
        train_s = time.perf_counter() - begin
        test = evaluate(model, test_x, test_y) if recipes.tests_after(recipe, epoch) else None
        result["epochs"].append(recipes.epoch_record(epoch, train_s, test))
        if recipes.stops_after(recipe, epoch, test and test[0]):
            break
    result["test_accuracy"] = result["epochs"][-1].get("test_accuracy")
    return result


def time_steps(recipe: recipes.Recipe, steps: int, repeats: int, compiled: bool) -> dict:
    """Times the recipe's PyTorch training loop (:func:`measure.time_repeats`).

    The model goes through ``torch.compile`` when ``compiled``; its compiled gradients are
    checked against eager ones first (:func:`compiled_gradient_error`, on a model of its own, so
    the timed run compiles as a user's would): a model they differ for is not timed.
    """
    torch.set_num_threads(os.cpu_count() or 1)
    if compiled and (reason := recipes.wrong_gradients(compiled_gradient_error(recipe))):
        return {"error": f"not timed: {reason}"}
    x, y = tensors(recipe, "train")
    model = build_model(recipe)
    step_model = torch.compile(model) if compiled else model
    optimizer = make_optimizer(recipe, model)
    batch = recipe.batch

    def run(state: None, epoch: int, run_steps: int = steps) -> None:
        order = torch.randperm(batch * steps, generator=torch.Generator().manual_seed(epoch))
        for step in range(run_steps):
            index = order[step * batch : (step + 1) * batch]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(step_model(x[index]), y[index]).backward()
            optimizer.step()
        return state

    first_step = functools.partial(run, epoch=0, run_steps=1)
    return measure.time_repeats(run, None, repeats, 0.0, steps, first_step)
