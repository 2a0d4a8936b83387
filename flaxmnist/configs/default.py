"""Default config: the Keras "simple MNIST convnet" recipe (convnet, Adam, batch 128)."""

import ml_collections

from flaxmnist import config_schema


def get_config() -> ml_collections.ConfigDict:
    """Every field a run reads, with its default (declared in flaxmnist/config_schema.py)."""
    return ml_collections.ConfigDict(config_schema.defaults())


def with_overrides(**overrides) -> ml_collections.ConfigDict:
    """The default config with ``overrides`` applied (how presets are written)."""
    config = get_config()
    config.update(overrides)
    return config


def fashion_notebook_recipe(
    model: str, *, batch_size: int = 64, loss: str = "cross_entropy"
) -> ml_collections.ConfigDict:
    """The reference Fashion-MNIST notebooks' recipe for ``model``.

    Adam at its default rate, up to 20 epochs, and Keras EarlyStopping on val_loss with patience
    3 with the best weights kept (ModelCheckpoint).

    Args:
      model: the model's registered name.
      batch_size: the notebook's batch size.
      loss: the notebook's loss (``categorical_cross_entropy`` for one-hot labels).

    Returns:
      The default config with the recipe applied.
    """
    config = with_overrides(
        dataset="fashion_mnist", model=model, loss=loss, batch_size=batch_size, num_epochs=20
    )
    config.early_stopping.update(monitor="val_loss", patience=3, restore_best=True)
    return config
