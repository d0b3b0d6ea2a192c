"""`alexnet serve` through a real server process on a free loopback port, as clients use it."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from alexnet.runtime import load_classifier
from conftest import CLASSES, run_cli, serving

# Small limits, so that the refusals cost little to provoke.
LIMITS = ["--max-image-bytes", "200000", "--max-pixels", "1000000", "--max-request-bytes", "300000"]


@pytest.fixture(scope="module")
def service(exported_model, tmp_path_factory):
    with serving(exported_model, "--max-batch", "16", "--max-wait-ms", "50", *LIMITS,
                 tmp_path=tmp_path_factory.mktemp("serve")) as running:
        yield running


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[Path]:
    """32 distinct images of different sizes and formats, each with one bright channel."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(7)
    paths = []
    for i in range(32):
        w, h = 24 + 3 * i, 40 + (i % 5) * 7
        pixels = rng.integers(0, 110, (h, w, 3), dtype=np.uint8)
        pixels[..., i % 3] += 120
        path = root / f"img{i:02d}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def raw(url: str, path: Path, **params) -> httpx.Response:
    kind = "image/jpeg" if path.suffix == ".jpg" else "image/png"
    return httpx.post(url + "/predict", params={"name": path.name, **params}, content=path.read_bytes(),
                      headers={"Content-Type": kind}, timeout=60)


def cli_predictions(model: Path, *paths: Path) -> list[dict]:
    result = run_cli("predict", model, *paths, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def same(answer: dict, expected: dict, name: str) -> None:
    assert answer["image"] == name and set(answer) == {"image", "predictions"}
    assert [p["class"] for p in answer["predictions"]] == [p["class"] for p in expected["predictions"]]
    np.testing.assert_allclose([p["probability"] for p in answer["predictions"]],
                               [p["probability"] for p in expected["predictions"]], atol=1e-5)


def health(service) -> dict:
    return httpx.get(service.url + "/health").json()


def test_raw_and_multipart_answers_equal_predict_json(service, exported_model, pictures):
    path = pictures[3]
    expected = cli_predictions(exported_model, path)[0]
    same(raw(service.url, path).json(), expected, path.name)
    with open(path, "rb") as f:
        answer = httpx.post(service.url + "/predict", files={"file": (path.name, f, "image/jpeg")}, timeout=60)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    same(answer.json(), expected, path.name)


def test_several_files_get_a_list_in_their_order(service, exported_model, pictures):
    chosen = [pictures[5], pictures[0], pictures[12]]
    files = [("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in chosen]
    answer = httpx.post(service.url + "/predict", files=files, timeout=60)
    assert answer.status_code == 200, answer.text
    for got, want, path in zip(answer.json(), cli_predictions(exported_model, *chosen), chosen):
        same(got, want, path.name)


def test_top_k_query(service, pictures):
    answer = raw(service.url, pictures[1], top_k=2).json()
    assert len(answer["predictions"]) == 2
    assert len(raw(service.url, pictures[1], top_k=9).json()["predictions"]) == 3  # only 3 classes
    for bad in ("0", "-1", "two", "\u00b2"):  # "²" passes str.isdigit() but is no number
        answer = raw(service.url, pictures[1], top_k=bad)
        assert answer.status_code == 400 and "top_k" in answer.json()["error"]


def test_model_card(service, exported_model):
    card = httpx.get(service.url + "/model").json()
    config = json.loads((exported_model / "config.json").read_text())
    assert card["classes"] == CLASSES and card["input_side"] == 32 and card["backend"] == "onnx"
    assert card["metrics"]["accuracy"] == pytest.approx(config["metrics"]["accuracy"])
    assert card["metrics"]["split"] == "val" and card["report_url"] is None
    assert card["limits"]["max_image_bytes"] == 200000 and card["limits"]["max_pixels"] == 1000000


def test_health(service):
    status = health(service)
    assert status["status"] == "ok" and status["backend"] == "onnx" and status["model"] == "alexnet-cifar"
    assert status["batching"]["max_batch"] == 16 and status["batching"]["max_wait_ms"] == 50


def test_page_is_one_self_contained_file(service):
    page = httpx.get(service.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'type="file"' in html and "/predict" in html and "/model" in html
    # Nothing fetched from elsewhere: no external scripts, styles, fonts or images.
    for marker in ("http://", "https://", "<script src", "<link", "@import", "url("):
        assert marker not in html


def jpeg_bytes(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 90, dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def png_bytes(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "PNG")  # one colour: tiny file, many pixels
    return buf.getvalue()


def noise(n: int) -> bytes:
    return np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()


IMAGE = {"Content-Type": "image/jpeg"}
BAD_REQUESTS = {
    "empty body": (dict(content=b"", headers=IMAGE), 400, "empty"),
    "not an image": (dict(content=b"hello, this is text", headers=IMAGE), 400, "cannot be read"),
    "truncated image": (dict(content=jpeg_bytes(64, 64)[:400], headers=IMAGE), 400, "cannot be read"),
    "over the byte limit": (dict(content=noise(250_000), headers=IMAGE), 413, "limit"),
    "over the pixel limit": (dict(content=png_bytes(1100, 1000), headers={"Content-Type": "image/png"}), 413,
                             "pixels"),
    "wrong content type": (dict(content=jpeg_bytes(8, 8), headers={"Content-Type": "text/plain"}), 415, "image"),
    "missing field": (dict(files={"picture": ("a.jpg", jpeg_bytes(8, 8), "image/jpeg")}), 400, "no field 'file'"),
    "text in the field": (dict(files={"file": (None, "hello")}), 400, "not a file"),
    "oversized request": (dict(files=[("file", (f"{i}.bin", noise(180_000 + i), "image/jpeg")) for i in range(2)]),
                          413, "limit"),
    "broken multipart": (dict(content=b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
                              headers={"Content-Type": "multipart/form-data; boundary=abc"}), 400, "file"),
    "one bad file among good ones": (dict(files=[("file", ("good.jpg", jpeg_bytes(40, 30), "image/jpeg")),
                                                 ("file", ("bad.jpg", b"\xff\xd8\xff junk", "image/jpeg"))]),
                                     400, "bad.jpg"),
    "bad top_k": (dict(content=jpeg_bytes(8, 8), headers=IMAGE, params={"top_k": "zero"}), 400, "top_k"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_a_4xx_json_sentence_and_the_next_request_is_served(service, pictures, case):
    kwargs, status, words = BAD_REQUESTS[case]
    answer = httpx.post(service.url + "/predict", timeout=60, **kwargs)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert list(body) == ["error"] and words in body["error"] and "\n" not in body["error"]
    good = raw(service.url, pictures[0])
    assert good.status_code == 200 and len(good.json()["predictions"]) == 3


def test_the_decoders_own_pixel_cap_is_a_413_too(exported_model, pictures, tmp_path):
    with serving(exported_model, "--max-pixels", "100000000", tmp_path=tmp_path,
                 env={"ALEXNET_MAX_IMAGE_PIXELS": "5000"}) as capped:
        big = httpx.post(capped.url + "/predict", content=png_bytes(100, 100), headers={"Content-Type": "image/png"})
        small = raw(capped.url, pictures[0])  # 24 x 40 = 960 pixels
    assert big.status_code == 413 and "too large" in big.json()["error"] and "10,000 pixels" in big.json()["error"]
    assert small.status_code == 200


def test_unknown_pages_and_methods_are_json_errors(service):
    missing = httpx.get(service.url + "/nothing-here")
    assert missing.status_code == 404 and "/predict" in missing.json()["error"]
    wrong = httpx.get(service.url + "/predict")
    assert wrong.status_code == 405 and "GET" in wrong.json()["error"]


def concurrent_answers(url: str, paths: list[Path]) -> list[httpx.Response]:
    """One thread per image, released together so their requests overlap."""
    answers: list[httpx.Response | None] = [None] * len(paths)
    start = threading.Barrier(len(paths))

    def send(i: int) -> None:
        start.wait()
        answers[i] = raw(url, paths[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return answers


def test_concurrent_requests_each_get_their_own_answer_in_shared_batches(service, exported_model, pictures):
    clf = load_classifier(exported_model, "onnx")  # computed here, in this process, image by image
    expected = [clf.probabilities(clf.prepare_file(p)[None])[0] for p in pictures]
    before = health(service)["batching"]
    answers = concurrent_answers(service.url, pictures)
    after = health(service)["batching"]
    for path, answer, probs in zip(pictures, answers, expected):
        assert answer.status_code == 200, answer.text
        got = answer.json()
        assert got["image"] == path.name
        order = np.argsort(-probs)
        assert [p["class"] for p in got["predictions"]] == [CLASSES[i] for i in order]
        np.testing.assert_allclose([p["probability"] for p in got["predictions"]], probs[order], atol=1e-5)
    images = after["images"] - before["images"]
    passes = after["forward_passes"] - before["forward_passes"]
    assert images == len(pictures) and passes < images and after["largest_batch"] > 1


def test_batching_off_is_one_forward_pass_per_image(exported_model, pictures, tmp_path):
    with serving(exported_model, "--max-batch", "1", tmp_path=tmp_path) as one:
        answers = concurrent_answers(one.url, pictures[:8])
        assert all(a.status_code == 200 for a in answers)
        counts = health(one)["batching"]
    assert counts["images"] == counts["forward_passes"] == 8 and counts["largest_batch"] == 1


def test_torch_backend_serves_a_run_and_its_report(trained_run, pictures, tmp_path):
    with serving(trained_run, tmp_path=tmp_path) as running:
        card = httpx.get(running.url + "/model").json()
        assert card["backend"] == "torch" and card["report_url"] == "/report/report.html"
        report = httpx.get(running.url + card["report_url"])
        assert report.status_code == 200 and report.text == (trained_run / "report" / "report.html").read_text()
        assert httpx.get(running.url + "/report/", follow_redirects=True).text == report.text
        # The report folder is all it serves: nothing beside it in the run folder, however the path is spelled.
        for escape in ("/report/../best.pt", "/report/..%2fbest.pt", "/report/%2e%2e/config.json",
                       "/report/%2e%2e%2fhistory.json"):
            assert httpx.get(running.url + escape).status_code == 404, escape
        answer = raw(running.url, pictures[2])
    same(answer.json(), cli_predictions(trained_run / "best.pt", pictures[2])[0], pictures[2].name)


def test_sigterm_and_ctrl_c_stop_it_cleanly(exported_model, tmp_path):
    for sig in (signal.SIGTERM, signal.SIGINT):
        with serving(exported_model, tmp_path=tmp_path) as running:
            assert running.stop(sig) == 0
        assert "Traceback" not in running.stderr
        assert "stopped" in running.stdout


def test_it_listens_on_loopback_unless_told(exported_model, tmp_path):
    with serving(exported_model, tmp_path=tmp_path) as running:
        assert running.url.startswith("http://127.0.0.1:")
        port = running.url.rsplit(":", 1)[1]
        taken = run_cli("serve", exported_model, "--port", port)
    assert taken.returncode == 2 and taken.stderr.count("\n") == 1 and f"127.0.0.1:{port}" in taken.stderr


def test_a_missing_model_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "alexnet", "serve", str(tmp_path / "nope")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "nope" in result.stderr
