"""An example search space for ``python -m flaxmnist.tune --space=experiments/search_space.py``.

``suggest`` sets config fields from Optuna's suggestions; the tuner passes each trial a copy of
the ``--config`` preset, locked so that a misspelt field is an error. Nested fields are set as
attributes (``config.augment.translate``); a parameter can depend on another (``warmup_epochs``
only for the warmup schedule).
"""


def suggest(trial, config):
    """Learning rate, batch size, schedule (with its warmup) and shift augmentation."""
    config.learning_rate = trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    config.batch_size = trial.suggest_categorical("batch_size", [64, 128, 256])
    config.schedule = trial.suggest_categorical("schedule", ["constant", "warmup_cosine"])
    if config.schedule == "warmup_cosine":
        config.warmup_epochs = trial.suggest_float("warmup_epochs", 0.0, 1.0)
    config.augment.translate = trial.suggest_float("augment.translate", 0.0, 0.1)
