import chex
import numpy as np
import pytest

import flaxmnist
from flaxmnist.errors import FlaxmnistError
from flaxmnist.testing import write_idx_dataset
from flaxmnist.training import experiment, loop, warm_start


def test_merge_matching_copies_same_path_and_shape_only():
    target = {"a": {"kernel": np.zeros((2, 2))}, "b": np.zeros(3), "head": {"bias": np.zeros(2)}}
    source = {"a": {"kernel": np.ones((2, 2))}, "b": np.ones(4), "head": {"bias": np.ones(2)}}
    merged, copied = warm_start.merge_matching(target, source, skip_prefix="head")
    assert copied == ["a/kernel"]
    np.testing.assert_array_equal(merged["a"]["kernel"], np.ones((2, 2)))
    np.testing.assert_array_equal(merged["b"], np.zeros(3))
    np.testing.assert_array_equal(merged["head"]["bias"], np.zeros(2))


@pytest.mark.slow
def test_fine_tuning_on_new_classes_reinitialises_only_the_head(tiny_config, tmp_path):
    loop.train_and_evaluate(tiny_config, tmp_path / "mnist_run")
    source = flaxmnist.load_run(tmp_path / "mnist_run").state.params
    write_idx_dataset(tmp_path / "data" / "fashion_mnist", num_train=64, num_test=16)
    tiny_config.update(
        dataset="fashion_mnist",
        data_dir=str(tmp_path / "data"),
        init_from=str(tmp_path / "mnist_run"),
    )
    params = experiment.build_experiment(tiny_config).state.params
    chex.assert_trees_all_equal(params["Conv_0"], source["Conv_0"])
    assert not np.allclose(params["head"]["kernel"], source["head"]["kernel"])
    tiny_config.dataset = "mnist"  # same classes: the head is copied too
    tiny_config.data_dir = str(tmp_path / "data")
    write_idx_dataset(tmp_path / "data" / "mnist", num_train=64, num_test=16)
    chex.assert_trees_all_equal(experiment.build_experiment(tiny_config).state.params, source)


@pytest.mark.slow
def test_init_from_a_run_of_an_unrelated_model_is_refused(tiny_config, tmp_path):
    loop.train_and_evaluate(tiny_config, tmp_path / "cnn")
    write_idx_dataset(tmp_path / "data" / "fashion_mnist", num_train=64, num_test=16)
    tiny_config.update(
        model="dense",
        dataset="fashion_mnist",
        data_dir=str(tmp_path / "data"),
        init_from=str(tmp_path / "cnn"),
    )
    with pytest.raises(FlaxmnistError, match="no parameter of that run fits"):
        experiment.build_experiment(tiny_config)
