"""Exports load in fresh processes that never import flaxmnist and predict as the run does."""

import dataclasses
import functools
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import optax
import pytest

import flaxmnist
from flaxmnist import models
from flaxmnist.configs import default
from flaxmnist.data import datasets
from flaxmnist.evaluation import exporting, metrics
from flaxmnist.evaluation.loading import LoadedRun
from flaxmnist.training import loop, train_state

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
    "onnx": NO_FLAXMNIST
    + "import onnxruntime as ort\n"
    + "session = ort.InferenceSession(sys.argv[1] + '/model.onnx')\n"
    + "np.save(sys.argv[3], session.run(None, {'images': np.load(sys.argv[2])})[0])\n",
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


def export_and_run_probabilities(out: Path, fmt: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of 37 test images (an odd batch): the export's, then the run's.

    The export in ``out`` is loaded in a process without flaxmnist; the run is ``root/run``, its
    data ``root/data``.
    """
    test = datasets.load_dataset("mnist", str(root / "data")).test
    images, predicted = root / f"images-{fmt}.npy", root / f"probabilities-{fmt}.npy"
    np.save(images, test.images[:37])
    loaded = subprocess.run(
        [sys.executable, "-c", LOADERS[fmt], str(out), str(images), str(predicted)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    expected = metrics.softmax(flaxmnist.load_run(root / "run").predict(test.images[:37]))
    return np.load(predicted), expected


@pytest.mark.slow
@pytest.mark.parametrize("fmt", exporting.FORMATS)
def test_an_export_predicts_the_test_set_as_the_run_does_without_flaxmnist(trained, fmt):
    out = trained / f"export-{fmt}"
    command = [sys.executable, "-m", "flaxmnist.export", f"--workdir={trained / 'run'}"]
    result = subprocess.run(
        [*command, f"--format={fmt}", f"--out={out}"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "classes.json").read_text()) == [str(i) for i in range(10)]
    got, expected = export_and_run_probabilities(out, fmt, trained)
    assert got.shape == (37, 10)
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.slow
def test_without_out_the_export_goes_into_the_run_s_export_folder(trained):
    run = trained / "run"
    command = [sys.executable, "-m", "flaxmnist.export", f"--workdir={run}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (run / "export").iterdir()) == ["classes.json", "model.stablehlo"]


@pytest.mark.slow
def test_export_bad_input_is_one_line(trained, tmp_path):
    # The export module run as it is, or with jax2onnx unimportable (as when it is not installed).
    module = [sys.executable, "-m", "flaxmnist.export"]
    no_jax2onnx = [
        sys.executable,
        "-c",
        "import runpy, sys; sys.modules['jax2onnx'] = None; "
        "runpy.run_module('flaxmnist.export', run_name='__main__')",
    ]
    run = f"--workdir={trained / 'run'}"
    for command, args, message in [
        (module, [f"--workdir={tmp_path / 'nope'}"], "not a run directory"),
        (module, [run, "--format=tflite"], "--format"),
        (no_jax2onnx, [run, "--format=onnx"], "pip install -e '.[onnx]'"),
    ]:
        result = subprocess.run(
            [*command, *args, f"--out={tmp_path / 'out'}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and last.startswith("error: ") and message in last
    assert not (tmp_path / "out" / "model.onnx").exists()


def untrained_run(name: str, **overrides) -> LoadedRun:
    """A run of model ``name`` with random weights, as :func:`flaxmnist.load_run` gives one.

    The weights come from NumPy (kernels scaled by their fan-in, BatchNorm scales and variances
    near 1): compiling the model's initialisation would take several times longer than its
    conversion.
    """
    config = default.get_config()
    config.update(model=name, **overrides)
    model = models.create_model(config, 10)
    images = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)
    rng = np.random.default_rng(0)

    def random(path, leaf):
        scale = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 0.1
        values = scale * rng.normal(size=leaf.shape)
        return (1 + abs(values) if path[-1].key in ("scale", "var") else values).astype(np.float32)

    variables = jax.tree_util.tree_map_with_path(random, shapes)
    state = train_state.TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=optax.identity(),
        batch_stats=variables.get("batch_stats", {}),
    )
    normalization = {"mean": 0.1307, "std": 0.3081}
    return LoadedRun(config, model, state, tuple("0123456789"), 0, 0, normalization, (28, 28, 1))


SLOW_TO_CONVERT = {"resnet_wide"}  # 2.8 M parameters: over 1.5 s
MODEL_CASES = [
    pytest.param(name, {}, id=name, marks=pytest.mark.slow if name in SLOW_TO_CONVERT else ())
    for name in models.MODELS.names()
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        *MODEL_CASES,
        pytest.param("convnet_small", {"tta_shift": 2}, id="convnet_small-tta"),
    ],
)
def test_every_model_converts_to_onnx_and_predicts_as_the_run_does(name, overrides):
    run = untrained_run(name, **overrides)
    serialized = exporting.onnx_bytes(run)
    onnx.checker.check_model(onnx.load_from_string(serialized), full_check=True)
    session = ort.InferenceSession(serialized)
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a dynamic batch dimension
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    got = session.run(None, {"images": images})[0]
    expected = metrics.softmax(run.predict(images))
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_an_export_computes_with_the_ema_average_when_the_run_kept_one():
    run = untrained_run("dense")
    average = jax.tree_util.tree_map(lambda p: -0.5 * p, run.state.params)  # unlike the params
    kept = dataclasses.replace(run, state=run.state.replace(ema_params=average))
    images = np.random.default_rng(1).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    exported = np.asarray(exporting.probabilities_function(kept)(images))
    with_average = dataclasses.replace(run, state=run.state.replace(params=average))
    np.testing.assert_allclose(exported, metrics.softmax(with_average.predict(images)), atol=1e-5)
    assert not np.allclose(exported, metrics.softmax(run.predict(images)), atol=1e-2)
