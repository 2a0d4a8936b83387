"""Short real-data runs on the vendored MNIST files: the accuracy bound a user can rely on."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from flaxmnist.configs import cnn_simple
from flaxmnist.data import datasets
from flaxmnist.training import loop

pytestmark = [pytest.mark.real_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """One epoch of ``cnn_simple`` on the real MNIST files, shared by this module's tests."""
    workdir = tmp_path_factory.mktemp("real") / "run"
    config = cnn_simple.get_config()
    config.num_epochs = 1
    config.compilation_cache_dir = ""
    return workdir, loop.train_and_evaluate(config, workdir)


def test_one_epoch_of_cnn_simple_on_real_mnist_reaches_95_percent(mnist_run):
    workdir, metrics = mnist_run
    assert metrics["num_test_examples"] == 10_000
    assert metrics["test_accuracy"] >= 0.95
    history = json.loads((workdir / "history.json").read_text())
    assert history[0]["val_accuracy"] >= 0.95


def test_test_digits_drawn_dark_on_white_pages_are_read_back_by_predict(mnist_run, tmp_path):
    # Each test digit as a person's photo: dark ink on white paper, 8x larger, off-centre.
    workdir, _ = mnist_run
    test = datasets.load_dataset("mnist").test
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(test), 20, replace=False)
    files = []
    for i in chosen:
        digit = Image.fromarray(255 - test.images[i, ..., 0]).resize((224, 224), Image.BICUBIC)
        page = Image.new("L", (480, 360), 255)
        page.paste(digit, (int(rng.integers(0, 256)), int(rng.integers(0, 136))))
        files.append(tmp_path / f"digit-{i}.jpg")
        page.convert("RGB").save(files[-1], quality=90)
    result = subprocess.run(
        [sys.executable, "-m", "flaxmnist.predict", f"--workdir={workdir}", "--json", *files],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    predicted = [int(record["top"][0]["class"]) for record in json.loads(result.stdout)]
    correct = np.mean(np.array(predicted) == test.labels[chosen])
    assert correct >= 0.9  # the run scores ~97 % on the test set itself
