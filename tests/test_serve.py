"""Serving a run: the JSON endpoint's answers and refusals, and the serve CLI (a real server).

The browser test of the drawing page is tests/test_serve_browser.py.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import json
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw

from flaxmnist.evaluation import digit_images, serving

URL_LINE = re.compile(r"serving .* at (?P<url>http://\S+)$")
STARTUP_TIMEOUT = 180  # seconds


class StubRun:
    """A run's interface (config, classes, predict) with fixed logits: class i scores i."""

    config = ml_collections.ConfigDict({"model": "stub", "dataset": "mnist"})
    class_names = tuple("0123456789")
    step = 7

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.tile(np.arange(10, dtype=np.float32), (len(images), 1))


def _png(draw: str = "stroke", size: tuple[int, int] = (120, 120)) -> bytes:
    """A PNG: a dark stroke on white paper (``stroke``) or blank paper."""
    image = Image.new("L", size, 255)
    if draw == "stroke":
        ImageDraw.Draw(image).line([(60, 15), (45, 105)], fill=0, width=9)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def client():
    return serving.create_app(StubRun()).test_client()


def _as_json(data: bytes, **fields) -> dict:
    return {"image": base64.b64encode(data).decode(), **fields}


def test_the_page_its_script_and_the_run_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert 'id="pad"' in html and 'id="framed"' in html and "/static/app.js" in html
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/api/run").get_json() == {
        "model": "stub",
        "dataset": "mnist",
        "step": 7,
        "classes": list("0123456789"),
    }


def test_an_upload_and_its_base64_get_the_ranked_classes_and_the_image_predict_frames(
    client, tmp_path
):
    data = _png()
    (tmp_path / "digit.png").write_bytes(data)
    framed = digit_images.load_image_as(tmp_path / "digit.png", "mnist")[..., 0].tolist()
    uploaded = client.post("/api/predict", data={"image": (io.BytesIO(data), "digit.png")})
    assert uploaded.status_code == 200
    answer = uploaded.get_json()
    assert list(answer) == ["file", "top", "framed"]
    assert answer["file"] == "digit.png" and answer["framed"] == framed
    assert [entry["class"] for entry in answer["top"]] == ["9", "8", "7"]
    expected = np.exp(np.arange(10.0)) / np.exp(np.arange(10.0)).sum()
    np.testing.assert_allclose([e["probability"] for e in answer["top"]], expected[:-4:-1])
    as_json = client.post("/api/predict", json=_as_json(data, name="digit.png", top=2))
    assert as_json.get_json() == {**answer, "top": answer["top"][:2]}
    data_url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert client.post("/api/predict", json={"image": data_url}).get_json()["framed"] == framed


def test_an_npy_array_in_base64_is_read_as_predict_reads_a_npy_file(client):
    buffer = io.BytesIO()
    np.save(buffer, np.pad(np.full((12, 3), 255, np.uint8), 8))
    answer = client.post("/api/predict", json=_as_json(buffer.getvalue())).get_json()
    assert answer["file"] == "image" and np.array(answer["framed"]).max() == 255


BIG = b"\x89PNG" + bytes(600)


@pytest.mark.parametrize(
    ("request_args", "status", "message"),
    [
        ({"data": {"image": (io.BytesIO(b"not an image"), "a.png")}}, 400, "a.png: not a PNG"),
        ({"data": {"image": (io.BytesIO(b""), "empty.png")}}, 400, "empty.png: the file is empty"),
        ({"json": _as_json(b"GIF89a broken", name="b.gif")}, 400, "b.gif: not a PNG"),
        ({"data": {"picture": (io.BytesIO(_png()), "a.png")}}, 400, "no file field 'image'"),
        ({"json": {"picture": "aGk="}}, 400, "no field 'image'"),
        ({"json": {"image": 12}}, 400, "no field 'image' (a base64 string)"),
        ({"json": {"image": "not base64!"}}, 400, "'image' is not valid base64"),
        ({"json": {"image": "aGk"}}, 400, "'image' is not valid base64"),
        ({"json": [1, 2]}, 400, "the body is not a JSON object"),
        ({"data": "{", "content_type": "application/json"}, 400, "not a JSON object"),
        ({"data": "x=1", "content_type": "text/plain"}, 415, "not text/plain"),
        ({"data": b""}, 415, "not no type"),
        ({"json": _as_json(_png(), top=0)}, 400, "top must be between 1 and 10, got 0"),
        ({"json": _as_json(_png(), top="two")}, 400, "top must be an integer, got 'two'"),
        ({"json": _as_json(_png(), top=True)}, 400, "top must be an integer"),
        ({"json": _as_json(BIG, name="big.png")}, 413, "big.png: 604 bytes is too large"),
        ({"data": {"image": (io.BytesIO(BIG), "big.png")}}, 413, "604 bytes is too large"),
        ({"json": _as_json(bytes(3000))}, 413, "the request is 4,0"),
    ],
)
def test_a_bad_request_is_a_4xx_json_error_naming_the_problem(
    client, monkeypatch, request_args, status, message
):
    monkeypatch.setattr(serving, "MAX_IMAGE_BYTES", 600)
    monkeypatch.setattr(serving, "MAX_REQUEST_BYTES", 3000)
    response = client.post("/api/predict", **request_args)
    assert response.status_code == status and response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert message in error and "flaxmnist-serve-" not in error  # no temporary file named


def test_an_image_of_too_many_pixels_is_refused_by_the_framing_limit(client, monkeypatch):
    monkeypatch.setattr(digit_images, "MAX_PIXELS", 10_000)
    response = client.post("/api/predict", json=_as_json(_png(), name="wide.png"))
    assert response.status_code == 400
    assert response.get_json()["error"].startswith("wide.png: 120x120 pixels is too large")


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("get", "/api/predict", 405, "GET is not allowed on /api/predict; use POST"),
        ("put", "/api/predict", 405, "PUT is not allowed on /api/predict; use POST"),
        ("post", "/", 405, "POST is not allowed on /; use GET"),
        ("get", "/api/nothing", 404, "nothing at /api/nothing"),
    ],
)
def test_a_wrong_method_or_path_is_a_json_error(client, method, path, status, message):
    response = getattr(client, method)(path)
    assert response.status_code == status and response.get_json() == {"error": message}


def test_an_internal_error_is_a_500_json_line_with_the_traceback_in_a_file(
    client, monkeypatch, tmp_path
):
    def broken(self, images):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(StubRun, "predict", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    response = client.post("/api/predict", json=_as_json(_png()))
    assert response.status_code == 500
    assert "internal error (RuntimeError: model exploded); see" in response.get_json()["error"]
    (log,) = tmp_path.glob("flaxmnist-error-*.log")
    assert "model exploded" in log.read_text()


def test_listen_picks_a_free_port_for_0_and_names_a_taken_one():
    sock = serving.listen("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        assert port > 0 and serving.url(sock) == f"http://127.0.0.1:{port}/"
        with pytest.raises(serving.FlaxmnistError, match=f"cannot listen on 127.0.0.1:{port}"):
            serving.listen("127.0.0.1", port)
    finally:
        sock.close()


# The command line, serving a real run.

PLUGIN = """
from flaxmnist import models

models.MODELS.add("plugin_dense", models.MODELS.get("dense"))
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``dense`` run of one epoch on synthetic data."""
    from flaxmnist.configs import default
    from flaxmnist.testing import write_idx_dataset
    from flaxmnist.training import loop

    root = tmp_path_factory.mktemp("serve")
    write_idx_dataset(root / "data" / "mnist", num_train=256, num_test=64)
    config = default.get_config()
    config.update(
        model="dense",
        data_dir=str(root / "data"),
        batch_size=32,
        num_epochs=1,
        compilation_cache_dir="",
    )
    loop.train_and_evaluate(config, root / "run")
    return root / "run"


def _serve_cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flaxmnist.serve", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextlib.contextmanager
def served(workdir: Path, *args: str, cwd: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m flaxmnist.serve --workdir=WORKDIR --port=0 ARGS``: its URL and process."""
    server = _serve_cli(f"--workdir={workdir}", "--port=0", *args, cwd=cwd)
    try:
        # The server prints its URL once it is ready (a few seconds: JAX, the run, a compile).
        ready, _, _ = select.select([server.stdout], [], [], STARTUP_TIMEOUT)
        line = server.stdout.readline() if ready else ""
        match = URL_LINE.search(line.strip())
        assert match, f"no URL in {line!r}; stderr: {server.stderr.read()[-2000:]}"
        yield match.group("url"), server
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
        server.stdout.close()
        server.stderr.close()


def _predict_json(workdir: Path, *files: str, cwd: Path) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "flaxmnist.predict", f"--workdir={workdir}", "--json", *files],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _digit_files(folder: Path) -> list[str]:
    """A photo-like PNG, a JPEG and a .npy of strokes; their names, relative to ``folder``."""
    (folder / "stroke.png").write_bytes(_png())
    page = Image.new("RGB", (300, 200), (235, 230, 220))
    ImageDraw.Draw(page).line([(100, 40), (180, 40), (120, 170)], fill=(30, 30, 60), width=14)
    page.save(folder / "seven.jpg", quality=85)
    np.save(folder / "ring.npy", np.pad(np.ones((14, 10)), 7) - np.pad(np.ones((8, 4)), 10))
    return ["stroke.png", "seven.jpg", "ring.npy"]


def _assert_same_answer(answer: dict, record: dict) -> None:
    assert answer["file"] == record["file"]
    assert [e["class"] for e in answer["top"]] == [e["class"] for e in record["top"]]
    np.testing.assert_allclose(
        [e["probability"] for e in answer["top"]],
        [e["probability"] for e in record["top"]],
        rtol=1e-5,
    )


@pytest.mark.slow
def test_the_endpoint_answers_as_predict_json_for_the_same_files_and_in_parallel(
    tiny_run, tmp_path
):
    names = _digit_files(tmp_path)
    # predict frames several files into one batch: float32 rounding apart, the same answers.
    expected = _predict_json(tiny_run, *names, cwd=tmp_path)
    (alone,) = _predict_json(tiny_run, names[0], cwd=tmp_path)  # one image: the very same
    with served(tiny_run, cwd=tmp_path) as (url, _):
        endpoint = url + "api/predict"

        def upload(name: str) -> dict:
            with (tmp_path / name).open("rb") as f:
                response = requests.post(endpoint, files={"image": (name, f)}, timeout=60)
            assert response.status_code == 200, response.text
            return response.json()

        def in_base64(name: str) -> dict:
            image = base64.b64encode((tmp_path / name).read_bytes()).decode()
            response = requests.post(endpoint, json={"image": image, "name": name}, timeout=60)
            assert response.status_code == 200, response.text
            return response.json()

        assert {key: upload(names[0])[key] for key in ("file", "top")} == alone
        singly = {}
        for name, record in zip(names, expected, strict=True):
            singly[name] = upload(name)
            assert in_base64(name) == singly[name]
            _assert_same_answer(singly[name], record)
        # Twelve requests, six at a time: every answer is the one asked alone.
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(upload, names * 4))
        assert answers == [singly[name] for name in names * 4]
        refused = requests.post(endpoint, data=b"x", timeout=60)
        assert refused.status_code == 415 and "error" in refused.json()


@pytest.mark.slow
def test_ctrl_c_stops_the_server_with_status_130_and_one_line(tiny_run, tmp_path):
    with served(tiny_run, cwd=tmp_path) as (url, server):
        assert requests.get(url, timeout=60).status_code == 200
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 130
        assert server.stderr.read().strip() == "error: stopped by SIGINT"


@pytest.mark.slow
def test_a_run_that_needs_plugins_is_refused_unless_they_are_allowed(tiny_run, tmp_path):
    run = tmp_path / "plugin_run"
    shutil.copytree(tiny_run, run)
    (tmp_path / "plugin.py").write_text(PLUGIN)
    config = json.loads((run / "config.json").read_text())
    config.update(model="plugin_dense", import_modules=str(tmp_path / "plugin.py"))
    (run / "config.json").write_text(json.dumps(config))
    refused = _serve_cli(f"--workdir={run}", "--port=0", cwd=tmp_path)
    _, stderr = refused.communicate(timeout=120)
    assert refused.returncode == 2 and len(stderr.strip().splitlines()) == 1
    assert "needs its plugin code for its model 'plugin_dense'" in stderr
    with served(run, "--allow_plugins", cwd=tmp_path) as (url, _):
        answer = requests.post(url + "api/predict", json=_as_json(_png()), timeout=60).json()
        assert len(answer["top"]) == 3


@pytest.mark.slow
def test_help_and_every_bad_start_end_in_one_line(tiny_run, tmp_path):
    helped = subprocess.run(
        [sys.executable, "-m", "flaxmnist.serve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert helped.returncode == 0 and "--port" in helped.stdout and "--host" in helped.stdout
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        for args, message in [
            ([f"--workdir={tiny_run}", f"--port={port}"], f"cannot listen on 127.0.0.1:{port}"),
            (
                [f"--workdir={tiny_run}", "--port=70000"],
                "--port: 70000 is not an integer in the range",
            ),
            ([f"--workdir={tmp_path}"], "is not a run directory"),
            (["--port=0"], "--workdir"),
            ([f"--workdir={tiny_run}", "extra"], "unexpected arguments: extra"),
        ]:
            failed = _serve_cli(*args, cwd=tmp_path)
            _, stderr = failed.communicate(timeout=120)
            assert failed.returncode == 2, stderr
            assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
            assert stderr.startswith("error: ") and message in stderr
