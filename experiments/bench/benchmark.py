"""Side-by-side training speed on this CPU: flaxmnist vs Keras 3 vs PyTorch, same data and models.

    pip install -e '.[bench]'
    python experiments/bench/benchmark.py                   # every section
    python experiments/bench/benchmark.py --quick           # models section, 3 models (~3 min)
    python experiments/bench/benchmark.py --sections=startup,batch,tiling --repeats=1
    python experiments/bench/benchmark.py --sections=pipelines --repeats=3 --epochs=3
    python experiments/bench/benchmark.py --sections=race --seeds=10,11,12,13,14
    python experiments/bench/benchmark.py --sections=models,race --smoke   # commands work?

Sections (``--sections``, comma-separated, run in this order; a full run runs them all, ``--quick``
only ``models``; ``--frameworks`` and ``--models`` are comma-separated too):

* ``models``: every (framework, model) pair runs in a fresh subprocess of this script, one after
  another, on the vendored MNIST arrays in memory, with Adam (lr 1e-3) and sparse cross-entropy at
  the reference batch size. flaxmnist and PyTorch: 200 timed steps x 3 repeats after a warm-up
  run (quick: dense, cnn_simple and convnet, 30 steps x 2 repeats); each timed run shuffles the
  ``batch x steps`` images it trains on (a whole 60,000-image shuffle per 200 steps would weigh
  9x more than in an epoch: 48 ms on 2 cores for JAX's sort-based permutation, 66 ms of
  ``dense`` steps). Keras: one ``fit`` of ``1 + repeats`` whole 60,000-image epochs, the first
  the warm-up (it compiles the last, partial batch too), so ``fit``'s fixed cost weighs what it
  does in a real epoch. Seconds per epoch are the median time per step times the steps of a
  60,000-image epoch. Startup is process start (``/proc``) to the first compiled training step
  done, timed apart from the timed runs (Keras: a one-batch ``fit`` first). GFLOP/s uses the
  training FLOPs per step that XLA counts for the flaxmnist step, for every framework, against
  this machine's measured matmul peak. ``--smoke``: a few hundred images per run, results
  printed only (checks the commands).
* ``race`` (``race.py``): launch-to-exit wall time to >= 99 % test accuracy, each run a fresh
  process, the contestants interleaved over fresh seeds (``--seeds``; ``--contestants``): our
  ``fast`` preset, the same recipe in Keras and in PyTorch, and the published references (Keras's
  simple convnet, pytorch/examples mnist), with s/epoch, GFLOP/s, peak RSS and test accuracy.
* ``startup`` (``end_to_end.py``): process start to the first training step of
  ``--config=fast`` with a cold, then a warm compilation cache (``--repeats`` warm runs).
* ``pipelines``: the three input pipelines side by side on the CNN and recipe of Flax's MNIST
  example (SGD lr 0.1, momentum 0.9, batch 128, all 60,000 training images): each run is a fresh
  subprocess that builds its feeder (``device``, ``tfds`` or ``grain``, the tfds dataset prepared
  first, both its formats) and trains ``--epochs`` epochs; the runs take turns (``--repeats`` of
  each, the order rotating), and the table gives the median of every epoch after the first
  (compiled, caches filled), peak RSS, the test accuracy and each pipeline's ratios to
  ``device``. The table also goes into ``docs/data.md``, between its ``pipelines`` markers.
* ``batch``, ``tiling`` (``scaling.py``): flaxmnist throughput vs batch size; epoch time vs
  training-set size (1x, 2x, 4x the 60,000 images). Named together with ``--quick`` they run
  smaller variants (cnn_simple only and shorter runs; 1x and 2x only).

Writes ``results/benchmark.{json,md,png}`` and ``results/throughput_vs_batch.png`` beside this
file; sections that do not run keep their previous results in the JSON and markdown. Bad flags
end in one line on stderr and exit status 2.

Frameworks (:data:`FRAMEWORK_SETTINGS`): ``flaxmnist`` (device-resident ``lax.scan`` path),
``flaxmnist_tfds`` (tf.data streaming path), ``keras`` (Keras 3 on TensorFlow, ``model.fit``
with ``jit_compile=True`` and ``--keras_steps_per_execution``), ``keras_default`` (the same at
``compile()``'s defaults: no XLA, one step per call), ``torch`` (``torch.compile``) and
``torch_eager`` (eager PyTorch). The ratios compare with each framework's faster variant.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from absl import flags

from flaxmnist import cli, errors
from flaxmnist.errors import ConfigError
from flaxmnist.testing import cpu_model, machine_name

START = time.perf_counter()
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
RESULTS = Path(__file__).resolve().parent / "results"
DATA_DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"
DOC_BEGIN = "<!-- pipelines:begin (written by experiments/bench/benchmark.py) -->"
DOC_END = "<!-- pipelines:end -->"
MODELS = {"dense": 32, "mlp_dropout": 128, "cnn_simple": 32, "convnet": 128, "cnn3": 32}
FRAMEWORK_SETTINGS = {
    "flaxmnist": "lax.scan, device-resident",
    "flaxmnist_tfds": "tf.data streaming",
    "keras": "jit_compile, {spe} steps/execution",
    "keras_default": "compile() defaults",
    "torch": "torch.compile",
    "torch_eager": "eager",
}
FRAMEWORKS = tuple(FRAMEWORK_SETTINGS)
# The reference columns: each framework's faster variant ("where it pays").
REFERENCES = {"Keras": ("keras", "keras_default"), "PyTorch": ("torch", "torch_eager")}
QUICK_MODELS = ["dense", "cnn_simple", "convnet"]
SECTIONS = ("models", "pipelines", "race", "startup", "batch", "tiling")
QUICK_SECTIONS = ("models",)
SMOKE_SECTIONS = ("models", "race")
TRAIN_EXAMPLES = 60_000
WORKER_TIMEOUT_S = 1800
PIPELINES = ("device", "tfds", "grain")
PIPELINE_BATCH = 128  # the Flax MNIST example's recipe
FLAG_NAMES = ("quick", "sections", "steps", "repeats", "frameworks", "models")
FLAG_NAMES += ("smoke", "seeds", "contestants", "keras_steps_per_execution")
FLAG_NAMES += ("worker", "batch", "tile", "epochs")  # the workers' (and --epochs the pipelines')
SMOKE_STEPS = 4  # --smoke: steps per timed run (and Keras's epochs are this many batches)
KERAS_STEPS_PER_EXECUTION = 50  # see keras_recipe.py
GRADIENT_TOLERANCE = 1e-3  # max relative error of torch.compile's gradients against eager ones
GRADIENT_CHECK_EXAMPLES = 64


def mnist_arrays(split: str = "train", tile: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A vendored MNIST split: uint8 images [N, 28, 28, 1] and int32 labels, repeated ``tile``×."""
    from flaxmnist.data import datasets

    arrays = getattr(datasets.load_dataset("mnist"), split)
    return np.tile(arrays.images, (tile, 1, 1, 1)), np.tile(arrays.labels, tile)


# ------------------------------------------------------------------------------------ workers


def flax_worker(
    model_name: str, batch: int, steps: int, repeats: int, streaming: bool, tile: int = 1
) -> dict:
    """Times flaxmnist's train_step (device-resident scan, or tf.data streaming).

    ``tile`` > 1 trains on the training set repeated that many times (the dataset-size scaling).
    """
    import jax

    from flaxmnist.data import input_pipeline

    images, labels = mnist_arrays(tile=tile)
    state, fns = flax_state_and_steps(model_name)
    rng = jax.random.key(1)
    flops = training_flops(model_name, batch)
    if streaming:  # the split as the tfds pipeline holds it: one cached tf.data element
        tf = input_pipeline.import_tensorflow()
        n = batch * steps
        whole = {"image": images[:n], "label": labels[:n]}
        split = input_pipeline.CachedSplit(tf.data.Dataset.from_tensors(whole).cache(), n)

        def run(state, epoch, run_steps=steps):
            plan = input_pipeline.TrainEpoch(batch, seed=0, epoch=epoch)
            dataset = input_pipeline.tf_train_dataset(split, plan)
            for item in dataset.take(run_steps).as_numpy_iterator():
                state, metrics = fns.train_step(state, item, rng)
            jax.block_until_ready(metrics)
            return state
    else:
        device_images, device_labels = jax.device_put((images, labels))

        def run(state, epoch, run_steps=steps):
            order = input_pipeline.epoch_batch_indices(
                rng, epoch, num_examples=batch * run_steps, batch_size=batch
            )
            state, metrics = fns.train_on_indices(state, device_images, device_labels, order, rng)
            jax.block_until_ready(metrics)
            return state

    first_step = functools.partial(run, epoch=0, run_steps=1)  # its own (one-step) program
    return time_repeats(run, state, repeats, flops, steps, first_step)


def flax_state_and_steps(model_name: str, **overrides):
    """A fresh train state (Adam, lr 1e-3) of ``model_name`` and the jitted step functions."""
    import jax
    import optax

    from flaxmnist import losses, models
    from flaxmnist.configs import default
    from flaxmnist.training import step_functions as steps_lib
    from flaxmnist.training.train_state import create_train_state

    config = default.get_config()
    config.update(model=model_name, **overrides)
    model = models.create_model(config, 10)
    state = create_train_state(model, (28, 28, 1), optax.adam(1e-3), jax.random.key(0))
    loss_fn = losses.get_loss("cross_entropy")
    return state, steps_lib.make_step_functions(loss_fn, steps_lib.normalize_images)


def training_flops(model_name: str, batch: int) -> float:
    """FLOPs of one training step as XLA counts them, with native convolutions.

    (The im2col layers loop over batch chunks, and XLA's cost analysis counts a loop body once.)
    """
    import jax

    state, fns = flax_state_and_steps(model_name, conv_impl="xla", pool_impl="xla")
    batch_arrays = {
        "image": np.zeros((batch, 28, 28, 1), np.uint8),
        "label": np.zeros(batch, np.int32),
    }
    cost = fns.train_step.lower(state, batch_arrays, jax.random.key(1)).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))


def time_repeats(run, state, repeats: int, flops: float, steps: int, first_step) -> dict:
    """Times the first step from process start, then ``repeats`` runs after a warm-up run.

    Args:
      run: ``run(state, epoch) -> state`` trains ``steps`` steps (blocking until done).
      state: what ``run`` and ``first_step`` thread through (None for Keras and PyTorch).
      repeats: timed runs.
      flops: training FLOPs per step (0 when the framework does not count them).
      steps: steps per run.
      first_step: ``first_step(state) -> state`` trains one step, compiling what it needs.

    Returns:
      ``startup_s`` (process start to the first step done), ``run_s`` (each timed run),
      ``run_steps`` and ``flops_per_step``.
    """
    state = first_step(state)
    startup = process_age_s()
    state = run(state, 0)  # warm-up: compiles the timed program, fills the caches
    times = []
    for epoch in range(1, repeats + 1):
        begin = time.perf_counter()
        state = run(state, epoch)
        times.append(time.perf_counter() - begin)
    return {"startup_s": startup, "run_s": times, "run_steps": steps, "flops_per_step": flops}


def process_age_s() -> float:
    """Seconds since this process started (``/proc``; since this module's import elsewhere)."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return time.perf_counter() - START
    return uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time in ticks


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


def compiled_keras_model(name: str, **settings):
    """``keras_model(name)`` compiled with Adam (lr 1e-3), sparse cross-entropy and accuracy.

    ``settings`` go to ``model.compile`` (``jit_compile``, ``steps_per_execution``); none:
    Keras's defaults.
    """
    import keras

    model = keras_model(name)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        metrics=["accuracy"],
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **settings,
    )
    return model


def keras_worker(
    model_name: str, batch: int, repeats: int, settings: str, steps_per_execution: int, examples
) -> dict:
    """Times Keras 3 ``model.fit`` on TensorFlow over whole epochs of ``examples`` images.

    A one-batch ``fit`` first gives the startup (its compiled step, and the ``fit`` machinery a
    user's first step pays); then one ``fit`` of ``1 + repeats`` epochs, the first the warm-up,
    each epoch timed by a callback.
    """
    import keras_recipe

    images, labels = mnist_arrays()
    x, y = images[:examples].astype("float32") / 255.0, labels[:examples]
    compile_settings = keras_recipe.compile_settings(settings, steps_per_execution)
    model = compiled_keras_model(model_name, **compile_settings)
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)
    startup = process_age_s()
    timer = keras_recipe.EpochTimer()
    model.fit(
        x, y, batch_size=batch, epochs=1 + repeats, verbose=0, shuffle=True, callbacks=[timer]
    )
    run_steps = -(-len(x) // batch)
    return {
        "startup_s": startup,
        "run_s": timer.epoch_s[1:],
        "run_steps": run_steps,
        "flops_per_step": 0.0,
        "settings": compile_settings,
    }


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


def wrong_gradients(error: float) -> str | None:
    """Why a ``torch.compile`` run with this gradient error is not timed (None: it is right)."""
    if error <= GRADIENT_TOLERANCE:
        return None
    return (
        "torch.compile's gradients differ from eager ones (max relative error "
        f"{error:.2f} on one batch)"
    )


def torch_worker(model_name: str, batch: int, steps: int, repeats: int, compiled: bool) -> dict:
    """Times a PyTorch training loop, its model through ``torch.compile`` when ``compiled``.

    A compiled model's gradients are checked against eager ones first (on a copy, so the
    timed run compiles as a user's would): a model they differ for is not timed.
    """
    import torch
    import torch_recipe

    torch.set_num_threads(os.cpu_count() or 1)
    images, labels = mnist_arrays()
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype("float32") / 255.0)
    y = torch.from_numpy(labels.astype("int64"))
    model = torch_model(model_name)
    if compiled:
        probe = (copy.deepcopy(model), x[:GRADIENT_CHECK_EXAMPLES], y[:GRADIENT_CHECK_EXAMPLES])
        reason = wrong_gradients(torch_recipe.model_gradient_error(*probe))
        if reason:
            return {"error": f"not timed: {reason}"}
    step_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def run(state, epoch, run_steps=steps):
        order = torch.randperm(batch * steps, generator=torch.Generator().manual_seed(epoch))
        for step in range(run_steps):
            index = order[step * batch : (step + 1) * batch]
            optimizer.zero_grad()
            loss = loss_fn(step_model(x[index]), y[index])
            loss.backward()
            optimizer.step()
        return state

    first_step = functools.partial(run, epoch=0, run_steps=1)
    return time_repeats(run, None, repeats, 0.0, steps, first_step)


def flax_example_cnn():
    """The CNN of Flax's MNIST example (two 3x3 convolutions, average pooling, a 256-unit layer).

    Its convolutions are flaxmnist's (``flax.linen.Conv``'s "SAME" 3x3, im2col on CPU: XLA:CPU's
    own is many times slower inside ``lax.scan``), so both pipelines run the same fast step.

    Returns:
      The Linen module (its ``train`` argument is unused: no dropout, no BatchNorm).
    """
    import flax.linen as nn

    from flaxmnist.models import layers

    class FlaxExampleCNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            for features in (32, 64):
                x = nn.relu(layers.Conv(features, padding="SAME")(x))
                x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
            x = nn.relu(nn.Dense(features=256)(x.reshape((x.shape[0], -1))))
            return nn.Dense(features=10)(x)

    return FlaxExampleCNN()


def pipeline_worker(pipeline: str, epochs: int) -> dict:
    """Trains the Flax example's CNN ``epochs`` epochs through ``pipeline``'s feeder.

    Args:
      pipeline: ``device`` or ``tfds``.
      epochs: epochs to train (the first one compiles the steps).

    Returns:
      Seconds to build the feeder and per epoch, the test evaluation's seconds and accuracy.
    """
    import jax
    import optax

    from flaxmnist import losses
    from flaxmnist.configs import default
    from flaxmnist.data import datasets
    from flaxmnist.training import feeders, parallel, records
    from flaxmnist.training import step_functions as steps_lib
    from flaxmnist.training.train_state import create_train_state

    config = default.get_config()
    config.update(input_pipeline=pipeline, batch_size=PIPELINE_BATCH, validation_fraction=0.0)
    dataset = datasets.load_dataset("mnist")
    mesh = parallel.create_mesh(1)
    tx = optax.sgd(0.1, momentum=0.9)
    state = create_train_state(flax_example_cnn(), (28, 28, 1), tx, jax.random.key(0))
    state = parallel.put_replicated(state, mesh)
    loss_fn = losses.get_loss("cross_entropy")
    fns = steps_lib.make_step_functions(loss_fn, steps_lib.normalize_images)
    inputs = feeders.FeederInputs(
        fns, config, dataset.train, {"test": dataset.test}, jax.random.key(1), mesh
    )
    begin = time.perf_counter()
    feeder = feeders.FEEDERS[pipeline](inputs)
    result = {"pipeline": pipeline, "setup_s": time.perf_counter() - begin, "epoch_s": []}
    for epoch in range(1, epochs + 1):
        begin = time.perf_counter()
        chunks = list(feeder.train_chunks(state, epoch, jax.random.key(2)))
        state = jax.block_until_ready(chunks[-1][0])
        result["epoch_s"].append(time.perf_counter() - begin)
    begin = time.perf_counter()
    result["test_accuracy"] = records.summarize(feeder.evaluate(state, "test"))[1]
    result["eval_s"] = time.perf_counter() - begin
    return result


def worker_main(framework: str, model: str, args: types.SimpleNamespace) -> None:
    """Subprocess entry: times one (framework, model) pair and prints its RESULT line."""
    batch, steps, repeats = args.batch or MODELS.get(model), args.steps, args.repeats
    if framework == "pipeline":
        result = pipeline_worker(model, args.epochs)
    elif framework.startswith("flaxmnist"):
        streaming = framework == "flaxmnist_tfds"
        result = flax_worker(model, batch, steps, repeats, streaming, args.tile)
    elif framework.startswith("keras"):
        settings = "xla" if framework == "keras" else "default"
        examples = batch * steps if args.smoke else TRAIN_EXAMPLES
        spe = args.keras_steps_per_execution
        result = keras_worker(model, batch, repeats, settings, spe, examples)
    else:
        result = torch_worker(model, batch, steps, repeats, compiled=framework == "torch")
    result["peak_rss_mb"] = peak_rss_mb()
    emit_result(result)


def peak_rss_mb() -> float:
    """The peak resident size of this process since its ``exec``, MiB (``VmHWM``).

    ``getrusage``'s ``ru_maxrss`` would include the parent's size at the spawn (Linux carries the
    pre-``exec`` high-water mark over): a driver that has loaded TensorFlow would raise it.
    """
    try:
        status = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kib = [line.split()[1] for line in status if line.startswith("VmHWM:")]
    return int(kib[0]) / 1024


def write_result_files(out: Path, stem: str, record: dict, table: str) -> None:
    """Writes ``OUT/STEM.json`` and ``OUT/STEM.md`` (each atomically) and prints the table."""
    from flaxmnist.storage import files

    out.mkdir(parents=True, exist_ok=True)
    files.write_text_atomic(out / f"{stem}.json", json.dumps(record, indent=2) + "\n")
    files.write_text_atomic(out / f"{stem}.md", table)
    print(table)


def emit_result(result: dict) -> None:
    """Prints a worker's result as the ``RESULT {json}`` line its driver reads."""
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------ driver


def matmul_peak_gflops() -> float:
    """The float32 matmul speed here (1024^3 with numpy/BLAS, best of 5)."""
    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    best = min(_timed(lambda: a @ a) for _ in range(5))
    return 2 * 1024**3 / best / 1e9


def _timed(fn) -> float:
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def run_worker(command: list[str]) -> dict:
    """Runs a worker subprocess: the JSON of its last RESULT line, or ``{"error": stderr tail}``."""
    out = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        return {"error": out.stderr[-500:]}
    return json.loads(lines[-1][len("RESULT ") :])


# Runs argv[3:], killed after argv[2] s; writes its exit status, wall and peak RSS to argv[1].
LAUNCHER = """
import json, os, subprocess, sys, threading, time
begin = time.perf_counter()
child = subprocess.Popen(sys.argv[3:])
timer = threading.Timer(float(sys.argv[2]), child.kill)
timer.start()
_, status, usage = os.wait4(child.pid, 0)
wall_s = time.perf_counter() - begin
timer.cancel()
child.returncode = os.waitstatus_to_exitcode(status)
report = {"returncode": child.returncode, "wall_s": wall_s, "peak_rss_mb": usage.ru_maxrss / 1024}
with open(sys.argv[1], "w") as f:
    json.dump(report, f)
"""


def measured_run(command: list[str], timeout_s: float = WORKER_TIMEOUT_S, **popen) -> dict:
    """Runs ``command`` to its end: exit status, output, wall and peak RSS of that child alone.

    A small launcher process starts the command and times it: a child's ``ru_maxrss`` starts
    from its parent's resident size at the spawn (Linux carries the pre-``exec`` high-water mark
    over), so a child spawned straight from this process (with JAX or TensorFlow loaded) would
    report at least this process's size. The launcher's ``os.wait4`` gives the child's own
    usage, whose ``ru_maxrss`` includes the processes the child waited for itself (compiler
    workers; the maximum, not the sum). A command still running after ``timeout_s`` is killed
    (exit status -9).

    Returns:
      ``returncode``, ``stdout``, ``stderr``, ``wall_s`` (launch to exit), ``peak_rss_mb``.
    """
    with tempfile.TemporaryDirectory(prefix="flaxmnist-run-") as tmp:
        report, out, err = (Path(tmp) / name for name in ("report.json", "stdout", "stderr"))
        with out.open("w") as stdout, err.open("w") as stderr:
            launcher = [sys.executable, "-c", LAUNCHER, str(report), str(timeout_s), *command]
            subprocess.run(launcher, stdout=stdout, stderr=stderr, check=False, **popen)
        result = json.loads(report.read_text()) if report.exists() else {"returncode": -9}
        return {**result, "stdout": out.read_text(), "stderr": err.read_text()}


def worker_command(framework: str, model: str, **flag_values) -> list[str]:
    """The command line of one (framework, model) worker of this script."""
    command = [sys.executable, __file__, f"--worker={framework},{model}"]
    return command + [f"--{flag}={value}" for flag, value in flag_values.items()]


def run_pair(
    framework: str,
    model: str,
    steps: int,
    repeats: int,
    batch: int | None = None,
    tile: int = 1,
    **worker_flags,
) -> dict:
    """Runs one worker subprocess and summarises its timings.

    ``batch`` defaults to the model's reference batch; ``tile`` repeats the training set (flaxmnist
    frameworks only); ``worker_flags`` go to the worker (``smoke``,
    ``keras_steps_per_execution``). ``timed_s`` is the median time of one timed run (``steps``
    steps; Keras: a whole epoch).
    """
    batch = batch or MODELS[model]
    pair = {"framework": framework, "model": model, "batch": batch, "tile": tile}
    flag_values = {"batch": batch, "tile": tile, "steps": steps, "repeats": repeats}
    raw = run_worker(worker_command(framework, model, **flag_values, **worker_flags))
    if "error" in raw:
        return {**pair, "error": raw["error"]}
    return {**pair, **pair_timings(raw, batch)}


def pair_timings(raw: dict, batch: int) -> dict:
    """A worker's raw result (``run_s`` of ``run_steps`` steps each) as per-epoch figures."""
    timed_s = statistics.median(raw["run_s"])
    step_s = timed_s / raw["run_steps"]
    return {
        "epoch_s": step_s * (TRAIN_EXAMPLES // batch),
        "examples_per_s": batch / step_s,
        "startup_s": raw["startup_s"],
        "peak_rss_mb": raw["peak_rss_mb"],
        "flops_per_step": raw["flops_per_step"],
        "step_ms": 1e3 * step_s,
        "timed_s": timed_s,
    }


def logged(row: dict) -> dict:
    """Prints ``row`` as one JSON line (progress) and returns it."""
    print(json.dumps(row), flush=True)
    return row


def gflops(flops_per_step: float, step_ms: float) -> float:
    """Achieved GFLOP/s of a step of ``flops_per_step`` FLOPs taking ``step_ms`` milliseconds."""
    return flops_per_step / step_ms / 1e6


def sections_markdown(results: dict, renderers: dict) -> str:
    """The markdown of the sections in ``results`` that ``renderers`` (key → function) cover."""
    return "\n".join(render(results[key]) for key, render in renderers.items() if key in results)


def framework_settings(framework: str, machine: dict) -> str:
    """The settings cell of ``framework``'s rows (results older than the settings: "old")."""
    if "keras_steps_per_execution" not in machine and framework in ("keras", "torch"):
        return "old: defaults, eager; fit per 200 steps"
    spe = machine.get("keras_steps_per_execution", KERAS_STEPS_PER_EXECUTION)
    return FRAMEWORK_SETTINGS.get(framework, "").format(spe=spe)


def failure(row: dict) -> str:
    """The cell of a row without timings: why it was not timed, or "failed"."""
    reason = row.get("error", "")
    return reason if reason.startswith("not timed") else "failed"


def best_epoch_s(by_pair: dict, model: str, variants: tuple[str, ...]) -> float | None:
    """The fastest seconds per epoch of ``model`` among a framework's ``variants`` (None: none)."""
    times = [by_pair[(v, model)]["epoch_s"] for v in variants if (v, model) in by_pair]
    return min(times) if times else None


def markdown(rows: list[dict], machine: dict) -> str:
    """The results as a markdown table with per-model speed-up ratios.

    The ratios divide the faster of a framework's variants (Keras with XLA or at its defaults,
    PyTorch compiled or eager) by the row's seconds per epoch.
    """
    timing = (
        f"{machine['steps']} timed steps x {machine['repeats']} repeats (Keras: "
        f"{machine['repeats']} whole epochs in one fit, after a warm-up epoch)"
    )
    lines = [
        f"Measured on {machine['cpu']}, {machine['cores']} cores, matmul peak "
        f"{machine['matmul_gflops']:.0f} GFLOP/s; {timing}, medians; startup: process start to "
        "the first compiled step done. vs Keras / vs PyTorch: the faster of each framework's "
        "settings over the row's s/epoch.",
        "",
        "| model | batch | framework | settings | s/epoch | examples/s | startup s | peak RSS MB "
        "| GFLOP/s | vs Keras | vs PyTorch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_pair = {(r["framework"], r["model"]): r for r in rows if "error" not in r}
    for model in dict.fromkeys(r["model"] for r in rows):
        flops = by_pair.get(("flaxmnist", model), {}).get("flops_per_step", 0.0)
        best = {name: best_epoch_s(by_pair, model, v) for name, v in REFERENCES.items()}
        ran = {r["framework"] for r in rows if r["model"] == model}
        for framework in [f for f in FRAMEWORKS if f in ran]:
            cells = f"| {model} | {MODELS[model]} | {framework} | "
            cells += f"{framework_settings(framework, machine)} |"
            r = by_pair.get((framework, model))
            if r is None:
                failed = next(x for x in rows if (x["framework"], x["model"]) == (framework, model))
                lines.append(f"{cells} {failure(failed)} | | | | | | |")
                continue
            ratios = [f"{b / r['epoch_s']:.2f}x" if b else "-" for b in best.values()]
            lines.append(
                f"{cells} {r['epoch_s']:.2f} | {r['examples_per_s']:,.0f} | {r['startup_s']:.1f} | "
                f"{r['peak_rss_mb']:.0f} | {gflops(flops, r['step_ms']):.1f} | {ratios[0]} | "
                f"{ratios[1]} |"
            )
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path) -> None:
    """Grouped bars of seconds per epoch, one group per model."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.5), layout="constrained")
    ax = figure.subplots()
    by_pair = {(r["framework"], r["model"]): r["epoch_s"] for r in rows if "error" not in r}
    models = list(dict.fromkeys(r["model"] for r in rows))
    frameworks = [f for f in FRAMEWORKS if any(r["framework"] == f for r in rows)]
    x = np.arange(len(models))
    width = 0.8 / len(frameworks)
    for i, framework in enumerate(frameworks):
        heights = [by_pair.get((framework, m), np.nan) for m in models]
        ax.bar(x - 0.4 + (i + 0.5) * width, heights, width, label=framework)
    ax.set_xticks(x, [f"{m}\n(batch {MODELS[m]})" for m in models])
    ax.set_ylabel("seconds per epoch (lower is better)")
    ax.set_yscale("log")
    ax.set_title(f"Training speed on {machine_name()}")
    ax.legend()
    figure.savefig(path, dpi=110)


def models_section(
    models: list[str],
    frameworks: list[str],
    steps: int,
    repeats: int,
    keras_steps_per_execution: int = KERAS_STEPS_PER_EXECUTION,
    smoke: bool = False,
) -> dict:
    """Every (framework, model) pair: the ``machine`` and ``rows`` entries of the results."""
    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "matmul_gflops": matmul_peak_gflops(),
        "steps": steps,
        "repeats": repeats,
        "keras_steps_per_execution": keras_steps_per_execution,
        "smoke": smoke,
    }
    worker_flags = {"keras_steps_per_execution": keras_steps_per_execution, "smoke": smoke}
    rows = [
        logged(run_pair(framework, model, steps, repeats, **worker_flags))
        for model in models
        for framework in frameworks
    ]
    return {"machine": machine, "rows": rows}


def pipeline_runs(repeats: int, epochs: int) -> list[dict]:
    """``repeats`` runs of each pipeline, taking turns (device, tfds, grain; tfds, grain, ...).

    Args:
      repeats: runs per pipeline.
      epochs: epochs per run.

    Returns:
      Every run's worker result (or ``{"pipeline", "error"}``), in the order they ran.
    """
    from flaxmnist.data import tfds_prepare

    tfds_prepare.ensure_prepared("mnist")  # both formats: the runs time training, not preparing
    runs = []
    for repeat in range(repeats):
        turn = repeat % len(PIPELINES)
        for pipeline in PIPELINES[turn:] + PIPELINES[:turn]:
            command = [sys.executable, __file__, f"--worker=pipeline,{pipeline}"]
            raw = run_worker([*command, f"--epochs={epochs}"])
            runs.append(logged({"pipeline": pipeline, **raw}))
    return runs


def pipelines_summary(runs: list[dict]) -> dict:
    """Medians per pipeline over the runs, and each pipeline's ratios to ``device``.

    Args:
      runs: the results of :func:`pipeline_runs`.

    Returns:
      ``{pipeline: {epoch_s, first_epoch_s, setup_s, eval_s, peak_rss_mb, test_accuracy, runs,
      epoch_ratio, rss_ratio}}``; the ratios (over ``device``'s) only when ``device`` ran.
    """
    summary = {}
    for pipeline in PIPELINES:
        ok = [r for r in runs if r["pipeline"] == pipeline and "error" not in r]
        if not ok:
            continue
        steady = [s for r in ok for s in (r["epoch_s"][1:] or r["epoch_s"])]
        summary[pipeline] = {
            "epoch_s": statistics.median(steady),
            "first_epoch_s": statistics.median(r["epoch_s"][0] for r in ok),
            **{
                key: statistics.median(r[key] for r in ok)
                for key in ("setup_s", "eval_s", "peak_rss_mb", "test_accuracy")
            },
            "runs": len(ok),
        }
    if "device" in summary:
        device = summary["device"]
        for row in summary.values():
            row["epoch_ratio"] = row["epoch_s"] / device["epoch_s"]
            row["rss_ratio"] = row["peak_rss_mb"] / device["peak_rss_mb"]
    return summary


def pipelines_section(repeats: int, epochs: int) -> dict:
    """The ``pipelines`` entry of the results: machine, every run, and the summary."""
    runs = pipeline_runs(repeats, epochs)
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "repeats": repeats, "epochs": epochs}
    return {"pipelines": {"machine": machine, "runs": runs, "summary": pipelines_summary(runs)}}


def pipelines_table(section: dict) -> str:
    """The ``pipelines`` section's caption and table (markdown)."""
    machine, summary = section["machine"], section["summary"]
    lines = [
        f"{machine['cpu']}, {machine['cores']} cores; the Flax MNIST example's CNN, SGD lr 0.1 "
        f"momentum 0.9, batch {PIPELINE_BATCH}, 468 steps per epoch; {machine['repeats']} runs "
        f"of {machine['epochs']} epochs per pipeline, taking turns, each in a fresh process; "
        "medians (s/epoch: the epochs after the first).",
        "",
        "| pipeline | s/epoch | vs device | first epoch s | feeder set-up s | test eval s "
        "| peak RSS MB | vs device | test accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for pipeline in PIPELINES:
        if pipeline in summary:
            r = summary[pipeline]
            epoch_ratio, rss_ratio = (
                (f"{r['epoch_ratio']:.2f}x", f"{r['rss_ratio']:.2f}x")
                if "epoch_ratio" in r
                else ("-", "-")
            )
            lines.append(
                f"| {pipeline} | {r['epoch_s']:.1f} | {epoch_ratio} | {r['first_epoch_s']:.1f} | "
                f"{r['setup_s']:.1f} | {r['eval_s']:.2f} | {r['peak_rss_mb']:.0f} | {rss_ratio} | "
                f"{r['test_accuracy']:.2%} |"
            )
    return "\n".join(lines) + "\n"


def pipelines_markdown(results: dict) -> str:
    """The ``pipelines`` section as markdown (empty when it has not run)."""
    if "pipelines" not in results:
        return ""
    heading = "### Input pipelines: device-resident, tfds (tf.data) and grain (no TensorFlow)"
    return f"{heading}\n\n{pipelines_table(results['pipelines'])}"


def write_data_doc_table(results: dict, doc: Path = DATA_DOC) -> None:
    """Replaces the text between ``doc``'s ``pipelines`` markers with the section's table.

    Args:
      results: the benchmark's results, with a ``pipelines`` section.
      doc: the markdown file holding the markers (``docs/data.md``).

    Raises:
      FlaxmnistError: ``doc`` lacks the markers.
    """
    text = doc.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        raise errors.FlaxmnistError(f"{doc} lacks the markers {DOC_BEGIN} ... {DOC_END}")
    before, rest = text.split(DOC_BEGIN, 1)
    after = rest.split(DOC_END, 1)[1]
    table = pipelines_table(results["pipelines"])
    doc.write_text(f"{before}{DOC_BEGIN}\n{table}{DOC_END}{after}")


def run_section(name: str, args: types.SimpleNamespace) -> dict:
    """Runs section ``name``; returns the entries of the results it (re)writes."""
    import end_to_end
    import race
    import scaling

    if name == "models":
        models = args.models or (QUICK_MODELS if args.quick else list(MODELS))
        spe = args.keras_steps_per_execution
        return models_section(models, args.frameworks, args.steps, args.repeats, spe, args.smoke)
    if name == "race":
        spe = args.keras_steps_per_execution
        return {"race": race.race_section(args.contestants, args.seeds, args.smoke, spe)}
    if name == "pipelines":
        return pipelines_section(args.repeats, args.epochs)
    if name == "startup":
        return {"startup": end_to_end.startup(warm_runs=args.repeats)}
    if name == "batch":
        return {"batch_scaling": scaling.batch_scaling(args.quick, args.repeats, args.models)}
    return {"tiling": scaling.tiling(args.quick)}


def document(results: dict) -> str:
    """``benchmark.md``: the per-model table, then every further section that has results."""
    import end_to_end
    import race
    import scaling

    parts = [markdown(results["rows"], results["machine"])] if results.get("rows") else []
    parts += [pipelines_markdown(results), race.markdown(results)]
    parts += [end_to_end.markdown(results), scaling.markdown(results)]
    return "\n".join(part for part in parts if part)


def write_results(results: dict, sections: list[str]) -> None:
    """Writes ``benchmark.{json,md}`` and the figures of the sections that ran."""
    import scaling

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
    text = document(results)
    (RESULTS / "benchmark.md").write_text(text)
    if "models" in sections:
        chart(results["rows"], RESULTS / "benchmark.png")
    if "pipelines" in sections:
        write_data_doc_table(results)
    if "batch" in sections:
        scaling.chart(results["batch_scaling"], RESULTS / "throughput_vs_batch.png")
    print(text)


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the command's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_bool("quick", False, "The short variant (see the top).", **fv)
    flags.DEFINE_list("sections", None, f"Sections to run: {', '.join(SECTIONS)}.", **fv)
    flags.DEFINE_integer(
        "steps", None, "Timed steps per run (200; --quick: 30).", lower_bound=1, **fv
    )
    flags.DEFINE_integer("repeats", None, "Repeats (3; --quick: 2).", lower_bound=1, **fv)
    flags.DEFINE_list("frameworks", list(FRAMEWORKS), "Frameworks of the models section.", **fv)
    flags.DEFINE_bool(
        "smoke", False, "Tiny runs that check the commands; prints, writes no results.", **fv
    )
    flags.DEFINE_list("seeds", ["10", "11", "12", "13", "14"], "Seeds of the race.", **fv)
    flags.DEFINE_list("contestants", None, "Contestants of the race (race.py).", **fv)
    flags.DEFINE_integer(
        "keras_steps_per_execution",
        KERAS_STEPS_PER_EXECUTION,
        "Keras with XLA: steps per execution.",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_list("models", None, "Models of the models and batch sections.", **fv)
    flags.DEFINE_list("worker", None, "FRAMEWORK,MODEL: run one worker (the driver's).", **fv)
    flags.DEFINE_integer("batch", None, "Worker: batch size.", lower_bound=1, **fv)
    flags.DEFINE_integer("tile", 1, "Worker: training-set repeats.", lower_bound=1, **fv)
    flags.DEFINE_integer("epochs", 2, "Epochs of each pipelines-section run.", lower_bound=1, **fv)


def settings(flag_values: flags.FlagValues) -> types.SimpleNamespace:
    """The parsed flags, with the --quick / full defaults filled in.

    Args:
      flag_values: parsed flags of :func:`define_flags`.

    Returns:
      Every flag by name; ``steps``, ``repeats`` and ``sections`` (in the order of
      :data:`SECTIONS`) filled in.

    Raises:
      ConfigError: a list flag names something unknown, or --worker is not two names.
    """
    import race

    args = types.SimpleNamespace(**{name: flag_values[name].value for name in FLAG_NAMES})
    lists = [("sections", SECTIONS), ("frameworks", FRAMEWORKS), ("models", MODELS)]
    for name, known in [*lists, ("contestants", race.CONTESTANTS)]:
        unknown = [item for item in getattr(args, name) or () if item not in known]
        if unknown:
            raise ConfigError(
                f"--{name}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(known)}"
            )
    if args.worker is not None and len(args.worker) != 2:
        raise ConfigError(f"--worker: expected FRAMEWORK,MODEL, got {','.join(args.worker)!r}")
    args.seeds = seed_list(args.seeds)
    args.contestants = args.contestants or list(race.DEFAULT_CONTESTANTS)
    args.steps = args.steps or (SMOKE_STEPS if args.smoke else 30 if args.quick else 200)
    args.repeats = args.repeats or (1 if args.smoke else 2 if args.quick else 3)
    chosen = args.sections or (
        SMOKE_SECTIONS if args.smoke else QUICK_SECTIONS if args.quick else SECTIONS
    )
    args.sections = [name for name in SECTIONS if name in chosen]
    return args


def seed_list(items: list[str]) -> list[int]:
    """``--seeds`` as integers, each once, in order.

    Raises:
      ConfigError: an item is not a non-negative integer.
    """
    bad = [item for item in items if not item.isdigit()]
    if bad or not items:
        raise ConfigError(f"--seeds: expected non-negative integers, got {','.join(items)!r}")
    return list(dict.fromkeys(int(item) for item in items))


def main(argv: list[str]) -> None:
    """Runs the chosen sections (or one worker, with --worker) and writes the results.

    Sections that do not run keep their previous results in ``benchmark.json``.
    """
    del argv  # cli.parse_flags refuses positional arguments
    with errors.reported(RESULTS):
        args = settings(flags.FLAGS)
    if args.worker:  # the driver reads a worker's traceback from its stderr
        worker_main(*args.worker, args)
        return
    with errors.reported(RESULTS):
        path = RESULTS / "benchmark.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        ran = {}
        for name in args.sections:
            begin = time.perf_counter()
            ran.update(run_section(name, args))
            print(f"section {name}: {time.perf_counter() - begin:.0f} s", flush=True)
        if args.smoke:  # a check of the commands, not a measurement
            print(document(ran))
            return
        write_results({**results, **ran}, args.sections)


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main)
