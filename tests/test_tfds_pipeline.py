"""The ``tfds`` input pipeline reads tfds's files: the device path's examples, trained alike.

One synthetic IDX data dir (module scope) becomes a tfds dataset on first use; every test reads it.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from helpers import assert_same_step_losses

from flaxmnist.configs import default
from flaxmnist.data import datasets, input_pipeline, tfds_prepare
from flaxmnist.testing import run_splits, write_idx_dataset
from flaxmnist.training import loop

pytestmark = pytest.mark.slow  # TensorFlow, training

SEED, FRACTION = 7, 0.1


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("tfds-pipeline")
    write_idx_dataset(root / "mnist")  # 512 train, 100 test images
    return str(root)


@pytest.fixture(scope="module")
def device_splits(data_root) -> dict[str, datasets.ArraySplit]:
    return run_splits(data_root, FRACTION, SEED)


@pytest.fixture(scope="module")
def tfds_splits(data_root) -> dict[str, datasets.ArraySplit]:
    builder = tfds_prepare.streaming_builder("mnist", data_root)
    positions = datasets.run_positions({"train": 512, "test": 100}, FRACTION, SEED)
    return input_pipeline.SOURCE.open_splits(builder, positions)


def test_the_idx_folder_becomes_a_tfds_dataset_keyed_by_its_contents(data_root):
    builder = tfds_prepare.streaming_builder("mnist", data_root)
    digest = tfds_prepare.idx_digest(datasets.idx_folder("mnist", data_root))
    assert builder.data_path.parent.parent.name == digest
    assert builder.data_path.is_relative_to(f"{data_root}/mnist/tfds")
    assert {s: builder.info.splits[s].num_examples for s in ("train", "test")} == {
        "train": 512,
        "test": 100,
    }
    assert json.loads((builder.data_path / "dataset_info.json").read_text())["name"] == "mnist"
    before = os.stat(builder.data_path / "dataset_info.json").st_mtime_ns
    again = tfds_prepare.streaming_builder("mnist", data_root)  # found, not written again
    assert os.stat(again.data_path / "dataset_info.json").st_mtime_ns == before


@pytest.mark.parametrize("name", ["train", "validation", "test"])
def test_both_pipelines_see_the_same_examples(device_splits, tfds_splits, name):
    expected = device_splits[name]
    batches = list(input_pipeline.tf_eval_dataset(tfds_splits[name], 16).as_numpy_iterator())
    mask = np.concatenate([b["mask"] for b in batches]).astype(bool)
    images = np.concatenate([b["image"] for b in batches])[mask]
    labels = np.concatenate([b["label"] for b in batches])[mask]
    np.testing.assert_array_equal(images, expected.images)  # the same examples, in one order
    np.testing.assert_array_equal(labels, expected.labels)


def test_an_epoch_gives_the_device_pipelines_batches(device_splits, tfds_splits):
    rng = jax.random.key(SEED)
    plan = input_pipeline.TrainEpoch(10, rng=rng, epoch=1)
    batches = list(input_pipeline.tf_train_dataset(tfds_splits["train"], plan).as_numpy_iterator())
    order = input_pipeline.epoch_order(rng, 1, num_examples=461, batch_size=10)
    assert len(batches) == len(order) == 461 // 10
    train = device_splits["train"]
    for batch, indices in zip(batches, np.asarray(order), strict=True):
        np.testing.assert_array_equal(batch["image"], train.images[indices])
        np.testing.assert_array_equal(batch["label"], train.labels[indices])


def test_the_tfds_pipeline_trains_on_the_device_pipelines_batches(data_root, tmp_path):
    accuracy = {}
    for pipeline in ("device", "tfds"):
        config = default.get_config()
        config.update(
            data_dir=data_root,
            model="cnn_simple",
            batch_size=32,
            eval_batch_size=64,
            num_epochs=2,
            validation_fraction=FRACTION,
            seed=SEED,
            input_pipeline=pipeline,
            compilation_cache_dir="",
        )
        accuracy[pipeline] = loop.train_and_evaluate(config, tmp_path / pipeline)["test_accuracy"]
    assert accuracy["tfds"] >= 0.8
    assert accuracy["tfds"] == pytest.approx(accuracy["device"], abs=0.011)  # 1 of 100 images
    assert_same_step_losses(tmp_path / "tfds", tmp_path / "device")
