"""The ``grain`` input pipeline: tfds's ArrayRecord files through Grain, never TensorFlow.

One synthetic IDX data dir (module scope) becomes a tfds dataset, prepared in a child process as
a run prepares it. The batch functions' contract, shared with the tfds pipeline, is checked in
``test_input_pipeline.py``.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import REPO_ROOT, assert_same_step_losses

from flaxmnist.configs import default
from flaxmnist.data import datasets, grain_pipeline, input_pipeline, tfds_prepare
from flaxmnist.testing import run_splits, write_idx_dataset
from flaxmnist.training import experiment, feeders

SEED, FRACTION = 7, 0.1
POSITIONS = datasets.run_positions({"train": 512, "test": 100}, FRACTION, SEED)
# A fresh process trains through each pipeline on an unprepared IDX folder (grain prepares it in
# a child) and reports what it imported.
TRAIN_WITHOUT_TENSORFLOW = """
import json, sys
from flaxmnist.configs import default
from flaxmnist.training import loop

accuracy = {}
for pipeline in ("grain", "device"):
    config = default.get_config()
    config.update(
        data_dir=sys.argv[1], model="cnn_simple", batch_size=32, eval_batch_size=64,
        num_epochs=2, validation_fraction=0.1, seed=7, input_pipeline=pipeline,
        compilation_cache_dir="",
    )
    metrics = loop.train_and_evaluate(config, f"{sys.argv[2]}/{pipeline}")
    accuracy[pipeline] = metrics["test_accuracy"]
print(json.dumps({"accuracy": accuracy, "tensorflow": "tensorflow" in sys.modules}))
"""


# A process where ``tensorflow`` cannot be found, as where it is not installed (a ``None`` in
# sys.modules would differ: tfds takes a name in sys.modules as TensorFlow loaded).
HIDE_TENSORFLOW = """
import sys
from importlib.machinery import PathFinder

class PathFinderWithoutTensorFlow(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
            return None
        return super().find_spec(name, path, target)

sys.meta_path[sys.meta_path.index(PathFinder)] = PathFinderWithoutTensorFlow
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("grain-pipeline")
    write_idx_dataset(root / "mnist")  # 512 train, 100 test images
    return str(root)


@pytest.fixture(scope="module")
def grain_splits(data_root) -> dict[str, datasets.ArraySplit]:
    builder = tfds_prepare.source_builder("mnist", data_root)  # prepared by a child process
    return grain_pipeline.SOURCE.open_splits(builder, POSITIONS)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["train", "validation", "test"])
def test_both_pipelines_see_the_same_examples(data_root, grain_splits, name):
    expected = run_splits(data_root, FRACTION, SEED)[name]  # the device pipeline's
    batches = list(grain_pipeline.eval_batches(grain_splits[name], 16))
    mask = np.concatenate([b["mask"] for b in batches]).astype(bool)
    images = np.concatenate([b["image"] for b in batches])[mask]
    labels = np.concatenate([b["label"] for b in batches])[mask]
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28, 1)
    np.testing.assert_array_equal(images, expected.images)  # the same examples, in one order
    np.testing.assert_array_equal(labels, expected.labels)


@pytest.mark.slow
def test_the_dataset_holds_both_formats_and_reads_in_stored_order(data_root, grain_splits):
    builder = tfds_prepare.source_builder("mnist", data_root)  # found: not written again
    assert builder.data_path.is_relative_to(f"{data_root}/mnist/tfds")
    names = sorted(path.name for path in builder.data_path.glob("mnist-*"))
    assert names == [
        f"mnist-{split}.{kind}-00000-of-00001"
        for split in ("test", "train")
        for kind in ("array_record", "tfrecord")
    ]
    info = json.loads((builder.data_path / "dataset_info.json").read_text())
    assert (info["fileFormat"], info["alternativeFileFormats"]) == ("tfrecord", ["array_record"])
    stored = grain_pipeline.read_split(builder, "test")
    assert grain_splits["test"] is not stored  # read once per open, the test split kept whole
    np.testing.assert_array_equal(grain_splits["test"].images, stored.images)


@pytest.mark.slow
def test_grain_and_tfds_pipelines_train_on_bitwise_the_same_batches(data_root, grain_splits):
    tfds_splits = input_pipeline.SOURCE.open_splits(
        tfds_prepare.streaming_builder("mnist", data_root), POSITIONS
    )
    plan = input_pipeline.TrainEpoch(
        16, rng=jax.random.key(SEED), epoch=3, start_step=2, steps_per_element=4
    )
    by_tfds = input_pipeline.tf_train_dataset(tfds_splits["train"], plan)
    by_grain = grain_pipeline.train_batches(grain_splits["train"], plan)
    for tfds_batch, grain_batch in zip(by_tfds.as_numpy_iterator(), by_grain, strict=True):
        for key in ("image", "label"):
            np.testing.assert_array_equal(tfds_batch[key], grain_batch[key])


@pytest.mark.slow
def test_a_feeder_resumed_mid_epoch_ends_with_bitwise_the_same_state(data_root, grain_splits):
    config = default.get_config()
    config.update(
        data_dir=data_root,
        model="cnn_simple",
        batch_size=32,
        chunks_per_epoch=5,  # 14 steps: no length from 3 to 6 divides it: 3, 3, 3, 3, 2
        validation_fraction=FRACTION,
        seed=SEED,
        input_pipeline="grain",
        num_devices=1,
    )
    exp = experiment.build_experiment(config)
    eval_splits = {"test": exp.dataset.test, "validation": exp.validation}
    inputs = feeders.FeederInputs(
        exp.fns, config, exp.train, eval_splits, exp.positions, exp.data_rng, exp.mesh
    )
    feeder = feeders.FEEDERS["grain"](inputs)
    rng = jax.random.key(0)

    def fresh_state():  # the train steps donate the state they are given
        return jax.tree_util.tree_map(lambda x: x.copy(), exp.state)

    *_, (whole, whole_metrics) = feeder.train_chunks(fresh_state(), 1, rng)
    first_two = list(itertools.islice(feeder.train_chunks(fresh_state(), 1, rng), 2))
    done = sum(len(metrics["loss"]) for _, metrics in first_two)
    resumed = list(feeder.train_chunks(first_two[-1][0], 1, rng, start_step=done))
    assert done == 6 and [len(m["loss"]) for _, m in resumed] == [3, 3, 2]
    np.testing.assert_array_equal(resumed[-1][1]["loss"], whole_metrics["loss"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, resumed[-1][0].params, whole.params)


@pytest.mark.slow
def test_a_run_trains_on_the_device_paths_batches_and_never_imports_tensorflow(tmp_path):
    write_idx_dataset(tmp_path / "data" / "mnist")  # unprepared: the run prepares it
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_WITHOUT_TENSORFLOW, str(tmp_path / "data"), str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["tensorflow"] is False
    assert report["accuracy"]["grain"] >= 0.8
    assert report["accuracy"]["grain"] == pytest.approx(report["accuracy"]["device"], abs=0.011)
    assert_same_step_losses(tmp_path / "grain", tmp_path / "device")
    version = tfds_prepare.IDX_TFDS_VERSION
    assert list((tmp_path / "data" / "mnist" / "tfds").glob(f"*/mnist/{version}/*.array_record-*"))


@pytest.mark.slow
def test_without_tensorflow_the_first_run_stops_in_one_line_and_one_prepared_ahead_trains(
    tmp_path,
):
    """TensorFlow unimportable in every process (as when the ``tf`` extra is not installed)."""
    hidden = tmp_path / "no-tensorflow"
    hidden.mkdir()
    (hidden / "sitecustomize.py").write_text(HIDE_TENSORFLOW)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden), str(REPO_ROOT)])}
    write_idx_dataset(tmp_path / "data" / "mnist")
    command = [
        sys.executable, "-m", "flaxmnist.train", "--config=cnn_simple",
        f"--config.data_dir={tmp_path / 'data'}", "--config.num_epochs=1",
        "--config.input_pipeline=grain", "--config.compilation_cache_dir=",
        f"--workdir={tmp_path / 'run'}",
    ]  # fmt: skip
    refused = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: preparing tfds datasets needs tensorflow: pip install 'flaxmnist[tf]'"
    )
    assert "Traceback" not in refused.stderr
    tfds_prepare.prepare_idx("mnist", tmp_path / "data" / "mnist")  # where TensorFlow is
    trained = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] > 0
