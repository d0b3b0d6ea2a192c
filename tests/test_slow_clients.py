"""Slow and stalled clients against a real `alexnet serve` on loopback: they are dropped on time, and they never keep
another client's request from being answered. Past the service's limits on work, the answer is 503 at once.

The attack is the one that took the service down while uvicorn's limit_concurrency counted connections: 300
connections that send part of a request's headers and wait, and 100 that send a whole request's headers with
Content-Length: 100000 and 10 bytes of body, then stall.
"""

from __future__ import annotations

import io
import selectors
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from alexnet.cli import main
from conftest import serving

SLOW_HEADERS, STALLED_UPLOADS = 300, 100
DECLARED = 100_000  # the stalled uploads' Content-Length
IMAGE = {"Content-Type": "image/jpeg"}
# The parts of a request the slow-header connections send, then nothing more: cut inside the request line,
# inside a header name, inside a value, and after a whole header line.
PARTIAL_HEADERS = [b"POST /predi", b"POST /predict HTTP/1.1\r\nHo", b"POST /predict HTTP/1.1\r\nHost: local",
                   b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"]
# RSS may grow by less than this while the 400 connections are open: 64 KiB a connection, the size of the body
# buffer uvicorn lets one request fill before it stops reading. What they hold is less: the slow-header ones
# under 100 bytes each (16 KiB at most, the protocol's cap), the stalled uploads 10 bytes each (a declared length
# reserves nothing), plus each connection's state (transport, parser; for an upload uvicorn's request cycle and
# the application's task): 4.0-5.1 MB in all in the runs measured, after a warm-up request.
RSS_GROWTH_MB = 400 * 64 / 1024


def jpeg(side: int, seed: int = 0, quality: int = 90) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> bytes:
    return jpeg(64)


@pytest.fixture(scope="module")
def big_photo() -> bytes:
    """A real JPEG of about 100 kB."""
    data = jpeg(300, seed=1, quality=95)
    assert 100_000 < len(data) < 120_000, len(data)
    return data


@pytest.fixture(scope="module")
def patient(exported_model, tmp_path_factory):
    """The service with its default timeouts (10 s) and limits."""
    with serving(exported_model, tmp_path=tmp_path_factory.mktemp("patient")) as running:
        yield running


@pytest.fixture(scope="module")
def strict(exported_model, tmp_path_factory):
    """Short timeouts, so that the drops are seen within seconds."""
    with serving(exported_model, "--header-timeout", "2", "--body-timeout", "2",
                 tmp_path=tmp_path_factory.mktemp("strict")) as running:
        yield running


def health(service) -> dict:
    return httpx.get(service.url + "/health", timeout=10).json()


def address(service) -> tuple[str, int]:
    parts = urlsplit(service.url)
    return parts.hostname, parts.port


def connect(service) -> socket.socket:
    return socket.create_connection(address(service), timeout=10)


def upload_head(length: int, path: str = "/predict") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def attack(service) -> tuple[list[socket.socket], list[float]]:
    """The 300 slow-header and 100 stalled-upload connections, and when each was opened (time.monotonic)."""
    socks, opened = [], []
    for i in range(SLOW_HEADERS + STALLED_UPLOADS):
        opened.append(time.monotonic())
        s = connect(service)
        s.sendall(PARTIAL_HEADERS[i % len(PARTIAL_HEADERS)] if i < SLOW_HEADERS
                  else upload_head(DECLARED) + b"\xff\xd8\xff\xe0\x00\x10JFIF")  # 10 bytes of a JPEG
        socks.append(s)
    return socks, opened


def wait_closed(socks: list[socket.socket], timeout: float) -> tuple[list[float | None], list[bytes]]:
    """When (time.monotonic) the server closed each socket, None if it did not within `timeout` s, and what it
    sent before closing."""
    closed: list[float | None] = [None] * len(socks)
    received = [b""] * len(socks)
    with selectors.DefaultSelector() as sel:
        for i, s in enumerate(socks):
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
        deadline = time.monotonic() + timeout
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                i = key.data
                try:
                    data = socks[i].recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionError:  # reset: closed too
                    data = b""
                if data:
                    received[i] += data
                else:
                    closed[i] = time.monotonic()
                    sel.unregister(socks[i])
    return closed, received


def timed_predict(service, body: bytes, client: httpx.Client | None = None) -> tuple[httpx.Response, float]:
    """POST /predict, on a new connection unless `client` is given, and its seconds."""
    start = time.perf_counter()
    answer = (client or httpx).post(service.url + "/predict", content=body, headers=IMAGE, timeout=30)
    return answer, time.perf_counter() - start


def test_400_slow_and_stalled_connections_do_not_delay_a_good_request(patient, photo):
    assert timed_predict(patient, photo)[0].status_code == 200  # the first request's allocations are not the attack's
    before = health(patient)
    socks, _ = attack(patient)
    try:
        time.sleep(0.3)  # the server takes them all in
        during = health(patient)
        answers = [timed_predict(patient, photo) for _ in range(3)]
        after = health(patient)
    finally:
        for s in socks:
            s.close()
    latencies = [seconds for _, seconds in answers]
    print(f"\ngood requests during the attack: {', '.join(f'{s * 1000:.1f} ms' for s in latencies)}; "
          f"RSS {before['rss_mb']} MB before, {after['rss_mb']} MB with the 400 connections open "
          f"(+{after['rss_mb'] - before['rss_mb']:.1f} MB); connections open {during['connections']['open']}")
    assert all(answer.status_code == 200 for answer, _ in answers), [a.text for a, _ in answers]
    assert "Traceback" not in patient.stderr and "Exceeded concurrency" not in patient.stderr, patient.stderr
    assert all(len(answer.json()["predictions"]) == 3 for answer, _ in answers)
    assert max(latencies) < 1.0, latencies
    # The attack was open all along (the default timeouts are 10 s): every one of its connections, and /health's.
    for counts in (during, after):
        assert counts["connections"]["open"] >= SLOW_HEADERS + STALLED_UPLOADS + 1, counts["connections"]
        assert counts["connections"]["header_timeouts"] == counts["connections"]["body_timeouts"] == 0
    assert during["work"]["in_flight"] == 0 and during["work"]["refused"] == 0  # waiting sockets are no work
    assert during["work"]["body_bytes"] == STALLED_UPLOADS * 10  # what the stalled uploads hold, no more
    assert after["rss_mb"] - before["rss_mb"] < RSS_GROWTH_MB


def test_the_server_closes_slow_and_stalled_connections_on_time(strict, photo):
    timeout = 2.0
    before = health(strict)
    socks, opened = attack(strict)
    # A keep-alive connection: one request answered, then the next one's headers begun and left.
    kept = connect(strict)
    kept.sendall(upload_head(len(photo)) + photo)
    answer = read_answer(kept)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    answered_at = time.monotonic()
    kept.sendall(b"GET /health HTTP/1.1\r\nHo")
    # A request refused (415) before its body was read; once the body is in, the next request's headers are left.
    refused = connect(strict)
    refused.sendall(b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: 20000\r\n\r\n")
    answer = read_answer(refused)
    assert answer.startswith(b"HTTP/1.1 415 "), answer
    refused.sendall(b"x" * 20_000 + b"GET /health HTTP/1.1\r\n")
    refused_at = time.monotonic()
    # Headers that never end, past the 16 KiB cap: refused without waiting for the timeout.
    endless = connect(strict)
    endless.sendall(b"GET / HTTP/1.1\r\n" + b"X-Padding: " + b"a" * 20_000)
    try:
        good, seconds = timed_predict(strict, photo)  # while they are open
        closed, received = wait_closed([*socks, kept, refused, endless], timeout + 4)
    finally:
        for s in [*socks, kept, refused, endless]:
            s.close()
    after = health(strict)
    assert good.status_code == 200 and seconds < 1.0, (good.text, seconds)
    assert None not in closed, f"{closed.count(None)} connections still open after {timeout + 4} s"
    # Each closed when its time was up: 2 s after it opened, or after the previous answer (or body) on the last two.
    waited = [end - start for end, start in zip(closed, [*opened, answered_at, refused_at])]
    slowest = max(waited[:-1])
    print(f"\nclosed after {min(waited[:-1]):.2f}-{slowest:.2f} s (--header-timeout/--body-timeout 2); "
          f"the good request meanwhile: {seconds * 1000:.1f} ms; the over-long headers after "
          f"{closed[-1] - answered_at:.2f} s")
    assert all(timeout - 0.1 < w < timeout + 3 for w in waited[:-1]), waited
    assert closed[-1] - answered_at < timeout - 0.5  # the 431 does not wait for the timer
    # What they were told: 408 with a sentence for the requests begun, 431 for the headers over the cap.
    for data in received[:-1]:
        assert data.startswith(b"HTTP/1.1 408 ") and b'{"error": "the request' in data, data
    assert received[-1].startswith(b"HTTP/1.1 431 "), received[-1]
    counts = {k: after["connections"][k] - before["connections"][k]
              for k in ("header_timeouts", "body_timeouts", "headers_too_large")}
    assert counts == {"header_timeouts": SLOW_HEADERS + 2, "body_timeouts": STALLED_UPLOADS, "headers_too_large": 1}
    assert after["connections"]["open"] == 1 and after["work"]["body_bytes"] == 0  # /health's own
    assert "Traceback" not in strict.stderr, strict.stderr  # the uploads' handlers saw the drop as a disconnect


def read_answer(s: socket.socket) -> bytes:
    """One HTTP answer (status line, headers and a Content-Length body), or what came before the server closed."""
    answer = b""
    while True:
        head, _, rest = answer.partition(b"\r\n\r\n")
        if _:
            length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                           if line.startswith(b"content-length:")), 0)
            if len(rest) >= length:
                return answer
        try:
            data = s.recv(65536)
        except ConnectionError:
            return answer
        if not data:
            return answer
        answer += data


def test_a_keep_alive_connection_in_use_outlives_the_header_timeout(strict, photo):
    with httpx.Client() as client:  # one connection, a request every 0.4 s for 5 s: over twice --header-timeout 2
        answers, ports = [], set()
        for _ in range(12):
            answers.append(timed_predict(strict, photo, client)[0])
            ports.add(answers[-1].extensions["network_stream"].get_extra_info("client_addr"))
            time.sleep(0.4)
    assert all(a.status_code == 200 for a in answers) and len(ports) == 1


def send_paced(service, body: bytes, chunk: int, interval: float, stop_after: int | None = None) -> dict:
    """Upload `body` in `chunk`-byte pieces, one every `interval` s (only its first `stop_after` bytes, if given),
    then read the answer: what came back, and how long after the headers it came."""
    s = connect(service)
    s.settimeout(30)
    s.sendall(upload_head(len(body)))
    start, sent = time.monotonic(), 0
    end = len(body) if stop_after is None else stop_after
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(s, selectors.EVENT_READ)
            while sent < end and not sel.select(0):  # stop once the server answers or closes
                try:
                    s.sendall(body[sent:sent + chunk])
                except ConnectionError:
                    break
                sent += chunk
                if sent < end:
                    time.sleep(interval)
        answer = read_answer(s)
    finally:
        s.close()
    return {"answer": answer, "seconds": time.monotonic() - start, "sent": min(sent, len(body))}


def test_a_slow_upload_above_the_minimum_rate_is_served_and_a_trickle_or_stall_is_cut(strict, big_photo):
    jobs = {  # --body-timeout 2, --min-upload-rate 1024 (the default)
        "steady": dict(body=big_photo, chunk=2_000, interval=0.1),  # ~20 kB/s: over 5 s for 100 kB
        "trickle": dict(body=big_photo, chunk=100, interval=0.25),  # 400 B/s: below the rate
        "burst then stall": dict(body=big_photo, chunk=50_000, interval=0, stop_after=50_000),  # half, then none
    }
    results: dict[str, dict] = {}
    threads = [threading.Thread(target=lambda k=k, kw=kw: results.__setitem__(k, send_paced(strict, **kw)))
               for k, kw in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    steady, trickle, stalled = results["steady"], results["trickle"], results["burst then stall"]
    print(f"\nsteady {steady['sent']:,} B in {steady['seconds']:.1f} s: {steady['answer'][:12]!r}; trickle cut "
          f"after {trickle['seconds']:.1f} s and {trickle['sent']:,} B; burst of {stalled['sent']:,} B then a stall: "
          f"cut after {stalled['seconds']:.1f} s")
    assert steady["answer"].startswith(b"HTTP/1.1 200 ") and steady["seconds"] > 4, steady
    # 400 B/s earns 0.39 s of credit a second: out of it when t = 2 + 0.39 t, at about 3.3 s.
    assert trickle["answer"].startswith(b"HTTP/1.1 408 ") and 2.5 < trickle["seconds"] < 6, trickle
    assert trickle["sent"] < len(big_photo) // 4
    # 50 kB at once is worth 49 s at 1024 B/s, but credit is capped at the timeout: cut 2 s into the stall.
    assert stalled["answer"].startswith(b"HTTP/1.1 408 ") and 1.8 < stalled["seconds"] < 5, stalled


@pytest.fixture(scope="module")
def busy(exported_model, tmp_path_factory):
    """One request at a time, each waiting 200 ms for others to batch with; 300 kB of bodies in memory at most;
    12 connections open at most."""
    with serving(exported_model, "--max-in-flight", "1", "--max-wait-ms", "200", "--max-image-bytes", "300000",
                 "--max-request-bytes", "300000", "--max-buffered-bytes", "300000", "--max-connections", "12",
                 tmp_path=tmp_path_factory.mktemp("busy")) as running:
        yield running


def test_work_past_max_in_flight_is_a_prompt_503(busy, photo):
    n = 8
    answers: list[tuple[httpx.Response, float] | None] = [None] * n
    start = threading.Barrier(n)

    def send(i: int) -> None:
        start.wait()
        answers[i] = timed_predict(busy, photo, client)

    with httpx.Client(limits=httpx.Limits(max_connections=n)) as client:  # its connections open once, beforehand
        threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert all(a is not None for a in answers), "a request hung"
    codes = sorted(a.status_code for a, _ in answers)
    refused = [(a, s) for a, s in answers if a.status_code == 503]
    print(f"\n{n} concurrent requests, --max-in-flight 1: " + ", ".join(
        f"{a.status_code} in {s * 1000:.0f} ms" for a, s in sorted(answers, key=lambda x: x[1])))
    assert set(codes) == {200, 503} and refused
    for answer, seconds in refused:
        assert answer.headers["retry-after"] == "1" and "retry" in answer.json()["error"]
        assert seconds < 2.0
    counts = health(busy)["work"]
    assert counts["refused_busy"] >= len(refused) and counts["in_flight"] == 0
    # Once it is free again, the next request is served.
    assert timed_predict(busy, photo)[0].status_code == 200


def test_bodies_past_the_memory_budget_are_a_prompt_503(busy, photo, big_photo):
    held = connect(busy)
    try:
        held.sendall(upload_head(280_000) + b"\0" * 250_000)  # 250 kB held of the budget's 300 kB
        deadline = time.monotonic() + 10
        while health(busy)["work"]["body_bytes"] < 250_000:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused, seconds = timed_predict(busy, big_photo)  # 100 kB more: over
        small = timed_predict(busy, photo)[0]  # a few kB: fits
    finally:
        held.close()
    assert refused.status_code == 503 and seconds < 1.0 and refused.headers["retry-after"] == "1"
    assert "300,000" in refused.json()["error"], refused.text
    assert small.status_code == 200, small.text
    deadline = time.monotonic() + 10
    while health(busy)["work"]["body_bytes"]:  # the closed upload's bytes are let go
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert timed_predict(busy, big_photo)[0].status_code == 200
    assert health(busy)["work"]["refused_memory"] >= 1


def test_connections_past_max_connections_are_closed_at_once(busy, photo):
    idle = [connect(busy) for _ in range(11)]
    try:
        deadline = time.monotonic() + 10
        while health(busy)["connections"]["open"] < 12:  # the eleven and /health's own
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # /health's connection closes
        idle.append(connect(busy))
        extra = connect(busy)  # the 13th
        answer = read_answer(extra)
        extra.close()
    finally:
        for s in idle:
            s.close()
    assert answer.startswith(b"HTTP/1.1 503 ") and b"12 connections" in answer
    assert b"retry-after: 1\r\n" in answer and b"connection: close\r\n" in answer
    deadline = time.monotonic() + 10
    while (counts := health(busy)["connections"])["open"] > 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert counts["refused"] == 1 and counts["limit"] == 12
    assert timed_predict(busy, photo)[0].status_code == 200


@pytest.mark.parametrize("flags, words", [
    (["--header-timeout", "0"], "--header-timeout must be a finite number > 0, got 0"),
    (["--header-timeout", "soon"], "argument --header-timeout: invalid float value: 'soon'"),
    (["--body-timeout", "-1"], "--body-timeout must be a finite number > 0, got -1"),
    (["--body-timeout", "nan"], "--body-timeout must be a finite number > 0, got nan"),
    (["--min-upload-rate", "-5"], "--min-upload-rate must be a finite number >= 0, got -5"),
    (["--min-upload-rate", "inf"], "--min-upload-rate must be a finite number >= 0, got inf"),
    (["--max-in-flight", "0"], "argument --max-in-flight: must be >= 1, got 0"),
    (["--max-connections", "-2"], "argument --max-connections: must be >= 1, got -2"),
    (["--max-buffered-bytes", "1000"], "--max-buffered-bytes (1,000) must be at least --max-request-bytes"),
])
def test_a_bad_flag_is_one_line_naming_it(flags, words, tmp_path, capsys):
    try:
        code = main(["serve", str(tmp_path / "no-model"), *flags])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and words in err, err
