"""Short real-data runs on the vendored MNIST files: the accuracy bound a user can rely on."""

import json

import pytest

from flaxmnist.configs import cnn_simple
from flaxmnist.training import loop


@pytest.mark.real_data
@pytest.mark.slow
def test_one_epoch_of_cnn_simple_on_real_mnist_reaches_95_percent(tmp_path):
    config = cnn_simple.get_config()
    config.num_epochs = 1
    config.compilation_cache_dir = ""
    metrics = loop.train_and_evaluate(config, tmp_path / "run")
    assert metrics["num_test_examples"] == 10_000
    assert metrics["test_accuracy"] >= 0.95
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[0]["val_accuracy"] >= 0.95
