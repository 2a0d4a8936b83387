import json

import pytest
from absl import flags
from helpers import load_experiment, parsed_flags, run_script

from flaxmnist.training import loop

tta_effect = load_experiment("tta_effect")


def parsed(*args: str) -> flags.FlagValues:
    return parsed_flags(tta_effect, *args)


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


def test_tta_effect_of_a_run_writes_the_table(tiny_config, tmp_path, capsys):
    metrics = loop.train_and_evaluate(tiny_config, tmp_path / "run")
    assert parsed().shifts == [0, 1, 2]
    capsys.readouterr()  # the training's lines
    tta_effect.tta_effect(
        [tmp_path / "run"], parsed(f"--out={tmp_path}", "--shifts=0", "--shifts=1")
    )
    (row,) = json.loads((tmp_path / "tta_effect.json").read_text())
    assert row["accuracy_shift0"] == metrics["test_accuracy"]
    assert 0.0 <= row["accuracy_shift1"] <= 1.0 and row["model"] == "cnn_simple"
    assert capsys.readouterr().out.startswith("| run | model | tta_shift=0 | tta_shift=1 |")


def test_no_run_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tta_effect.tta_effect([], parsed(f"--out={tmp_path}"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: name at least one run directory: tta_effect.py RUN ...\n"
    )


@pytest.mark.slow
def test_a_bad_flag_is_one_line_and_exit_2():
    result = run_script("experiments/tta_effect.py", "runs/x", "--shifts=one")
    assert (result.returncode, result.stderr) == (
        2,
        "error: --shifts: expected an integer, got 'one'\n",
    )
