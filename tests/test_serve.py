"""`alexnet serve` through a real server process on a free loopback port, as clients use it."""

from __future__ import annotations

import base64
import contextlib
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

import alexnet
from alexnet.runtime import load_classifier
from conftest import CLASSES, red_square_image, run_cli, serving

# Small limits, so that the refusals cost little to provoke.
LIMITS = ["--max-image-bytes", "200000", "--max-pixels", "1000000", "--max-request-bytes", "300000"]


@contextlib.contextmanager
def batching_service(model: Path, tmp_path: Path):
    """`model` served with batches of up to 16, 50 ms of waiting and the small LIMITS."""
    with serving(model, "--max-batch", "16", "--max-wait-ms", "50", *LIMITS, tmp_path=tmp_path) as running:
        yield running


def module_service(model: Path, tmp_path_factory, name: str):
    """`model` served by batching_service for a whole test module."""
    with batching_service(model, tmp_path_factory.mktemp(name)) as running:
        yield running


@pytest.fixture(scope="module")
def service(exported_model, tmp_path_factory):
    yield from module_service(exported_model, tmp_path_factory, "serve")


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


# ---------------------------------------------------------------------------------------------------------------
# POST /explain: the same uploads and limits as /predict, /predict's top-k and `alexnet explain`'s map.

def explained(url: str, path: Path, **params) -> httpx.Response:
    kind = "image/jpeg" if path.suffix == ".jpg" else "image/png"
    return httpx.post(url + "/explain", params={"name": path.name, **params}, content=path.read_bytes(),
                      headers={"Content-Type": kind}, timeout=120)


def overlay_picture(answer: dict) -> Image.Image:
    head, _, data = answer["overlay"].partition(",")
    assert head == "data:image/png;base64"
    picture = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    assert picture.format == "PNG"
    return picture


def same_explanation(answer: dict, expected: dict, predicted: dict, path: Path, peaked: bool = True) -> None:
    """`answer` (from /explain) has /predict's top-k and the class, probability and heatmap of `alexnet.explain`."""
    assert set(answer) == {"image", "predictions", "class", "probability", "method", "heatmap", "overlay"}
    assert answer["image"] == path.name and answer["predictions"] == predicted["predictions"]
    assert answer["class"] == expected["class"] and answer["method"] == expected["method"]
    assert answer["probability"] == pytest.approx(expected["probability"], abs=1e-6)
    heatmap = np.array(answer["heatmap"])
    width, height = Image.open(path).size
    assert heatmap.shape == expected["heatmap"].shape == (height, width)
    assert np.abs(heatmap - expected["heatmap"]).max() <= 1e-6 and heatmap.max() == (1 if peaked else heatmap.max())
    assert overlay_picture(answer).size[0] >= width


@pytest.fixture(scope="module")
def onnx_classifier(red_export):
    return load_classifier(red_export, "onnx")


@pytest.fixture(scope="module")
def red_service(red_export, tmp_path_factory):
    """The hand-set `red_run` exported and served: hiding its red square is what moves its answer."""
    yield from module_service(red_export, tmp_path_factory, "serve-red")


@pytest.fixture(scope="module")
def red_pictures(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("red-pictures")
    png = red_square_image(root / "wide.png", 64, 48, (40, 4, 52, 16))
    Image.open(red_square_image(root / "tall.png", 36, 54, (4, 30, 16, 42))).save(root / "tall.jpg", quality=95)
    return [png, root / "tall.jpg"]


def test_explain_answers_predicts_top_k_and_the_heatmap_of_alexnet_explain(red_service, onnx_classifier,
                                                                           red_pictures):
    service, chosen = red_service, red_pictures  # a PNG and a JPEG
    expected = alexnet.explain(onnx_classifier, chosen, method="occlusion", top_k=5)
    for path, want in zip(chosen, expected):
        answer = explained(service.url, path)  # occlusion: the onnx backend's default
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json", answer.text
        assert answer.json()["class"] == "cat"  # the red square's class, which hiding the square takes away
        same_explanation(answer.json(), want, raw(service.url, path).json(), path)
    # Several files: a list in their order, each what it gets alone; another class on request.
    files = [("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in chosen]
    many = httpx.post(service.url + "/explain", params={"target": "ship", "top_k": 2}, files=files, timeout=120)
    assert many.status_code == 200, many.text
    ships = alexnet.explain(onnx_classifier, chosen, method="occlusion", target="ship")
    for got, want, path in zip(many.json(), ships, chosen):
        # Hiding the square raises "ship" (it takes "cat"'s share): no drop to map, the numbers must still agree.
        same_explanation(got, want, raw(service.url, path, top_k=2).json(), path, peaked=False)
        all_classes = raw(service.url, path, top_k=3).json()["predictions"]
        assert got["class"] == "ship" and got["probability"] == next(p["probability"] for p in all_classes
                                                                     if p["class"] == "ship")


def test_explain_can_leave_out_the_numbers_or_the_picture(service, pictures):
    full = explained(service.url, pictures[2]).json()
    picture_only = explained(service.url, pictures[2], heatmap="false").json()
    numbers_only = explained(service.url, pictures[2], overlay="0").json()
    assert "heatmap" not in picture_only and picture_only["overlay"] == full["overlay"]
    assert "overlay" not in numbers_only and numbers_only["heatmap"] == full["heatmap"]


EXPLAIN_BAD_REQUESTS = {
    **BAD_REQUESTS,
    "unknown method": (dict(content=jpeg_bytes(8, 8), headers=IMAGE, params={"method": "lime"}), 400,
                       "method must be one of gradcam, gradcam++, occlusion, got 'lime'"),
    "gradcam without gradients": (dict(content=jpeg_bytes(8, 8), headers=IMAGE, params={"method": "gradcam"}), 400,
                                  "use method=occlusion"),
    "gradcam++ without gradients": (dict(content=jpeg_bytes(8, 8), headers=IMAGE, params={"method": "gradcam++"}),
                                    400, "ONNX"),
    "unknown target": (dict(content=jpeg_bytes(8, 8), headers=IMAGE, params={"target": "horse"}), 400,
                       "target 'horse' is not a class of this model; its classes: cat, dog, ship"),
    "bad heatmap switch": (dict(content=jpeg_bytes(8, 8), headers=IMAGE, params={"heatmap": "maybe"}), 400,
                           "heatmap must be true or false"),
}


@pytest.mark.parametrize("case", list(EXPLAIN_BAD_REQUESTS))
def test_bad_explain_requests_are_4xx_json_sentences_and_the_next_is_served(service, pictures, case):
    kwargs, status, words = EXPLAIN_BAD_REQUESTS[case]
    answer = httpx.post(service.url + "/explain", timeout=60, **kwargs)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert list(body) == ["error"] and words in body["error"] and "\n" not in body["error"]
    good = explained(service.url, pictures[0], heatmap="false")
    assert good.status_code == 200 and good.json()["method"] == "occlusion"


def concurrent_explanations(url: str, paths: list[Path], **params) -> list[httpx.Response]:
    answers: list[httpx.Response | None] = [None] * len(paths)
    start = threading.Barrier(len(paths))

    def send(i: int) -> None:
        start.wait()
        answers[i] = explained(url, paths[i], **params)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return answers


def test_concurrent_occlusions_go_through_the_batcher_and_share_its_passes(service, pictures):
    chosen = pictures[8:11]
    alone = [explained(service.url, p, overlay="false").json() for p in chosen]
    before = health(service)["batching"]
    together = concurrent_explanations(service.url, chosen, overlay="false")
    after = health(service)["batching"]
    for answer, single in zip(together, alone):
        assert answer.status_code == 200 and answer.json() == single
    # Per image one pass for the prediction and 49 occluded copies (a 7 x 7 grid of 8 px patches, 4 px apart on
    # the 32 px input) in passes of at most --max-batch 16: 1 + 4 passes alone, fewer when the requests share.
    assert after["images"] - before["images"] == 3 * (1 + 49) and after["largest_batch"] <= 16
    assert after["forward_passes"] - before["forward_passes"] < 3 * (1 + 4)
    assert after["requests"] - before["requests"] == 3 and after["gradient_passes"] == 0


def test_explain_on_an_export_runs_without_torch(exported_model, pictures, tmp_path):
    with serving(exported_model, tmp_path=tmp_path, block_torch=True) as running:
        answer = explained(running.url, pictures[5])
        refused = explained(running.url, pictures[5], method="gradcam")
    assert running.proc.returncode == 0, running.stderr  # 3 if torch had been imported
    assert answer.status_code == 200 and answer.json()["method"] == "occlusion", answer.text
    assert refused.status_code == 400 and "method=occlusion" in refused.json()["error"]


def test_torch_backend_explains_with_gradcam_in_shared_gradient_passes(red_run, red_pictures, pictures, tmp_path):
    chosen = [red_pictures[0], *pictures[13:16]]
    expected = {"gradcam": alexnet.explain(red_run, chosen[:1], device="cpu")[0],
                "gradcam++": alexnet.explain(red_run, chosen[:1], method="gradcam++", target="dog",
                                             device="cpu")[0]}
    with serving(red_run, "--max-wait-ms", "200", tmp_path=tmp_path) as running:
        predicted = raw(running.url, chosen[0]).json()
        default = explained(running.url, chosen[0])  # gradcam: the torch backend's default
        plus = explained(running.url, chosen[0], method="gradcam++", target="dog")
        before = health(running)["batching"]
        together = concurrent_explanations(running.url, chosen, heatmap="false")
        after = health(running)["batching"]
    for answer, method in ((default, "gradcam"), (plus, "gradcam++")):
        assert answer.status_code == 200, answer.text
        same_explanation(answer.json(), expected[method], predicted, chosen[0])
    assert all(a.status_code == 200 and a.json()["method"] == "gradcam" for a in together)
    # Four concurrent requests: their gradient passes are batched together, not one per request.
    assert after["gradient_passes"] - before["gradient_passes"] < len(chosen)
