"""The browser demo (issue 12): the page's predict function, its error messages, and an end-to-end
run in headless Chromium (Debian's chromium driven by Playwright)."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mambaout.cli import main
from mambaout.errors import MambaOutError
from mambaout.tasks.classification.predict import Classifier, class_names_for

gr = pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed: pip install 'mambaout[demo]'")
from mambaout.deploy.demo import build_demo, example_images, make_predict  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]   # the repository
SCREENSHOT = ROOT / "docs" / "images" / "demo.png"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory, digits_checkpoint):
    """A digits checkpoint from `mambaout train` (3 epochs, ~97% here) and a few of its images."""
    tmp = tmp_path_factory.mktemp("demo")
    from mambaout.data.datasets import DigitsDataset
    val = DigitsDataset("val", img_size=64)
    images = []
    for i in range(4):
        path = tmp / f"digit{i}_is_{val.targets[i]}.png"
        val[i][0].save(path)
        images.append((path, str(val.targets[i])))
    return digits_checkpoint, images


@pytest.fixture(scope="module")
def clf(digits):
    return Classifier.load(digits[0])


def test_predict_gives_top5_and_overlay(clf, digits):
    predict = make_predict(clf, max_mb=1)
    right = 0
    for path, truth in digits[1]:
        top, picture = predict(str(path))
        assert len(top) == 5 and set(top) <= set(map(str, range(10))) and sum(top.values()) <= 1 + 1e-6
        assert list(top.values()) == sorted(top.values(), reverse=True)
        right += max(top, key=top.get) == truth
        assert isinstance(picture, Image.Image) and picture.width >= 256
    assert right >= 3


@pytest.mark.parametrize("content, needle", [
    (b"this is a text file", "not an image"),
    (b"", "the file is empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not an image"),  # a PNG signature and nothing else
    (None, "Upload an image first"),
])
def test_bad_uploads_get_a_message(clf, tmp_path, content, needle):
    predict = make_predict(clf, max_mb=1)
    path = None
    if content is not None:
        path = tmp_path / "upload.png"
        path.write_bytes(content)
    with pytest.raises(gr.Error, match=needle) as e:
        predict(None if path is None else str(path))
    assert str(tmp_path) not in str(e.value)  # the message names the upload, not the server's folders


def test_oversized_upload_is_refused(clf, digits, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(big)
    with pytest.raises(gr.Error, match=r"big.png is 0.3 MB; the limit is 0.1 MB"):
        make_predict(clf, max_mb=0.1)(str(big))


def test_imagenet_model_uses_imagenet_names():
    torch.manual_seed(0)
    c = Classifier.load(model_name="mambaout_femto", random_ok=True)
    import sklearn.datasets
    china = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"
    top, _ = make_predict(c, max_mb=20)(str(china))
    assert len(top) == 5 and set(top) <= set(class_names_for(1000, None))


def test_examples_and_page(clf, tmp_path):
    paths = example_images(clf, tmp_path)
    assert [Path(p).name for p in paths] == ["digit_0.png", "digit_3.png", "digit_5.png", "digit_7.png"]
    top, _ = make_predict(clf, max_mb=1)(paths[1])
    imagenet = example_images(Classifier.load(model_name="mambaout_femto", random_ok=True), tmp_path / "in")
    assert {"china.jpg", "flower.jpg"} <= {Path(p).name for p in imagenet}
    demo = build_demo(clf, examples=paths)
    assert "/predict" in demo.get_api_info()["named_endpoints"]


def test_missing_gradio_names_the_extra(monkeypatch, digits, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["demo", "--checkpoint", str(digits[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mambaout: error: the demo needs the gradio package: pip install 'mambaout[demo]'"


def test_repeated_class_names_stay_five_rows(clf, digits, monkeypatch):
    monkeypatch.setattr(clf, "names", ["same"] * 10)
    top, _ = make_predict(clf, max_mb=1)(str(digits[1][0][0]))
    assert len(top) == 5 and list(top)[0] == "same" and all(k.startswith("same") for k in top)


def test_demo_argument_errors(digits, capsys):
    assert main(["demo"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["demo", "--checkpoint", str(digits[0]), "--max-mb", "0"]) == 2
    assert "--max-mb must be positive" in capsys.readouterr().err
    assert main(["demo", "--model", "mambaout_nope"]) == 2
    assert "mambaout_nope" in capsys.readouterr().err
    assert main(["demo", "--checkpoint", str(digits[0]), "--layer", "stages.9"]) == 2
    assert "no layer 'stages.9'" in capsys.readouterr().err


# ---- the server ----------------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo(checkpoint, port, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
    return subprocess.Popen([sys.executable, "-m", "mambaout", "demo", "--checkpoint", str(checkpoint),
                             "--port", str(port), *extra], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_until_serving(proc, url, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the demo exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the demo did not serve {url} within {timeout} s")


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_busy_port_is_one_line(digits):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc = start_demo(digits[0], s.getsockname()[1])
        try:
            out, _ = proc.communicate(timeout=120)
        finally:
            stop(proc)
    assert proc.returncode == 2, out
    assert out.strip().splitlines()[-1].startswith("mambaout: error: cannot serve on 127.0.0.1:"), out
    assert "Traceback" not in out


def chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_browser_end_to_end(digits, tmp_path):
    """Start `mambaout demo`, open it in headless Chromium, upload a digit and read the top-5 from
    the page, upload a text file and read the error; the screenshot is the README's."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("no Chromium on this machine: `make install` installs Debian's chromium where apt-get runs as "
                    "root (apt-get install chromium)")
    checkpoint, images = digits
    (path, truth) = images[1]
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = start_demo(checkpoint, port)
    try:
        wait_until_serving(proc, url)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, headless=True, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 860})
                page.goto(url, wait_until="networkidle", timeout=60_000)
                page.set_input_files("input[type=file]", str(path))
                page.get_by_role("button", name="Submit", exact=True).click()
                rows = page.locator("[data-testid$='-confidence-set']")
                rows.nth(4).wait_for(timeout=60_000)
                labels = [r.inner_text().split("\n")[0].strip() for r in rows.all()]
                assert len(labels) == 5 and set(labels) <= set(map(str, range(10))), labels
                assert page.get_by_test_id("label-output-value").inner_text().strip().split("\n")[0] == truth
                page.locator("img").first.wait_for(timeout=60_000)  # the overlay (the page has no other image)
                shot = SCREENSHOT if os.environ.get("MAMBAOUT_UPDATE_SCREENSHOTS") else tmp_path / "demo.png"
                shot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shot), full_page=True)
                assert Image.open(shot).size[0] == 1200

                page.reload(wait_until="networkidle")
                page.set_input_files("input[type=file]", str(notes))
                page.get_by_role("button", name="Submit", exact=True).click()
                toast = page.get_by_test_id("toast-text").first
                toast.wait_for(timeout=60_000)
                assert "Cannot read notes.txt: not an image" in toast.inner_text()
            finally:
                browser.close()
        assert proc.poll() is None, "the server must keep serving after a bad upload"
        # the API endpoint `predict`: label confidences first, then the overlay
        from gradio_client import Client, handle_file
        label, overlay_file = Client(url, verbose=False).predict(handle_file(str(path)), api_name="/predict")
        assert label["label"] == truth and len(label["confidences"]) == 5
        with Image.open(overlay_file) as im:
            assert im.width >= 256
    finally:
        stop(proc)
    assert proc.returncode is not None
