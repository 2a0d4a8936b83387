"""Evaluating a trained run: every metric, table and figure, and the HTML report in ``RUN/eval/``.

:func:`evaluate_run` loads a run, scores the whole test split and writes ``metrics.json``
(accuracy, loss, per-class precision / recall / F1 / support, macro and weighted averages, top-2
accuracy, expected calibration error, most-confused pairs), ``classification_report.txt``
(scikit-learn's format), ``confusion_matrix.csv``, ``predictions.npz`` (logits, probabilities,
labels), ``model_summary.txt``, every figure under ``figures/`` and ``report.html``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxmnist import console, models
from flaxmnist.data import augment, datasets
from flaxmnist.errors import FlaxmnistError
from flaxmnist.evaluation import figures, metrics, report
from flaxmnist.evaluation.loading import LoadedRun, load_run, tested_checkpoint
from flaxmnist.models import layers
from flaxmnist.storage import files
from flaxmnist.training import step_functions


def reload_check(workdir: Path, loaded_step: int, dataset: str, accuracy: float) -> str:
    """Compares with the training run's own test accuracy for the same checkpoint."""
    metrics_file = workdir / "metrics.json"
    if not metrics_file.exists():
        return "no training metrics.json to compare with"
    trained = json.loads(metrics_file.read_text())
    if tested_checkpoint(workdir) != loaded_step or trained.get("dataset") != dataset:
        return "a different checkpoint or dataset than the training run's test: not compared"
    expected = trained["test_accuracy"]
    if accuracy == expected:
        return f"reload check: test accuracy {accuracy:.4%} equals the training run's"
    return (
        f"reload check FAILED: test accuracy {accuracy:.4%} differs from the training "
        f"run's {expected:.4%}"
    )


def conv_feature_maps(run: LoadedRun, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Activation maps of every conv layer for one uint8 image [H, W, C], before any pooling.

    A conv layer that max-pools inside (see ``layers.Conv.pool_window``) is shown unpooled too:
    each layer's map is recomputed from its input as activation(conv + bias).
    """
    activation = models.ACTIVATIONS[run.config.activation]
    x = step_functions.normalize_images(image[None], **run.normalization)
    maps: list[tuple[str, np.ndarray]] = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, layers.Conv) and context.method_name == "__call__":
            params = module.variables["params"]
            conv = layers.conv2d(jnp.asarray(args[0]), params["kernel"], padding=module.padding)
            maps.append((module.name, np.asarray(activation(conv[0] + params["bias"]))))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        run.model.apply(run.state.variables(), x, train=False)
    return maps


def first_conv_kernel(params: dict) -> np.ndarray | None:
    """The HWIO kernel of the first conv layer, or None for models without convolutions."""
    convs = sorted(name for name, p in params.items() if np.ndim(p.get("kernel", 0)) == 4)
    return np.asarray(params[convs[0]]["kernel"]) if convs else None


def augmented_samples(run: LoadedRun, images: np.ndarray) -> np.ndarray | None:
    """``images`` as the run's training augmentation saw them, or None when it had none."""
    if "augment" not in run.config:
        return None
    config = augment.AugmentConfig.from_config(run.config)
    if not config.enabled:
        return None
    pixels = images.astype(np.float32) / 255.0
    out = augment.augment_batch(pixels, jax.random.key(0), config)
    return np.clip(np.asarray(out) * 255.0, 0, 255).astype(np.uint8)


def make_figures(
    run: LoadedRun,
    dataset: datasets.Dataset,
    logits: np.ndarray,
    summary: dict[str, Any],
    history: list[dict[str, Any]],
    best_epoch: int | None,
    image_index: int,
) -> dict[str, Any]:
    """Every evaluation figure, keyed by file stem (conv figures only for conv models)."""
    names = list(run.class_names)
    test = dataset.test
    probabilities = metrics.softmax(logits)
    matrix = np.array(summary["confusion_matrix"])
    confidence, accuracy, counts = metrics.calibration_bins(probabilities, test.labels)
    scored = figures.ScoredImages(test.images, test.labels, probabilities, names)
    made = {
        "samples": figures.sample_grid(
            test.images, test.labels, names, title="Random test samples"
        ),
        "class_distribution": figures.class_distribution(dataset.train.labels, test.labels, names),
        "confusion_matrix": figures.confusion_matrix_heatmap(matrix, names),
        "confusion_matrix_normalized": figures.confusion_matrix_heatmap(
            matrix, names, normalize=True
        ),
        "per_class_accuracy": figures.per_class_accuracy(matrix, names),
        "predictions": figures.prediction_grid(scored),
        "confident_mistakes": figures.confident_mistakes(scored),
        "ambiguous": figures.ambiguous_images(scored),
        "reliability": figures.reliability_diagram(
            confidence, accuracy, counts, ece=summary["expected_calibration_error"]
        ),
    }
    if history:
        made["training_curves"] = figures.training_curves(history, best_epoch=best_epoch)
    augmented = augmented_samples(run, test.images[:25])
    if augmented is not None:
        made["augmented_samples"] = figures.sample_grid(
            augmented, test.labels[:25], names, title="Training augmentation (test images)"
        )
    kernel = first_conv_kernel(run.state.params)
    if kernel is not None:
        made["conv_kernels"] = figures.conv_kernels(kernel)
        image = test.images[image_index]
        made["feature_maps"] = figures.feature_maps(image, conv_feature_maps(run, image))
    return made


def step_loss_figure(workdir: Path):
    """The custom-loop loss curve from ``steps.csv``, or None when there is none."""
    path = workdir / "steps.csv"
    if not path.exists() or not path.read_text().strip():
        return None
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return figures.step_loss_curve(
        np.array([int(r["step"]) for r in rows]),
        np.array([float(r["loss"]) for r in rows]),
        epochs=np.array([int(r["epoch"]) for r in rows]),
    )


def write_tables(eval_dir: Path, summary: dict, names: Sequence[str], logits, labels) -> str:
    """metrics.json, classification_report.txt, confusion_matrix.csv, predictions.npz."""
    matrix = np.array(summary["confusion_matrix"])
    report_text = metrics.classification_report(matrix, names)
    files.write_json_atomic(eval_dir / "metrics.json", summary)
    files.write_text_atomic(eval_dir / "classification_report.txt", report_text)
    rows = [
        {"true \\ predicted": name, **dict(zip(names, map(int, row), strict=True))}
        for name, row in zip(names, matrix, strict=True)
    ]
    files.write_csv_atomic(eval_dir / "confusion_matrix.csv", rows)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, logits=logits, probabilities=metrics.softmax(logits), labels=labels)
    files.write_bytes_atomic(eval_dir / "predictions.npz", buffer.getvalue())
    return report_text


def predict_test(
    workdir: Path,
    *,
    checkpoint: str | int = "tested",
    dataset: str | None = None,
    data_dir: str | None = None,
    allow_plugins: bool = False,
):
    """Loads a run and scores the test split: (run, data, logits, summary, warnings).

    ``allow_plugins`` as :func:`flaxmnist.load_run` takes it.
    """
    run = load_run(workdir, checkpoint, allow_plugins=allow_plugins)
    name = dataset or run.config.dataset
    notes = []
    if name != run.config.dataset:
        notes.append(f"warning: evaluating a {run.config.dataset} model on {name}")
        console.warn(f"evaluating a {run.config.dataset} model on {name}")
    data = datasets.load_dataset(name, data_dir or run.config.data_dir or None)
    logits = run.predict(data.test.images)
    summary = {
        **metrics.evaluation_summary(logits, data.test.labels, run.class_names),
        "dataset": name,
        "checkpoint_step": run.step,
        "checkpoint_epoch": run.epoch,
    }
    return run, data, logits, summary, notes


def evaluate_run(
    workdir: str | Path,
    *,
    checkpoint: str | int = "tested",
    dataset: str | None = None,
    data_dir: str | None = None,
    image_index: int = 0,
    allow_plugins: bool = False,
) -> dict[str, Any]:
    """Evaluates a run and writes ``workdir/eval``; returns the metrics written there.

    ``allow_plugins`` as :func:`flaxmnist.load_run` takes it.
    """
    workdir = Path(workdir)
    run, data, logits, summary, notes = predict_test(
        workdir,
        checkpoint=checkpoint,
        dataset=dataset,
        data_dir=data_dir,
        allow_plugins=allow_plugins,
    )
    name = summary["dataset"]
    if not 0 <= image_index < len(data.test):
        raise FlaxmnistError(f"image_index must be in [0, {len(data.test)}), got {image_index}")
    check = reload_check(workdir, run.step, name, summary["accuracy"])
    if first_conv_kernel(run.state.params) is None:
        notes.append(f"{run.config.model} has no conv layers: no kernel or feature-map figures")
    summary["reload_check"] = check
    eval_dir = workdir / "eval"
    (eval_dir / "figures").mkdir(parents=True, exist_ok=True)
    report_text = write_tables(eval_dir, summary, run.class_names, logits, data.test.labels)
    history = _read_json(workdir / "history.json", [])
    best_epoch = _read_json(workdir / "metrics.json", {}).get("best_epoch") or None
    made = make_figures(run, data, logits, summary, history, best_epoch, image_index)
    step_curve = step_loss_figure(workdir)
    if step_curve is not None:
        made["step_loss"] = step_curve
    paths = {stem.replace("_", " "): eval_dir / "figures" / f"{stem}.png" for stem in made}
    for figure, path in zip(made.values(), paths.values(), strict=True):
        figures.save_figure(figure, path)
    model_summary = run.model.tabulate(
        jax.random.key(0), np.zeros((1, *data.image_shape), np.float32), train=False, depth=1
    )
    files.write_text_atomic(eval_dir / "model_summary.txt", model_summary)
    headline = (
        f"{run.config.model} on {name}: test accuracy {summary['accuracy']:.2%}, "
        f"loss {summary['loss']:.4f} ({summary['num_examples']:,} images, "
        f"checkpoint step {run.step}, epoch {run.epoch})"
    )
    report.write_report(
        eval_dir / "report.html",
        title=f"flaxmnist run {workdir.name}",
        headline=headline,
        config=run.config.to_dict(),
        model_summary=model_summary,
        history=history,
        metrics_rows=_metric_rows(summary),
        class_report=report_text,
        figures=paths,
        notes=[*notes, check],
    )
    console.say(headline)
    console.say(check)
    console.say(
        f"wrote {eval_dir}/ (metrics.json, classification_report.txt, confusion_matrix.csv, "
        f"predictions.npz, {len(paths)} figures, report.html)"
    )
    return summary


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def _metric_rows(summary: dict) -> list[dict[str, Any]]:
    rows = [
        {"metric": key, "value": summary[key]}
        for key in (
            "accuracy",
            "loss",
            "top2_accuracy",
            "expected_calibration_error",
            "num_examples",
        )
    ]
    rows += [
        {"metric": f"{kind} F1", "value": summary[f"{kind}_avg"]["f1"]}
        for kind in ("macro", "weighted")
    ]
    rows += [
        {"metric": f"confused: {p['true']} → {p['predicted']}", "value": p["count"]}
        for p in summary["most_confused"][:5]
    ]
    return rows
