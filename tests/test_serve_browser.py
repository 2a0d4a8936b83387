"""The drawing page of ``python -m flaxmnist.serve`` in a real browser.

Headless Chromium, driven by selenium through Debian's chromedriver, draws strokes on the pad with
pointer events (MNIST test digits traced row by row, and a single "1" stroke) and reads the
prediction the page shows. The run is one epoch of ``cnn_simple`` on the vendored MNIST (~97 %).
Without Chromium the tests skip, except on CI (``$CI`` set), where they fail.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from helpers import require_browser
from test_serve import served

from flaxmnist.data import datasets
from flaxmnist.evaluation import digit_images
from flaxmnist.testing import draw_on_pad, pad_strokes

pytestmark = [pytest.mark.slow, pytest.mark.real_data]

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of ``cnn_simple`` on the vendored MNIST (~97 % on the test set)."""
    require_browser()  # no training where the tests would skip
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

    chromium, chromedriver = require_browser()
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


def shown(driver) -> list[tuple[str, str]]:
    """The page's ranked classes and their percentages, ``[("7", "99.2 %"), ...]``."""
    from selenium.webdriver.common.by import By

    items = driver.find_elements(By.CSS_SELECTOR, "#top li")
    return [tuple(item.text.split("\n")) for item in items]


def test_a_thick_vertical_stroke_reads_as_a_1_and_the_page_logs_no_error(driver):
    draw_on_pad(driver, [[(140, 50 + 30 * i) for i in range(7)]])
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
        draw_on_pad(driver, pad_strokes(test.images[i]))
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
