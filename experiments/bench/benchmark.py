"""Side-by-side training speed on this CPU: flaxmnist vs Keras 3 vs PyTorch, same data and models.

    pip install -e '.[bench]'
    python experiments/bench/benchmark.py            # full: 200 timed steps x 3 repeats
    python experiments/bench/benchmark.py --quick    # 3 models, 30 steps x 2 repeats (~3 min)

Every (framework, model) pair runs in a fresh subprocess of this script, one after another, on the
vendored MNIST arrays in memory, with Adam (lr 1e-3) and sparse cross-entropy at the reference
batch size. Seconds per epoch are the median time per step times the steps of a 60,000-image
epoch. Startup is process start to the end of the first (compiled) step. GFLOP/s uses the training
FLOPs per step that XLA counts for the flaxmnist step, for every framework, against this machine's
measured matmul peak. Writes ``results/benchmark.{json,md,png}`` beside this file.

Frameworks: ``flaxmnist`` (device-resident ``lax.scan`` path), ``flaxmnist_tfds`` (tf.data
streaming path), ``keras`` (Keras 3 on TensorFlow, ``model.fit``), ``torch`` (eager PyTorch loop).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

START = time.perf_counter()
RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"dense": 32, "mlp_dropout": 128, "cnn_simple": 32, "convnet": 128, "cnn3": 32}
FRAMEWORKS = ("flaxmnist", "flaxmnist_tfds", "keras", "torch")
QUICK_MODELS = ["dense", "cnn_simple", "convnet"]
TRAIN_EXAMPLES = 60_000


def mnist_arrays():
    """The vendored MNIST training split: uint8 images [N, 28, 28, 1] and int32 labels."""
    from flaxmnist import datasets

    train = datasets.load_dataset("mnist").train
    return train.images, train.labels


# ------------------------------------------------------------------------------------ workers


def flax_worker(model_name: str, batch: int, steps: int, repeats: int, streaming: bool) -> dict:
    """Times flaxmnist's train_step (device-resident scan, or tf.data streaming)."""
    import jax
    import optax

    from flaxmnist import input_pipeline, losses, models
    from flaxmnist import steps as steps_lib
    from flaxmnist.configs import default
    from flaxmnist.datasets import ArraySplit
    from flaxmnist.train_state import create_train_state

    images, labels = mnist_arrays()
    config = default.get_config()
    config.model = model_name
    model = models.create_model(config, 10)
    state = create_train_state(model, (28, 28, 1), optax.adam(1e-3), jax.random.key(0))
    fns = steps_lib.make_step_functions(losses.cross_entropy, steps_lib.normalize_images)
    rng = jax.random.key(1)
    flops = training_flops(model_name, batch)
    if streaming:
        split = ArraySplit(images, labels)

        def run(state, epoch):
            dataset = input_pipeline.tf_train_dataset(split, batch, seed=0, epoch=epoch)
            for item in dataset.take(steps).as_numpy_iterator():
                state, metrics = fns.train_step(state, item, rng)
            jax.block_until_ready(metrics)
            return state
    else:
        device_images, device_labels = jax.device_put((images, labels))

        def run(state, epoch):
            order = input_pipeline.epoch_batch_indices(
                rng, epoch, num_examples=len(labels), batch_size=batch
            )[:steps]
            state, metrics = fns.train_on_indices(state, device_images, device_labels, order, rng)
            jax.block_until_ready(metrics)
            return state

    return time_repeats(run, state, repeats, flops)


def training_flops(model_name: str, batch: int) -> float:
    """FLOPs of one training step as XLA counts them, with native convolutions.

    (The im2col layers loop over batch chunks, and XLA's cost analysis counts a loop body once.)
    """
    import jax
    import numpy as np
    import optax

    from flaxmnist import losses, models
    from flaxmnist import steps as steps_lib
    from flaxmnist.configs import default
    from flaxmnist.train_state import create_train_state

    config = default.get_config()
    config.update(model=model_name, conv_impl="xla", pool_impl="xla")
    model = models.create_model(config, 10)
    state = create_train_state(model, (28, 28, 1), optax.adam(1e-3), jax.random.key(0))
    fns = steps_lib.make_step_functions(losses.cross_entropy, steps_lib.normalize_images)
    batch_arrays = {
        "image": np.zeros((batch, 28, 28, 1), np.uint8),
        "label": np.zeros(batch, np.int32),
    }
    cost = fns.train_step.lower(state, batch_arrays, jax.random.key(1)).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))


def time_repeats(run, state, repeats: int, flops: float) -> dict:
    """Runs ``run`` once to compile/warm up, then ``repeats`` timed times."""
    state = run(state, 0)
    startup = time.perf_counter() - START
    times = []
    for epoch in range(1, repeats + 1):
        begin = time.perf_counter()
        state = run(state, epoch)
        times.append(time.perf_counter() - begin)
    return {"startup_s": startup, "run_s": times, "flops_per_step": flops}


def keras_model(name: str):
    """The reference Keras model for ``name``."""
    import keras
    from keras import layers

    conv = dict(kernel_size=3, activation="relu")
    stacks = {
        "dense": [layers.Flatten(), layers.Dense(128, activation="relu")],
        "mlp_dropout": [
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.3),
            layers.Dense(64, activation="relu"),
            layers.Dropout(0.3),
        ],
        "cnn_simple": [layers.Conv2D(32, **conv), layers.MaxPooling2D(), layers.Flatten()],
        "convnet": [
            layers.Conv2D(32, **conv),
            layers.MaxPooling2D(),
            layers.Conv2D(64, **conv),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(0.5),
        ],
        "cnn3": [
            layers.Conv2D(64, **conv),
            layers.MaxPooling2D(),
            layers.Conv2D(128, **conv),
            layers.MaxPooling2D(),
            layers.Conv2D(256, **conv),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(256, activation="relu"),
        ],
    }
    return keras.Sequential([keras.Input((28, 28, 1)), *stacks[name], layers.Dense(10)])


def keras_worker(model_name: str, batch: int, steps: int, repeats: int) -> dict:
    """Times Keras 3 ``model.fit`` on TensorFlow."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    images, labels = mnist_arrays()
    x, y = images[: batch * steps].astype("float32") / 255.0, labels[: batch * steps]
    model = keras_model(model_name)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        metrics=["accuracy"],
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )

    def run(state, epoch):
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=True)
        return state

    return time_repeats(run, None, repeats, 0.0)


def torch_model(name: str):
    """The reference model for ``name`` in PyTorch (NCHW)."""
    from torch import nn

    def conv(cin, cout):
        return [nn.Conv2d(cin, cout, 3), nn.ReLU(), nn.MaxPool2d(2)]

    stacks = {
        "dense": [nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10)],
        "mlp_dropout": [
            nn.Flatten(),
            nn.Linear(784, 128),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(64, 10),
        ],
        "cnn_simple": [*conv(1, 32), nn.Flatten(), nn.Linear(5408, 10)],
        "convnet": [
            *conv(1, 32),
            *conv(32, 64),
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(1600, 10),
        ],
        "cnn3": [
            *conv(1, 64),
            *conv(64, 128),
            *conv(128, 256),
            nn.Flatten(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        ],
    }
    return nn.Sequential(*stacks[name])


def torch_worker(model_name: str, batch: int, steps: int, repeats: int) -> dict:
    """Times an eager PyTorch training loop."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    images, labels = mnist_arrays()
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype("float32") / 255.0)
    y = torch.from_numpy(labels.astype("int64"))
    model = torch_model(model_name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def run(state, epoch):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        for step in range(steps):
            index = order[step * batch : (step + 1) * batch]
            optimizer.zero_grad()
            loss = loss_fn(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
        return state

    return time_repeats(run, None, repeats, 0.0)


def worker_main(framework: str, model: str, steps: int, repeats: int) -> None:
    """Subprocess entry: times one (framework, model) pair and prints JSON."""
    batch = MODELS[model]
    if framework.startswith("flaxmnist"):
        result = flax_worker(model, batch, steps, repeats, framework == "flaxmnist_tfds")
    elif framework == "keras":
        result = keras_worker(model, batch, steps, repeats)
    else:
        result = torch_worker(model, batch, steps, repeats)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


# ------------------------------------------------------------------------------------ driver


def matmul_peak_gflops() -> float:
    """The float32 matmul speed here (1024^3 with numpy/BLAS, best of 5)."""
    import numpy as np

    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    best = min(_timed(lambda: a @ a) for _ in range(5))
    return 2 * 1024**3 / best / 1e9


def _timed(fn) -> float:
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def cpu_model() -> str:
    """The CPU model name."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def run_pair(framework: str, model: str, steps: int, repeats: int) -> dict:
    """Runs one worker subprocess and summarises its timings."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        framework,
        model,
        "--steps",
        str(steps),
        "--repeats",
        str(repeats),
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        return {"framework": framework, "model": model, "error": out.stderr[-500:]}
    raw = json.loads(lines[-1][len("RESULT ") :])
    batch = MODELS[model]
    step_s = statistics.median(raw["run_s"]) / steps
    return {
        "framework": framework,
        "model": model,
        "batch": batch,
        "epoch_s": step_s * (TRAIN_EXAMPLES // batch),
        "examples_per_s": batch / step_s,
        "startup_s": raw["startup_s"],
        "peak_rss_mb": raw["peak_rss_mb"],
        "flops_per_step": raw["flops_per_step"],
        "step_ms": 1e3 * step_s,
    }


def markdown(rows: list[dict], machine: dict) -> str:
    """The results as a markdown table with per-model speed-up ratios."""
    lines = [
        f"Measured on {machine['cpu']}, {machine['cores']} cores, matmul peak "
        f"{machine['matmul_gflops']:.0f} GFLOP/s; {machine['steps']} timed steps x "
        f"{machine['repeats']} repeats, medians.",
        "",
        "| model | batch | framework | s/epoch | examples/s | startup s | peak RSS MB | GFLOP/s "
        "| vs Keras | vs PyTorch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_pair = {(r["framework"], r["model"]): r for r in rows if "error" not in r}
    for model in dict.fromkeys(r["model"] for r in rows):
        flops = by_pair.get(("flaxmnist", model), {}).get("flops_per_step", 0.0)
        for framework in FRAMEWORKS:
            r = by_pair.get((framework, model))
            if r is None:
                lines.append(f"| {model} | {MODELS[model]} | {framework} | failed | | | | | | |")
                continue
            ratios = [
                f"{by_pair[(ref, model)]['epoch_s'] / r['epoch_s']:.2f}x"
                if (ref, model) in by_pair
                else "-"
                for ref in ("keras", "torch")
            ]
            gflops = flops / (r["step_ms"] / 1e3) / 1e9
            lines.append(
                f"| {model} | {r['batch']} | {framework} | {r['epoch_s']:.2f} | "
                f"{r['examples_per_s']:,.0f} | {r['startup_s']:.1f} | {r['peak_rss_mb']:.0f} | "
                f"{gflops:.1f} | {ratios[0]} | {ratios[1]} |"
            )
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path) -> None:
    """Grouped bars of seconds per epoch, one group per model."""
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.5), layout="constrained")
    ax = figure.subplots()
    by_pair = {(r["framework"], r["model"]): r["epoch_s"] for r in rows if "error" not in r}
    models = list(dict.fromkeys(r["model"] for r in rows))
    x = np.arange(len(models))
    width = 0.8 / len(FRAMEWORKS)
    for i, framework in enumerate(FRAMEWORKS):
        heights = [by_pair.get((framework, m), np.nan) for m in models]
        ax.bar(x - 0.4 + (i + 0.5) * width, heights, width, label=framework)
    ax.set_xticks(x, [f"{m}\n(batch {MODELS[m]})" for m in models])
    ax.set_ylabel("seconds per epoch (lower is better)")
    ax.set_yscale("log")
    ax.set_title(f"Training speed on {cpu_model()}, {os.cpu_count()} cores")
    ax.legend()
    figure.savefig(path, dpi=110)


def main() -> None:
    """Runs every pair (or one worker, with --worker) and writes the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 models, 30 steps x 2 repeats")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS))
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "MODEL"))
    args = parser.parse_args()
    steps = args.steps or (30 if args.quick else 200)
    models = args.models or (QUICK_MODELS if args.quick else list(MODELS))
    repeats = args.repeats or (2 if args.quick else 3)
    if args.worker:
        worker_main(*args.worker, steps, repeats)
        return
    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "matmul_gflops": matmul_peak_gflops(),
        "steps": steps,
        "repeats": repeats,
    }
    rows = []
    for model in models:
        for framework in args.frameworks:
            rows.append(run_pair(framework, model, steps, repeats))
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "benchmark.json").write_text(
        json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n"
    )
    table = markdown(rows, machine)
    (RESULTS / "benchmark.md").write_text(table)
    chart(rows, RESULTS / "benchmark.png")
    print(table)


if __name__ == "__main__":
    main()
