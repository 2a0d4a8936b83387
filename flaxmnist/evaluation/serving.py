"""A trained run served locally: a page to draw a digit on, and a JSON endpoint for images.

``POST /api/predict`` takes one image, as a multipart upload (file field ``image``) or as JSON
(``{"image": BASE64 or data URL, "name": ..., "top": ...}``), and answers what
``python -m flaxmnist.predict --json`` answers for the same file: the image is framed by the same
code (:func:`flaxmnist.evaluation.prediction.framed_images`), plus the framed 28x28 image the
model saw. ``GET /`` is the drawing page (``serve_page/``), ``GET /api/run`` names the run. Every
refusal is a 4xx JSON ``{"error": "..."}`` naming the problem.

Why Flask + waitress: the model call is blocking CPU work, which a WSGI thread pool fits as is.
(Both are pure Python and long kept, by Pallets and Pylons; waitress caps request bodies.)
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import socket
import tempfile
from pathlib import Path

import flask
import numpy as np
import waitress
from PIL import Image, ImageDraw
from werkzeug import exceptions

from flaxmnist import errors
from flaxmnist.errors import FlaxmnistError
from flaxmnist.evaluation import metrics, prediction
from flaxmnist.evaluation.loading import LoadedRun

PAGE = Path(__file__).with_name("serve_page")
# The largest image taken, in bytes: a phone photo's JPEG is a few MB. Its pixels are bounded
# too, from its header, by the framing's own limit (digit_images.MAX_PIXELS), as predict's are.
MAX_IMAGE_BYTES = 20 << 20
# A request may hold the largest image in base64 (4 bytes per 3), and the form or JSON around it.
MAX_REQUEST_BYTES = MAX_IMAGE_BYTES * 4 // 3 + (64 << 10)
DEFAULT_TOP = 3
THREADS = 4  # requests answered at once; more wait in waitress's queue
NUMPY_MAGIC = b"\x93NUMPY"  # how a .npy file starts (it is read as an array, as predict does)


def classify(run: LoadedRun, data: bytes, name: str, top: int = DEFAULT_TOP) -> dict:
    """What ``predict --json`` answers for a file holding ``data``, and the image the model saw.

    Args:
      run: a run from :func:`flaxmnist.load_run`.
      data: the bytes of an image file (PNG, JPEG, BMP, GIF, TIFF, WebP) or a ``.npy`` array.
      name: the file's name, as the answer and any error name it.
      top: how many classes to report.

    Returns:
      ``{"file": name, "top": [{"class": ..., "probability": ...}, ...], "framed": rows}``:
      ``predict --json``'s record, and the framed uint8 image as 28 lists of 28 grey levels.

    Raises:
      FlaxmnistError: for a bad ``top`` or data that is no readable image.
    """
    if not 1 <= top <= len(run.class_names):
        raise FlaxmnistError(f"top must be between 1 and {len(run.class_names)}, got {top}")
    framed = framed_image(run, data, name)
    probabilities = metrics.softmax(run.predict(framed))[0]
    best = np.argsort(-probabilities, kind="stable")[:top]
    ranked = prediction.Prediction(
        name,
        tuple(str(run.class_names[i]) for i in best),
        tuple(float(probabilities[i]) for i in best),
    )
    return {**ranked.record(), "framed": framed[0, ..., 0].tolist()}


def framed_image(run: LoadedRun, data: bytes, name: str) -> np.ndarray:
    """``data`` framed as ``predict`` frames a file of it: uint8 ``[1, 28, 28, 1]``.

    The bytes go through a private temporary file, so that the very code that reads and frames
    ``predict``'s files reads them; its errors name ``name`` instead of that file.
    """
    with tempfile.TemporaryDirectory(prefix="flaxmnist-serve-") as folder:
        path = Path(folder) / ("image.npy" if data.startswith(NUMPY_MAGIC) else "image")
        path.write_bytes(data)
        try:
            return prediction.framed_images(run, [path])
        except FlaxmnistError as e:
            raise FlaxmnistError(str(e).replace(str(path), name)) from None


def warm_up(run: LoadedRun) -> None:
    """Answers one drawn stroke, so that the first request finds everything compiled and loaded.

    Raises:
      FlaxmnistError: for a run whose images ``predict`` cannot frame (not MNIST-like).
    """
    stroke = Image.new("L", (280, 280))
    ImageDraw.Draw(stroke).line([(140, 60), (140, 220)], fill=255, width=18)
    png = io.BytesIO()
    stroke.save(png, "PNG")
    classify(run, png.getvalue(), "warm-up")


def create_app(run: LoadedRun) -> flask.Flask:
    """The WSGI app serving ``run``: the page, ``/api/run`` and ``/api/predict`` (module doc)."""
    app = flask.Flask(__name__, static_folder=str(PAGE), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES  # also bounds a body of unknown length
    app.json.sort_keys = False  # answers keep their order: file, top, framed

    @app.get("/")
    def page() -> flask.Response:
        return flask.send_from_directory(PAGE, "index.html")

    @app.get("/api/run")
    def describe_run() -> dict:
        return {
            "model": run.config.model,
            "dataset": run.config.dataset,
            "step": run.step,
            "classes": list(run.class_names),
        }

    @app.post("/api/predict")
    def predict() -> dict:
        data, name, top = image_from_request(flask.request)
        try:
            return classify(run, data, name, top)
        except FlaxmnistError as e:
            raise exceptions.BadRequest(str(e)) from None

    app.register_error_handler(exceptions.HTTPException, http_error)
    app.register_error_handler(Exception, internal_error)
    return app


def image_from_request(request: flask.Request) -> tuple[bytes, str, int]:
    """The image's bytes, its name and ``top`` from a multipart form or a JSON body.

    Raises:
      werkzeug.exceptions.HTTPException: 413 for a body or image above the limits, 415 for
        another content type, 400 for a missing field, bad base64 or a ``top`` of no integer.
    """
    if (request.content_length or 0) > MAX_REQUEST_BYTES:
        raise exceptions.RequestEntityTooLarge(
            f"the request is {request.content_length:,} bytes; at most {MAX_REQUEST_BYTES:,}"
        )
    if request.mimetype == "multipart/form-data":
        data, name, top = form_image(request)
    elif request.mimetype == "application/json":
        data, name, top = json_image(request)
    else:
        raise exceptions.UnsupportedMediaType(
            f"send multipart/form-data or application/json, not {request.mimetype or 'no type'}"
        )
    if len(data) > MAX_IMAGE_BYTES:
        raise exceptions.RequestEntityTooLarge(
            f"{name}: {len(data):,} bytes is too large (at most {MAX_IMAGE_BYTES:,})"
        )
    return data, name, parse_top(top)


def form_image(request: flask.Request) -> tuple[bytes, str, str | None]:
    """The bytes and name of a multipart form's file ``image``, and its field ``top``."""
    upload = request.files.get("image")
    if upload is None:
        raise exceptions.BadRequest("the form has no file field 'image'")
    return upload.read(), upload.filename or "image", request.form.get("top")


def json_image(request: flask.Request) -> tuple[bytes, str, object]:
    """The bytes of a JSON body's base64 ``image``, its ``name`` and ``top``."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise exceptions.BadRequest("the body is not a JSON object")
    if not isinstance(body.get("image"), str):
        raise exceptions.BadRequest("the JSON has no field 'image' (a base64 string)")
    return decode_base64(body["image"]), str(body.get("name") or "image"), body.get("top")


def decode_base64(text: str) -> bytes:
    """The bytes of a base64 string or a ``data:...;base64,`` URL (a canvas's ``toDataURL``)."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise exceptions.BadRequest(f"the field 'image' is not valid base64 ({e})") from None


def parse_top(value: object) -> int:
    """``top`` from a form (a string) or JSON (a number); absent: :data:`DEFAULT_TOP`.

    Its range is checked by :func:`classify`, against the run's classes.
    """
    if value is None or value == "":
        return DEFAULT_TOP
    if isinstance(value, bool) or not str(value).isdigit():
        raise exceptions.BadRequest(f"top must be an integer, got {value!r}")
    return int(value)


def http_error(error: exceptions.HTTPException) -> tuple[dict, int, dict]:
    """A refused request as JSON ``{"error": "..."}`` with its status (and ``Allow`` for 405)."""
    headers = {}
    if isinstance(error, exceptions.MethodNotAllowed):
        methods = error.valid_methods or ()
        headers["Allow"] = ", ".join(methods)
        allowed = ", ".join(sorted(set(methods) - {"HEAD", "OPTIONS"}))
        message = f"{flask.request.method} is not allowed on {flask.request.path}; use {allowed}"
    elif isinstance(error, exceptions.NotFound):
        message = f"nothing at {flask.request.path}"
    else:
        message = errors.one_line(error.description or error.name)
    return {"error": message}, error.code or 500, headers


def internal_error(error: Exception) -> tuple[dict, int]:
    """A bug or library failure as JSON (500); its traceback goes to a file, as the CLIs do."""
    log = errors.write_traceback(None)
    message = f"internal error ({type(error).__name__}: {errors.first_line(error)}); see {log}"
    return {"error": message}, 500


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port`` (0: a free port), IPv4 or IPv6.

    Raises:
      FlaxmnistError: for a host that does not resolve or a port that is taken or not allowed.
    """
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise FlaxmnistError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def url(sock: socket.socket) -> str:
    """``http://HOST:PORT/`` of a listening socket (an IPv6 host in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(app: flask.Flask, sock: socket.socket) -> None:
    """Serves ``app`` on ``sock`` with :data:`THREADS` threads until the process is stopped."""
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "N requests waiting" notes
    server = waitress.create_server(
        app,
        sockets=[sock],
        threads=THREADS,
        max_request_body_size=2 * MAX_REQUEST_BYTES,  # waitress's own plain-text 413 above it
        ident="flaxmnist",
    )
    server.run()
