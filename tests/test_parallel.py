"""Data parallelism: the same train_step on 1 and 8 (simulated CPU) devices."""

import json
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import REPO_ROOT, with_cpu_devices

import flaxmnist
from flaxmnist.configs import default
from flaxmnist.data import datasets
from flaxmnist.errors import ConfigError, FlaxmnistError
from flaxmnist.training import parallel

# Runs in a subprocess: the device count must be set before jax is imported.
SCRIPT = """
import json, shutil, sys
from flaxmnist.training import loop
from flaxmnist.configs import default
from flaxmnist.storage import compilation_cache

data_dir, out, pipeline, cache = sys.argv[1:5]
compilation_cache.enable(cache)
results = {}
for devices in (1, 8):
    config = default.get_config()
    config.update(model="convnet_small", data_dir=data_dir, batch_size=32, eval_batch_size=64,
                  num_epochs=2, num_devices=devices, input_pipeline=pipeline,
                  compilation_cache_dir="")
    metrics = loop.train_and_evaluate(config, f"{out}/{pipeline}-{devices}")
    with open(f"{out}/{pipeline}-{devices}/steps.csv") as f:
        losses = [float(line.split(",")[2]) for line in f.read().splitlines()[1:]]
    with open(f"{out}/{pipeline}-{devices}/history.json") as f:
        train_accuracy = [record["train_accuracy"] for record in json.load(f)]
    results[devices] = {"losses": losses, "train_accuracy": train_accuracy, **metrics}
# A copy of the 1-device run resumes from its checkpoint on 8 devices for a third epoch.
shutil.copytree(f"{out}/{pipeline}-1", f"{out}/{pipeline}-1-to-8")
config.update(num_epochs=3, num_devices=8)
results["resumed"] = loop.train_and_evaluate(config, f"{out}/{pipeline}-1-to-8")
print("RESULTS " + json.dumps(results))
"""


def _run_on_8_devices(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=with_cpu_devices(8),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["device", "tfds"])
def test_one_and_eight_devices_agree(
    synthetic_data_dir, tmp_path, pipeline, session_compilation_cache
):
    args = (str(synthetic_data_dir), str(tmp_path), pipeline, str(session_compilation_cache))
    stdout = _run_on_8_devices(SCRIPT, *args)
    results = json.loads(stdout.split("RESULTS ", 1)[1])
    one, eight = results["1"], results["8"]
    assert (one["device_count"], eight["device_count"]) == (1, 8)
    resumed = results["resumed"]
    assert (resumed["device_count"], resumed["epochs_completed"]) == (8, 3)
    assert resumed["steps"] == 3 * len(one["losses"]) // 2
    assert eight["losses"][0] == pytest.approx(one["losses"][0], abs=1e-5)
    # Every step's loss (BatchNorm on batch statistics) stays within float reassociation drift.
    np.testing.assert_allclose(eight["losses"], one["losses"], atol=3e-3)
    np.testing.assert_allclose(eight["train_accuracy"], one["train_accuracy"], atol=1 / 448)
    # The half-trained model's test loss (1.93, near chance's 2.30) agrees to 0.1 %; its
    # predictions are all borderline, so that drift flips up to 4 of the 100 test images.
    assert eight["test_loss"] == pytest.approx(one["test_loss"], abs=2e-3)
    # A checkpoint written on 8 devices restores here, on 1, and predicts the same.
    for devices in (1, 8):
        run = flaxmnist.load_run(tmp_path / f"{pipeline}-{devices}")
        test = datasets.load_dataset("mnist", str(synthetic_data_dir)).test
        accuracy = float(np.mean(run.predict(test.images).argmax(-1) == test.labels))
        assert accuracy == results[str(devices)]["test_accuracy"]
    # After 28 Adam steps, float reassociation moves parameters by well under 1 % (relative L2).
    eight_params, one_params = (
        np.concatenate(
            [
                np.ravel(x)
                for x in jax.tree_util.tree_leaves(
                    flaxmnist.load_run(tmp_path / f"{pipeline}-{n}").state.params
                )
            ]
        )
        for n in (8, 1)
    )
    assert np.linalg.norm(eight_params - one_params) < 0.01 * np.linalg.norm(one_params)


def test_mesh_and_batch_checks():
    mesh = parallel.create_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == 1
    parallel.check_divisible(parallel.create_mesh(1), batch_size=7)
    with pytest.raises(ConfigError, match="num_devices must be between 0"):
        parallel.create_mesh(99)


@pytest.mark.slow
def test_batch_size_must_split_over_devices(synthetic_data_dir, tmp_path):
    script = (
        "import sys\n"
        "from flaxmnist.training import parallel\n"
        "from flaxmnist.errors import ConfigError\n"
        "mesh = parallel.create_mesh(8)\n"
        "try:\n"
        "    parallel.check_divisible(mesh, batch_size=100)\n"
        "except ConfigError as e:\n"
        "    print('ERROR', e)\n"
    )
    stdout = _run_on_8_devices(script)
    assert "ERROR batch_size 100 does not split over 8 devices; use a multiple of 8" in stdout
    assert "(e.g. 96 or 104)" in stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _train_command(data_dir, workdir, cache, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flaxmnist.train",
        "--config=cnn_deep",
        "--config.model=convnet_small",
        "--config.dataset=mnist",
        f"--config.data_dir={data_dir}",
        "--config.batch_size=32",
        "--config.eval_batch_size=64",
        "--config.num_epochs=1",
        f"--config.compilation_cache_dir={cache}",
        f"--workdir={workdir}",
        *extra,
    ]


def _step_losses(workdir) -> np.ndarray:
    lines = (workdir / "steps.csv").read_text().splitlines()[1:]
    return np.array([float(line.split(",")[2]) for line in lines])


@pytest.mark.slow
def test_two_processes_train_like_one(synthetic_data_dir, tmp_path, session_compilation_cache):
    """jax.distributed on CPU: 2 processes x 2 devices against 1 process x 4 devices."""

    one = tmp_path / "one-process"
    single = subprocess.run(
        _train_command(synthetic_data_dir, one, session_compilation_cache),
        env=with_cpu_devices(4),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    two = tmp_path / "two-processes"
    cluster = [
        "--config.multihost.coordinator_address=localhost:" + str(_free_port()),
        "--config.multihost.num_processes=2",
    ]
    workers = [
        subprocess.Popen(
            _train_command(
                synthetic_data_dir,
                two,
                session_compilation_cache,
                *cluster,
                f"--config.multihost.process_id={i}",
            ),
            env=with_cpu_devices(2),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr[-3000:]
    # Only process 0 prints the summary (and writes the run's files).
    assert "test accuracy" in outputs[0][0] and "test accuracy" not in outputs[1][0]
    metrics_one = json.loads((one / "metrics.json").read_text())
    metrics_two = json.loads((two / "metrics.json").read_text())
    assert (metrics_two["process_count"], metrics_two["device_count"]) == (2, 4)
    losses_one, losses_two = _step_losses(one), _step_losses(two)
    assert losses_two[0] == pytest.approx(losses_one[0], abs=1e-5)
    np.testing.assert_allclose(losses_two, losses_one, atol=3e-3)
    assert abs(metrics_two["test_accuracy"] - metrics_one["test_accuracy"]) <= 0.02 + 1e-9
    # The checkpoint both processes saved restores in this single-device process.
    run = flaxmnist.load_run(two)
    test = datasets.load_dataset("mnist", str(synthetic_data_dir)).test
    accuracy = float(np.mean(run.predict(test.images).argmax(-1) == test.labels))
    assert accuracy == metrics_two["test_accuracy"]


def test_multihost_is_requested_only_when_asked(monkeypatch):
    settings = default.get_config().multihost
    for name in (*parallel.CLUSTER_SIZE_VARIABLES, "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert not parallel.multihost_requested(settings)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert parallel.multihost_requested(settings)
    settings.enabled = "off"
    assert not parallel.multihost_requested(settings)
    monkeypatch.delenv("SLURM_NTASKS")
    settings.enabled = "auto"
    settings.num_processes = 2
    assert parallel.multihost_requested(settings)
    settings.enabled = "sometimes"
    with pytest.raises(ConfigError, match=r"unknown multihost\.enabled 'sometimes'"):
        parallel.multihost_requested(settings)


def test_malformed_launcher_variables_are_one_line_errors(monkeypatch):
    settings = default.get_config().multihost
    monkeypatch.setenv("SLURM_NTASKS", "two")
    with pytest.raises(ConfigError, match="environment variable SLURM_NTASKS must be an integer"):
        parallel.multihost_requested(settings)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "first")
    with pytest.raises(ConfigError, match="JAX_PROCESS_ID must be an integer, got 'first'"):
        parallel.initialize_multihost(settings)
    settings.timeout_s = 0
    with pytest.raises(ConfigError, match=r"multihost\.timeout_s must be positive"):
        parallel.initialize_multihost(settings)


def test_unreachable_coordinator_fails_with_one_line_instead_of_an_abort():
    port = _free_port()  # nothing listens there
    with pytest.raises(
        FlaxmnistError, match=rf"no multihost coordinator answered at 127.0.0.1:{port} within 0.5 s"
    ):
        parallel.check_coordinator(f"127.0.0.1:{port}", process_id=1, timeout_s=0.5)
    with pytest.raises(ConfigError, match="must be HOST:PORT, got 'localhost'"):
        parallel.check_coordinator("localhost", process_id=1, timeout_s=0.5)
    with socket.create_server(("", 0)) as busy:
        taken = busy.getsockname()[1]
        with pytest.raises(FlaxmnistError, match=f"process 0 cannot serve .* on port {taken}"):
            parallel.check_coordinator(f"localhost:{taken}", process_id=0, timeout_s=0.5)
        # Another process finds the listening coordinator at once.
        parallel.check_coordinator(f"127.0.0.1:{taken}", process_id=1, timeout_s=0.5)


def test_process_rows_on_one_process():
    mesh = parallel.create_mesh()
    assert parallel.process_rows(mesh, 32) == slice(0, 32)
    batch = {"x": np.arange(6).reshape(2, 3)}
    placed = parallel.put_batch(batch, mesh, leading_axes=1)
    np.testing.assert_array_equal(np.asarray(placed["x"]), batch["x"])
