"""The drawing page of ``python -m flaxmnist.serve`` in a real browser.

Headless Chromium, driven by selenium through Debian's chromedriver, draws strokes on the pad with
pointer events (MNIST test digits traced row by row, and a single "1" stroke) and reads the
prediction the page shows. The run is one epoch of ``cnn_simple`` on the vendored MNIST (~97 %).
Without Chromium the tests skip, except on CI (``$CI`` set), where they fail.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_serve import served

from flaxmnist.data import datasets
from flaxmnist.evaluation import digit_images

pytestmark = [pytest.mark.slow, pytest.mark.real_data]

PAD = 280  # the pad's side in pixels, 10 per pixel of an MNIST image
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
ANSWERED = "return document.body.dataset.answered === document.body.dataset.version"


def _browser() -> tuple[str, str]:
    """Chromium and chromedriver, or a skip (a failure on CI) naming what is missing."""
    found = {
        "chromium": shutil.which("chromium") or shutil.which("chromium-browser"),
        "chromedriver": shutil.which("chromedriver"),
    }
    missing = [name for name, path in found.items() if path is None]
    if missing:
        message = f"no {' or '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; on CI the browser tests must run")
        pytest.skip(message)
    return found["chromium"], found["chromedriver"]


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of ``cnn_simple`` on the vendored MNIST (~97 % on the test set)."""
    _browser()  # no training where the tests would skip
    from flaxmnist.configs import cnn_simple
    from flaxmnist.training import loop

    workdir = tmp_path_factory.mktemp("served") / "run"
    config = cnn_simple.get_config()
    config.num_epochs = 1
    config.compilation_cache_dir = ""
    loop.train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def driver(mnist_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """A headless Chromium showing the page of ``serve`` on :func:`mnist_run`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, "--window-size=900,600"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with served(mnist_run, cwd=tmp_path_factory.mktemp("serve_cwd")) as (url, _):
        browser = webdriver.Chrome(options=options, service=Service(chromedriver))
        try:
            browser.get(url)
            yield browser
        finally:
            browser.quit()


def traced(image: np.ndarray) -> list[list[tuple[int, int]]]:
    """An MNIST image as pen strokes on the pad: one per horizontal run of ink in each row."""
    strokes = []
    for row, ink in enumerate(image[..., 0] > 127):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], ink.astype(int), [0]])))
        for start, end in zip(edges[::2], edges[1::2], strict=True):
            y = 10 * row + 5
            strokes.append([(10 * start + 5, y), (10 * (end - 1) + 5, y)])
    return strokes


def draw(driver, strokes: list[list[tuple[int, int]]]) -> None:
    """Clears the pad, draws ``strokes`` (points in pad pixels) with the mouse, waits for the
    answer to the finished drawing."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "clear").click()
    pad = driver.find_element(By.ID, "pad")
    actions = ActionChains(driver, duration=0)
    for stroke in strokes:
        (x, y), *rest = stroke
        actions.move_to_element_with_offset(pad, x - PAD // 2, y - PAD // 2).click_and_hold()
        for next_x, next_y in rest:
            actions.move_by_offset(next_x - x, next_y - y)
            x, y = next_x, next_y
        actions.release()
    actions.perform()
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(ANSWERED))


def shown(driver) -> list[tuple[str, str]]:
    """The page's ranked classes and their percentages, ``[("7", "99.2 %"), ...]``."""
    from selenium.webdriver.common.by import By

    items = driver.find_elements(By.CSS_SELECTOR, "#top li")
    return [tuple(item.text.split("\n")) for item in items]


def test_a_thick_vertical_stroke_reads_as_a_1_and_the_page_logs_no_error(driver):
    draw(driver, [[(140, 50 + 30 * i) for i in range(7)]])
    assert shown(driver)[0][0] == "1"
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


def test_traced_test_digits_read_as_their_labels_framed_exactly_as_predict_frames_files(
    driver, mnist_run, tmp_path
):
    import flaxmnist
    from flaxmnist.evaluation import prediction

    run = flaxmnist.load_run(mnist_run)
    test = datasets.load_dataset("mnist").test
    # Per digit, the first test image the model reads as its label with a margin (its top logit
    # 5 above the next), so a traced copy's label does not hinge on the run's float rounding.
    logits = run.predict(test.images)
    top_two = np.sort(logits, axis=-1)[:, -2:]
    clear = (logits.argmax(-1) == test.labels) & (top_two[:, 1] - top_two[:, 0] > 5)
    firsts = [int(np.flatnonzero(clear & (test.labels == digit))[0]) for digit in range(10)]
    for i in firsts:
        draw(driver, traced(test.images[i]))
        drawing = tmp_path / f"drawing-{i}.png"
        data_url = driver.execute_script("return document.getElementById('pad').toDataURL()")
        drawing.write_bytes(base64.b64decode(data_url.partition(",")[2]))
        (expected,) = prediction.predict_files(run, [drawing])
        percents = [f"{p:.1%}".replace("%", " %") for p in expected.probabilities]
        assert shown(driver) == list(zip(expected.classes, percents, strict=True))
        assert expected.classes[0] == str(test.labels[i]), f"test image {i}"
        seen = driver.execute_script(
            "const f = document.getElementById('framed');"
            "return Array.from(f.getContext('2d').getImageData(0, 0, 28, 28).data)"
            ".filter((_, j) => j % 4 === 0);"
        )
        framed = digit_images.load_image_as(drawing, "mnist")
        np.testing.assert_array_equal(np.reshape(seen, (28, 28)), framed[..., 0])
