"""Hostile images for the fault suite (faults_input.py): named files with a known right answer, and seeded
random damage to valid JPEG, PNG, GIF, WebP and TIFF files.

Each is decoded in a worker process with a per-decode timeout, by path (`load_rgb`, as `alexnet predict` and
streamed folders do) and by bytes (`decode_square`, as archives and in-memory folders do). A trial survives
when every decode gives an RGB uint8 image (the right one, where known) or one AlexnetError line naming the
file; another exception, a hang or a dead worker fails it.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

DECODE_TIMEOUT_S = 20.0


def _png_raw(width: int, height: int, rows: bytes, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG written by hand (valid CRCs) that may declare any size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _close(pixel, colour, tol: int = 40) -> bool:
    return all(abs(int(a) - b) <= tol for a, b in zip(pixel, colour))


def image_cases() -> list[dict]:
    """Named hostile files: bytes, file name, and either the fragment a refusal must say or a check of the
    32 x 32 RGB result."""
    noise = Image.effect_noise((64, 64), 60).convert("RGB")
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (16, 0, 32, 32))
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32], stored[:, 32:] = (255, 0, 0), (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: red on top, blue below
    sliver = np.zeros((1, 3_000_000, 3), np.uint8)
    sliver[:, :1_000_000], sliver[:, 1_000_000:] = (255, 0, 0), (0, 255, 0)
    grey16 = Image.fromarray(np.full((32, 32), 257 * 100, np.uint16))
    return [
        dict(case="truncated JPEG", name="cut.jpg", data=_encode(noise, "JPEG")[:400], says="truncated"),
        dict(case="0-byte file", name="empty.jpg", data=b"", says="not a recognised image file"),
        dict(case="text file named .jpg", name="notes.jpg", data=b"not a picture\n" * 20,
             says="not a recognised image file"),
        dict(case="ICO file named .jpg (format not accepted)", name="icon.jpg",
             data=_encode(Image.new("RGB", (16, 16)), "ICO"), says="accepted formats"),
        dict(case="pixel bomb: 130-byte PNG declaring 100000x100000", name="bomb.png",
             data=_png_raw(100_000, 100_000, b"\0" * 64), says="ALEXNET_MAX_IMAGE_PIXELS"),
        dict(case="pixel bomb: PNG declaring 10000x10000 (Pillow only warns)", name="bomb2.png",
             data=_png_raw(10_000, 10_000, b"\0" * 64), says="ALEXNET_MAX_IMAGE_PIXELS"),
        dict(case="CMYK JPEG", name="cmyk.jpg", data=_encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"),
             check=lambda a: _close(a[16, 16], (255, 0, 0), 60)),
        dict(case="16-bit greyscale PNG", name="grey16.png", data=_encode(grey16, "PNG"),
             check=lambda a: (a == 100).all()),
        dict(case="16-bit RGB PNG", name="rgb16.png",
             data=_png_raw(1, 1, b"\0" + struct.pack(">HHH", 0x1234, 0xABCD, 0xFFFF), depth=16),
             check=lambda a: (a == (0x12, 0xAB, 0xFF)).all()),
        dict(case="palette PNG with a transparent index", name="palette.png",
             data=_encode(palette, "PNG", transparency=0),
             check=lambda a: (a[:, :16] == 255).all() and (a[:, 16:] == (0, 255, 0)).all()),
        dict(case="animated GIF (first frame)", name="anim.gif",
             data=_encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0),
             check=lambda a: (a == (255, 0, 0)).all()),
        dict(case="animated WebP (first frame)", name="anim.webp",
             data=_encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=40, lossless=True),
             check=lambda a: (a == (255, 0, 0)).all()),
        dict(case="EXIF-rotated JPEG", name="rotated.jpg",
             data=_encode(Image.fromarray(stored), "JPEG", exif=exif, quality=95),
             check=lambda a: _close(a[4, 16], (255, 0, 0)) and _close(a[28, 16], (0, 0, 255))),
        dict(case="1 x 3,000,000 sliver (centre square)", name="sliver.png",
             data=_encode(Image.fromarray(sliver), "PNG"), check=lambda a: (a == (0, 255, 0)).all()),
        dict(case="FIFO named .jpg", name="pipe.jpg", data=None, says="not a regular file"),
    ]


def _decode_worker(conn, stderr_path: str) -> None:
    """Decode what the parent sends: ("bytes", name, data) by decode_square, ("path", path, _) by load_rgb.
    What the C libraries print (libtiff warns about damaged strips on its own) goes to ``stderr_path``."""
    import traceback

    log = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 2)

    from alexnet.data.images import decode_square, fit_square, load_rgb
    from alexnet.errors import AlexnetError

    while True:
        job = conn.recv()
        if job is None:
            return
        kind, name, data = job
        try:
            out = decode_square(data, 32, name) if kind == "bytes" else fit_square(load_rgb(name), 32)
            conn.send(("ok", np.asarray(out)))
        except AlexnetError as exc:
            conn.send(("error", type(exc).__name__, str(exc)))
        except BaseException as exc:  # noqa: BLE001 - exactly what the suite is looking for
            conn.send(("other", type(exc).__name__, traceback.format_exc()[-1500:]))


class Decoder:
    """A worker process that decodes one image at a time; a decode that outlasts the timeout (a hang) or
    kills the worker (a crash) is reported as such and the worker replaced."""

    def __init__(self, stderr_path: Path, timeout: float = DECODE_TIMEOUT_S):
        self.timeout, self.context, self.proc, self.conn = timeout, multiprocessing.get_context("spawn"), None, None
        self.stderr_path = stderr_path
        stderr_path.touch()

    def stderr_lines(self) -> int:
        """Lines the decoders have printed on stderr so far (they would reach a user's terminal)."""
        return len(self.stderr_path.read_text(errors="replace").splitlines())

    def _start(self) -> None:
        self.conn, child = self.context.Pipe()
        self.proc = self.context.Process(target=_decode_worker, args=(child, str(self.stderr_path)), daemon=True)
        self.proc.start()
        child.close()

    def decode(self, kind: str, name: str, data: bytes | None) -> tuple:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send((kind, name, data))
        if not self.conn.poll(self.timeout):
            self.close(kill=True)
            return ("hang", f"no answer in {self.timeout:.0f} s")
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            code = self.proc.exitcode
            self.close(kill=True)
            return ("crash", f"the decoding process died (exit {code})")

    def close(self, kill: bool = False) -> None:
        if self.proc is not None:
            if kill:
                self.proc.kill()
            else:
                try:
                    self.conn.send(None)
                except OSError:
                    pass
            self.proc.join(10)
        self.proc = self.conn = None


def _judge(result: tuple, name: str, says: str | None = None, check=None) -> str:
    """'' when the outcome is a defined one, else why not."""
    if result[0] == "ok":
        a = result[1]
        if a.shape != (32, 32, 3) or a.dtype != np.uint8:
            return f"{name}: gave {a.dtype} {a.shape}"
        if says is not None:
            return f"{name}: decoded, but should be refused ({says})"
        if check is not None and not check(a):
            return f"{name}: decoded to the wrong pixels (centre {a[16, 16].tolist()})"
        return ""
    if result[0] == "error":
        text = result[2]
        if "\n" in text or name not in text:
            return f"{name}: error is not one line naming the file: {text!r}"
        if check is not None:
            return f"{name}: refused, but should decode: {text}"
        if says is not None and says not in text:
            return f"{name}: refusal does not say {says!r}: {text}"
        return ""
    return f"{name}: {result[0]}: {' '.join(map(str, result[1:]))[-300:]}"


def named_rows(decoder: Decoder, folder: Path) -> list[dict]:
    rows = []
    for case in image_cases():
        path = folder / case["name"]
        if case["data"] is None:
            os.mkfifo(path)
        else:
            path.write_bytes(case["data"])
        digest = None if case["data"] is None else hashlib.sha256(path.read_bytes()).hexdigest()
        trials = [("path", str(path), None)] + ([] if case["data"] is None else [("bytes", case["name"], case["data"])])
        problems = [_judge(decoder.decode(*t), t[1], case.get("says"), case.get("check")) for t in trials]
        lost = digest is not None and hashlib.sha256(path.read_bytes()).hexdigest() != digest
        problems = [p for p in problems if p]
        rows.append({"case": f"image: {case['case']}", "trials": len(trials),
                     "survived": len(trials) - len(problems) - (1 if lost else 0), "data_lost": int(lost),
                     "detail": "; ".join(problems) or ("refused: " + case["says"] if case.get("says") else "decoded right")})
    return rows


def _damage(data: bytes, rng: np.random.Generator) -> bytes:
    """A few overwritten bytes (headers included), then maybe a cut, an inserted run or a dropped one."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        out[int(rng.integers(0, len(out)))] = int(rng.integers(0, 256))
    roll = rng.random()
    if roll < 0.25:
        out = out[: int(rng.integers(0, len(out)))]
    elif roll < 0.4:
        at = int(rng.integers(0, len(out)))
        out[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif roll < 0.5:
        at = int(rng.integers(0, len(out)))
        del out[at: at + int(rng.integers(1, 64))]
    return bytes(out)


def mutation_rows(decoder: Decoder, folder: Path, trials: int, seed: int) -> list[dict]:
    rng0 = np.random.default_rng(seed)
    picture = Image.fromarray(rng0.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    seeds = {"JPEG": _encode(picture, "JPEG", quality=85), "PNG": _encode(picture, "PNG"),
             "GIF": _encode(picture, "GIF"), "WEBP": _encode(picture, "WEBP", quality=80),
             "TIFF": _encode(picture, "TIFF", compression="tiff_lzw")}
    rows = []
    for k, (fmt, data) in enumerate(seeds.items()):
        rng = np.random.default_rng([seed, k])
        survived, problems, outcomes = 0, [], {"decoded": 0, "refused": 0}
        printed = decoder.stderr_lines()
        for i in range(trials):
            damaged = _damage(data, rng)
            name = f"damaged-{fmt.lower()}-{i}.{fmt.lower()}"
            (folder / name).write_bytes(damaged)
            results = [decoder.decode("bytes", name, damaged), decoder.decode("path", str(folder / name), None)]
            why = [w for w in (_judge(results[0], name), _judge(results[1], str(folder / name))) if w]
            survived += not why
            problems += why
            outcomes["decoded" if results[0][0] == "ok" else "refused"] += 1
        printed = decoder.stderr_lines() - printed
        noise = f"; the C decoders printed {printed} warning lines on stderr" if printed else ""
        rows.append({"case": f"image: random damage to {fmt} files", "trials": trials, "survived": survived,
                     "data_lost": 0, "detail": "; ".join(problems[:3]) or
                     f"{outcomes['decoded']} decoded, {outcomes['refused']} refused in one line{noise}"})
    return rows


_PIXEL_PROBE = r"""
import resource, sys
from alexnet.data.images import load_rgb
from alexnet.errors import AlexnetError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_rgb(sys.argv[1])
    code = 0
except AlexnetError as exc:
    print(f"alexnet predict: error: {exc}", file=sys.stderr)
    code = 2
print(round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, 1))
sys.exit(code)
"""


def pixel_bomb_row(folder: Path) -> dict:
    """The pixel bomb in a fresh process: exit 2, one stderr line (Pillow's warning is not printed), flat memory."""
    path = folder / "fresh-bomb.png"
    path.write_bytes(_png_raw(10_000, 10_000, b"\0" * 64))
    proc = subprocess.run([sys.executable, "-c", _PIXEL_PROBE, str(path)], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    rss = float(proc.stdout.strip() or "nan")
    ok = (proc.returncode == 2 and len(lines) == 1 and "ALEXNET_MAX_IMAGE_PIXELS" in lines[0] and str(path) in lines[0]
          and rss < 32)
    return {"case": "image: pixel bomb in a fresh process (stderr, memory)", "trials": 1, "survived": int(ok),
            "data_lost": 0, "detail": f"{'one line' if ok else proc.stderr.strip()[-300:]} [peak memory +{rss:.0f} MB]"}
