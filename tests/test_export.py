"""Exports load in fresh processes that never import flaxmnist and predict as the run does."""

import json
import subprocess
import sys

import numpy as np
import pytest

import flaxmnist
from flaxmnist.data import datasets
from flaxmnist.evaluation import metrics
from flaxmnist.training import loop

pytestmark = pytest.mark.slow

# Each loader runs with flaxmnist unimportable, so a hidden dependency fails the test.
NO_FLAXMNIST = "import sys; sys.modules['flaxmnist'] = None\nimport numpy as np\n"
LOADERS = {
    "stablehlo": NO_FLAXMNIST
    + "from jax import export\n"
    + "model = export.deserialize(open(sys.argv[1] + '/model.stablehlo', 'rb').read())\n"
    + "images = np.load(sys.argv[2])\n"
    + "np.save(sys.argv[3], np.asarray(model.call(images)))\n",
    "saved_model": NO_FLAXMNIST
    + "import tensorflow as tf\n"
    + "serve = tf.saved_model.load(sys.argv[1] + '/saved_model').signatures['serving_default']\n"
    + "outputs = serve(images=tf.constant(np.load(sys.argv[2])))\n"
    + "np.save(sys.argv[3], next(iter(outputs.values())).numpy())\n",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from flaxmnist.configs import default
    from flaxmnist.testing import write_idx_dataset

    root = tmp_path_factory.mktemp("export")
    write_idx_dataset(root / "data" / "mnist")
    config = default.get_config()
    config.update(model="cnn_simple", data_dir=str(root / "data"), batch_size=32, num_epochs=1)
    config.compilation_cache_dir = ""
    loop.train_and_evaluate(config, root / "run")
    return root


@pytest.mark.parametrize("fmt", ["stablehlo", "saved_model"])
def test_an_export_predicts_the_test_set_as_the_run_does_without_flaxmnist(trained, fmt):
    out = trained / f"export-{fmt}"
    command = [sys.executable, "-m", "flaxmnist.export", f"--workdir={trained / 'run'}"]
    result = subprocess.run(
        [*command, f"--format={fmt}", f"--out={out}"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "classes.json").read_text()) == [str(i) for i in range(10)]
    test = datasets.load_dataset("mnist", str(trained / "data")).test
    images = trained / f"images-{fmt}.npy"
    np.save(images, test.images[:37])  # an odd batch: the export takes any batch size
    predicted = trained / f"probabilities-{fmt}.npy"
    loaded = subprocess.run(
        [sys.executable, "-c", LOADERS[fmt], str(out), str(images), str(predicted)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    got = np.load(predicted)
    expected = metrics.softmax(flaxmnist.load_run(trained / "run").predict(test.images[:37]))
    assert got.shape == (37, 10)
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_export_bad_input_is_one_line(trained, tmp_path):
    for args, message in [
        ([f"--workdir={tmp_path / 'nope'}"], "not a run directory"),
        ([f"--workdir={trained / 'run'}", "--format=onnx"], "--format"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "flaxmnist.export", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and last.startswith("error: ") and message in last
