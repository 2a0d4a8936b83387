"""The evaluation CLI, report and comparison on a small trained run."""

import html
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import require_browser

import flaxmnist
from flaxmnist.evaluation import comparison, evaluator
from flaxmnist.training import loop, step_functions

# Every test here evaluates the runs trained once for the module.
pytestmark = pytest.mark.slow

FIGURES = {
    "samples",
    "class_distribution",
    "confusion_matrix",
    "confusion_matrix_normalized",
    "per_class_accuracy",
    "predictions",
    "confident_mistakes",
    "ambiguous",
    "reliability",
    "training_curves",
    "conv_kernels",
    "feature_maps",
    "step_loss",
}


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """A conv run and a dense run on the synthetic data (trained once for this module)."""
    from flaxmnist.configs import default
    from flaxmnist.testing import write_idx_dataset

    root = tmp_path_factory.mktemp("eval")
    write_idx_dataset(root / "data" / "mnist", num_train=512, num_test=100)
    runs = {}
    for model in ("cnn_simple", "dense"):
        config = default.get_config()
        config.update(
            model=model,
            data_dir=str(root / "data"),
            batch_size=32,
            eval_batch_size=64,
            num_epochs=2,
            compilation_cache_dir="",
        )
        loop.train_and_evaluate(config, root / model)
        runs[model] = root / model
    return runs


def test_evaluate_writes_every_file_with_consistent_numbers(trained_runs):
    run = trained_runs["cnn_simple"]
    summary = evaluator.evaluate_run(run)
    eval_dir = run / "eval"
    written = json.loads((eval_dir / "metrics.json").read_text())
    assert written["accuracy"] == summary["accuracy"]
    matrix = np.array(written["confusion_matrix"])
    assert matrix.sum() == 100 == written["num_examples"]
    assert np.trace(matrix) / 100 == pytest.approx(written["accuracy"])
    training = json.loads((run / "metrics.json").read_text())
    assert written["accuracy"] == training["test_accuracy"]
    assert written["reload_check"].startswith("reload check: test accuracy")
    csv_rows = (eval_dir / "confusion_matrix.csv").read_text().splitlines()
    assert len(csv_rows) == 11 and csv_rows[1].split(",")[1:] == [str(v) for v in matrix[0]]
    predictions = np.load(eval_dir / "predictions.npz")
    np.testing.assert_allclose(predictions["probabilities"].sum(-1), 1.0, rtol=1e-6)
    assert (predictions["probabilities"].argmax(-1) == predictions["labels"]).mean() == (
        written["accuracy"]
    )
    report = (eval_dir / "classification_report.txt").read_text()
    assert "macro avg" in report and "weighted avg" in report
    assert {p.stem for p in (eval_dir / "figures").glob("*.png")} == FIGURES
    html = (eval_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)
    assert "cnn_simple" in html and "Conv_0" in (eval_dir / "model_summary.txt").read_text()


def test_dense_models_skip_the_conv_figures(trained_runs):
    evaluator.evaluate_run(trained_runs["dense"])
    stems = {p.stem for p in (trained_runs["dense"] / "eval" / "figures").glob("*.png")}
    assert stems == FIGURES - {"conv_kernels", "feature_maps"}


def test_feature_maps_have_one_entry_per_conv_layer(trained_runs):
    import flaxmnist

    run = flaxmnist.load_run(trained_runs["cnn_simple"])
    image = np.random.default_rng(0).integers(0, 256, (28, 28, 1), np.uint8)
    maps = evaluator.conv_feature_maps(run, image)
    assert [name for name, _ in maps] == ["Conv_0"]
    # The full 26×26 map after ReLU, although the layer max-pools inside: conv + bias, then ReLU.
    params = run.state.params["Conv_0"]
    x = step_functions.normalize_images(image[None], **run.normalization)
    conv = jax.lax.conv_general_dilated(
        x, params["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    expected = np.maximum(np.asarray(conv + params["bias"])[0], 0)
    np.testing.assert_allclose(maps[0][1], expected, atol=1e-5)


def test_compare_writes_a_table_and_figures(trained_runs, tmp_path):
    rows = comparison.compare([trained_runs["cnn_simple"], trained_runs["dense"]], tmp_path / "cmp")
    assert [r["model"] for r in rows] == ["cnn_simple", "dense"]
    assert rows[0]["params"] == 54_410 and rows[1]["params"] == 101_770
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert table.splitlines()[2].startswith("| cnn_simple | cnn_simple | mnist | 54410 |")
    assert {p.name for p in (tmp_path / "cmp").glob("*.png")} == {
        "model_comparison.png",
        "val_accuracy_curves.png",
        "val_loss_curves.png",
        "per_class.png",
    }


def test_runs_without_validation_are_compared_on_their_training_curves(trained_runs, tmp_path):
    unvalidated = []
    for model in ("cnn_simple", "dense"):  # copies whose history has no validation metrics
        copy = Path(shutil.copytree(trained_runs[model], tmp_path / f"{model}-no-val"))
        history = json.loads((copy / "history.json").read_text())
        assert "val_accuracy" in history[0]
        stripped = [{k: v for k, v in r.items() if not k.startswith("val_")} for r in history]
        (copy / "history.json").write_text(json.dumps(stripped))
        metrics = json.loads((copy / "metrics.json").read_text())
        (copy / "metrics.json").write_text(json.dumps({**metrics, "final_val_accuracy": None}))
        unvalidated.append(copy)
    rows = comparison.compare(unvalidated, tmp_path / "cmp")
    assert rows[0]["final_val_accuracy"] is None
    table_row = (tmp_path / "cmp" / "comparison.md").read_text().splitlines()[2]
    assert table_row.split(" | ")[-2] == "-"  # no validation accuracy
    curves = {p.name for p in (tmp_path / "cmp").glob("*_curves.png")}
    assert curves == {"train_accuracy_curves.png", "train_loss_curves.png"}
    comparison.compare([unvalidated[0], trained_runs["dense"]], tmp_path / "mixed")
    curves = {p.name for p in (tmp_path / "mixed").glob("*_curves.png")}
    assert curves == {"val_accuracy_curves.png", "val_loss_curves.png"}


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        ("flaxmnist.evaluate", ["--workdir=nope"], "not a run directory"),
        (
            "flaxmnist.evaluate",
            ["--workdir=nope", "--image_index=x"],
            "--image_index: expected an integer",
        ),
        ("flaxmnist.evaluate", ["--workdir=nope", "extra"], "unexpected arguments: extra"),
        ("flaxmnist.compare", ["nope"], "nope has no metrics.json"),
        ("flaxmnist.compare", [], "name at least one run directory"),
        ("flaxmnist.compare", ["--no_such_flag", "nope"], "no_such_flag"),
    ],
)
def test_evaluate_and_compare_clis_fail_in_one_line(module, args, message, tmp_path):
    result = _cli(module, *args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert not (tmp_path / "comparison").exists()


@pytest.mark.slow
def test_compare_cli_prints_the_table_and_writes_the_files(trained_runs, tmp_path):
    runs = [str(trained_runs["cnn_simple"]), str(trained_runs["dense"])]
    result = _cli("flaxmnist.compare", *runs, f"--out={tmp_path / 'cmp'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| cnn_simple | cnn_simple | mnist | 54410 |" in result.stdout
    assert (tmp_path / "cmp" / "comparison.csv").exists()


# Injected into a copy of the report: records failed loads and errors, then what the page shows.
BROWSER_CHECK = """<script>
window.__errors = [];
window.addEventListener("error", e => __errors.push(String(e.message || e.target.src)), true);
window.addEventListener("load", () => {
  const images = [...document.images];
  parent.postMessage(JSON.stringify({
    images: images.length,
    unloaded: images.filter(i => !(i.complete && i.naturalWidth > 0)).length,
    widest: Math.max(...images.map(i => i.getBoundingClientRect().right)),
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    innerWidth: window.innerWidth,
    viewport: !!document.querySelector('meta[name=viewport]'),
    errors: window.__errors,
  }), "*");
});
</script>"""
# Headless Chromium's window is at least 500 px wide: a phone's width is an iframe of that width.
HARNESS = """<!DOCTYPE html><html><body style="margin:0">
<iframe src="{page}" style="width:{width}px;height:900px;border:0"></iframe>
<script>window.addEventListener("message", e => document.body.setAttribute("data-check", e.data));
</script></body></html>"""
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]


def _in_browser(report: Path, width: int, tmp_path: Path) -> dict:
    page = tmp_path / f"checked-{width}.html"
    page.write_text(report.read_text().replace("<head>", "<head>" + BROWSER_CHECK, 1))
    harness = tmp_path / f"harness-{width}.html"
    harness.write_text(HARNESS.format(page=page.name, width=width))
    result = subprocess.run(
        [
            require_browser()[0],
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / f'profile-{width}'}",
            "--window-size=1400,1000",
            "--virtual-time-budget=10000",
            "--dump-dom",
            harness.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    marker = 'data-check="'
    start = dom.index(marker) + len(marker)
    return json.loads(html.unescape(dom[start : dom.index('"', start)]))


@pytest.mark.parametrize("width", [390, 1280])  # a phone, a desktop
def test_the_report_loads_every_figure_in_a_real_browser_and_fits_the_screen(
    trained_runs, tmp_path, width
):
    run = trained_runs["cnn_simple"]
    report = run / "eval" / "report.html"
    if not report.exists():
        evaluator.evaluate_run(run)
    check = _in_browser(report, width, tmp_path)
    assert check["images"] == len(FIGURES) and check["unloaded"] == 0
    assert check["errors"] == [] and check["viewport"]
    assert check["innerWidth"] == width
    assert check["overflow"] <= 0 and check["widest"] <= width


@pytest.mark.slow
def test_the_checkpoint_flag_evaluates_the_step_or_the_best_it_names(trained_runs):
    run = trained_runs["dense"]
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir())
    assert len(steps) == 2  # one per epoch
    for flag, step in ((str(steps[0]), steps[0]), ("best", None)):
        command = [sys.executable, "-m", "flaxmnist.evaluate", f"--workdir={run}"]
        result = subprocess.run(
            [*command, f"--checkpoint={flag}"], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr
        written = json.loads((run / "eval" / "metrics.json").read_text())
        expected = step or flaxmnist.load_run(run, "best").step
        assert (flag, written["checkpoint_step"]) == (flag, expected)


def test_another_dataset_is_evaluated_with_a_warning_and_a_bad_image_index_is_refused(
    trained_runs, tmp_path
):
    from flaxmnist.errors import FlaxmnistError
    from flaxmnist.testing import write_idx_dataset

    run = trained_runs["dense"]
    write_idx_dataset(tmp_path / "fashion_mnist", num_train=64, num_test=30)
    _, data, logits, summary, notes = evaluator.predict_test(
        run, dataset="fashion_mnist", data_dir=str(tmp_path)
    )
    assert notes == ["warning: evaluating a mnist model on fashion_mnist"]
    assert summary["dataset"] == "fashion_mnist" and len(logits) == len(data.test) == 30
    with pytest.raises(FlaxmnistError, match=r"image_index must be in \[0, 100\), got 100"):
        evaluator.evaluate_run(run, image_index=100)


def test_the_augmented_samples_figure_shows_the_run_s_augmentation_only_when_it_had_one():
    from test_export import untrained_run

    run = untrained_run("dense")
    images = np.zeros((4, 28, 28, 1), np.uint8)
    images[:, 10:18, 12:16] = 255  # a bar: rotation and translation move it
    assert evaluator.augmented_samples(run, images) is None
    run.config.augment.update(rotation=30.0, translate=0.2)
    augmented = evaluator.augmented_samples(run, images)
    assert augmented.shape == images.shape and augmented.dtype == np.uint8
    assert not np.array_equal(augmented, images)
