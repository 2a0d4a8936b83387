from helpers import load_experiment

from flaxmnist.training import loop

tta_effect = load_experiment("tta_effect")


def test_markdown_table_shows_each_shift_and_its_change():
    rows = [
        {
            "run": "/x/fast",
            "model": "convnet_bn",
            "accuracy_shift0": 0.9918,
            "accuracy_shift1": 0.9924,
            "accuracy_shift2": 0.9913,
        }
    ]
    table = tta_effect.markdown_table(rows, [0, 1, 2]).splitlines()
    assert table[0] == "| run | model | tta_shift=0 | tta_shift=1 | tta_shift=2 |"
    assert table[2] == "| `fast` | `convnet_bn` | 99.18 % | 99.24 % (+0.06) | 99.13 % (-0.05) |"


def test_tta_accuracies_of_a_run(tiny_config, tmp_path):
    metrics = loop.train_and_evaluate(tiny_config, tmp_path / "run")
    row = tta_effect.tta_accuracies(tmp_path / "run", [0, 1])
    assert row["accuracy_shift0"] == metrics["test_accuracy"]
    assert 0.0 <= row["accuracy_shift1"] <= 1.0 and row["model"] == "cnn_simple"
