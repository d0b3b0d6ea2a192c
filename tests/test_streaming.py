"""The streaming image-folder pipeline: crops, ten-crop, determinism, sharding, lighting, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import alexnet.data.lighting as lighting_module
from alexnet.data.folder import scan_folder
from alexnet.data.images import load_rgb
from alexnet.data.lighting import LightingPCA, color_stats, dataset_mean_std
from alexnet.data.memory import BatchLoader, Normalizer
from alexnet.data.streaming import StreamingLoader, random_resized_box, resize_shorter
from alexnet.errors import AlexnetError

CPU = torch.device("cpu")
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
SIZES = [(80, 60), (50, 90), (64, 64), (90, 50), (60, 80), (70, 70)]  # (width, height)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """3 classes x 6 images of mixed sizes and formats; class c has a bright channel c."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["ant", "bee", "cow"]):
        (root / "train" / name).mkdir(parents=True)
        for i, (w, h) in enumerate(SIZES):
            pixels = rng.integers(0, 100, (h, w, 3), dtype=np.uint8)
            pixels[..., c] += 130
            suffix = "png" if i % 2 else "jpg"
            Image.fromarray(pixels).save(root / "train" / name / f"{i}.{suffix}", quality=95)
    return root


@pytest.fixture(scope="module")
def data(folder) -> tuple[list[Path], list[int]]:
    return scan_folder(folder).splits["train"]


def make(data, *, train=True, batch_size=4, image_size=32, workers=0, **kw) -> StreamingLoader:
    paths, labels = data
    kw.setdefault("resize", 40)
    return StreamingLoader(paths, labels, batch_size, train=train, image_size=image_size, mean=MEAN, std=STD,
                           device=CPU, workers=workers, **kw)


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: back to 0..255 units."""
    return x * 0.25 * 255 + 0.5 * 255


def indices(loader) -> list[list[int]]:
    """The sample indices of each batch (for loaders given labels 0..N-1)."""
    return [y.tolist() for _, y in loader]


def batches(loader: StreamingLoader, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_training_batches_are_normalised_channels_last_with_the_right_labels(data):
    loader = make(data)
    out = batches(loader)
    assert len(loader) == len(out) == 18 // 4  # the partial last batch is dropped
    for x, y in out:
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last)
        raw = pixels(x)
        assert raw.min() > -0.01 and raw.max() < 255.01
        # The bright channel survives any crop: it names the class.
        assert torch.equal(raw.mean(dim=(2, 3)).argmax(1), y)
    seen = torch.cat([y for _, y in out])
    assert torch.equal(seen, torch.tensor(data[1])[torch.cat(loader._shares(loader._global_batches()))])


def test_eval_is_the_deterministic_centre_crop_of_the_resized_image(data):
    loader = make(data, train=False, batch_size=5)
    first, second = batches(loader, 0), batches(loader, 3)
    assert len(loader) == len(first) == 4 and first[-1][0].shape == (3, 3, 32, 32)  # eval keeps all 18
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(torch.cat([y for _, y in first]), torch.tensor(data[1]))
    img = resize_shorter(load_rgb(data[0][0]), 40)  # 80x60 -> 53x40
    left, top = round((img.size[0] - 32) / 2), round((img.size[1] - 32) / 2)
    ref = torch.from_numpy(np.asarray(img.crop((left, top, left + 32, top + 32)), dtype=np.float32)).permute(2, 0, 1)
    assert torch.allclose(pixels(first[0][0][0]), ref, atol=1e-3)


def test_ten_crop_gives_five_views_and_their_mirrors(data):
    x, y = next(iter(make(data, train=False, ten_crop=True)))
    assert x.shape == (4, 10, 3, 32, 32) and y.shape == (4,)
    assert torch.equal(x[:, 5:], x[:, :5].flip(-1))
    centre, _ = next(iter(make(data, train=False)))
    assert torch.equal(x[:, 4], centre)
    flat = x.flatten(0, 1)  # what the evaluation loop feeds the model
    assert flat.shape == (40, 3, 32, 32) and flat.is_contiguous(memory_format=torch.channels_last)


def test_paper_crop_is_a_window_of_the_resized_image_possibly_mirrored(data):
    loader = make(data, crop="paper", image_size=24, resize=28, batch_size=3)
    x, _ = next(iter(loader))
    assert x.shape == (3, 3, 24, 24)
    index = int(loader._global_batches()[0][0])
    img = np.asarray(resize_shorter(load_rgb(data[0][index]), 28), dtype=np.float32)
    got = pixels(x[0]).permute(1, 2, 0)
    windows = [img[t:t + 24, l:l + 24] for t in range(img.shape[0] - 23) for l in range(img.shape[1] - 23)]
    assert any(np.allclose(got, w, atol=1e-3) or np.allclose(got, w[:, ::-1], atol=1e-3) for w in windows)


def test_same_seed_and_epoch_give_identical_batches_for_any_worker_count(data):
    pca = LightingPCA([0.05, 0.01, 0.001], np.eye(3).tolist())
    one = batches(make(data, workers=0, seed=7, lighting=pca), epoch=2)
    two = batches(make(data, workers=2, seed=7, lighting=pca), epoch=2)
    assert len(one) == len(two) == 4
    for (x1, y1), (x2, y2) in zip(one, two):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_a_different_epoch_or_seed_gives_a_different_order(data):
    ids = (data[0], list(range(18)))
    loader = make(ids, image_size=8)
    loader.set_epoch(0)
    first = indices(loader)
    assert indices(loader) == first  # the same epoch again: the same order
    loader.set_epoch(1)
    assert indices(loader) != first
    assert indices(make(ids, image_size=8, seed=1)) != first


def test_ranks_take_disjoint_strided_shares_like_batchloader(data):
    ids = (data[0], list(range(18)))
    shares = [make(ids, batch_size=4, image_size=8, rank=r, world_size=2) for r in range(2)]
    got = [indices(s) for s in shares]
    assert [len(s) for s in shares] == [len(g) for g in got] == [2, 2]  # 18 -> 2 global batches of 8
    assert all(len(b) == 4 for g in got for b in g)
    assert not {i for b in got[0] for i in b} & {i for b in got[1] for i in b}
    norm = Normalizer(MEAN, STD, 4, CPU)
    for rank in range(2):
        memory = BatchLoader(torch.zeros(18, 3, 4, 4, dtype=torch.uint8), torch.arange(18), 4, norm,
                             train=True, rank=rank, world_size=2)
        assert indices(memory) == got[rank]
        evaluation = BatchLoader(torch.zeros(18, 3, 4, 4, dtype=torch.uint8), torch.arange(18), 4, norm,
                                 train=False, rank=rank, world_size=2)
        assert indices(make(ids, train=False, image_size=8, rank=rank, world_size=2)) == indices(evaluation)
    small = make(data, batch_size=16, image_size=8, world_size=2)  # fewer samples than one global batch
    assert len(small) == 1 and next(iter(small))[0].shape[0] == 9


def test_ranks_see_exactly_what_one_process_sees_lighting_included(data):
    pca = LightingPCA([0.05, 0.01, 0.001], np.eye(3).tolist())
    whole = batches(make(data, batch_size=4, image_size=16, lighting=pca, seed=3), epoch=1)
    for rank in range(2):
        share = batches(make(data, batch_size=2, image_size=16, lighting=pca, seed=3, rank=rank, world_size=2), 1)
        assert len(share) == len(whole)
        for (xs, ys), (xw, yw) in zip(share, whole):
            assert torch.equal(ys, yw[rank::2]) and torch.allclose(xs, xw[rank::2])


def test_random_resized_box_stays_inside_and_falls_back_to_the_centre():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = random_resized_box(80, 60, rng)
        assert 0 <= left and left + w <= 80 and 0 <= top and top + h <= 60 and w > 0 and h > 0
    # A strip no crop with aspect in [3/4, 4/3] can sample well: the centre fallback clamps the aspect.
    assert random_resized_box(1000, 10, np.random.default_rng(0), scale=(0.9, 1.0)) == (493, 0, 13, 10)


def test_lighting_pca_is_orthonormal_identity_at_zero_std_and_seeded(data):
    pca = LightingPCA.from_images(data[0], max_images=10)
    vecs = pca.eigvecs
    assert torch.allclose(vecs.T @ vecs, torch.eye(3), atol=1e-5)
    assert (pca.eigvals >= 0).all() and torch.all(pca.eigvals[:-1] >= pca.eigvals[1:])
    x = torch.rand(4, 3, 8, 8) * 255
    assert torch.equal(LightingPCA(pca.eigvals, vecs, alpha_std=0.0)(x, torch.Generator()), x)
    shifted = pca(x, torch.Generator().manual_seed(1))
    delta = shifted - x
    assert torch.allclose(delta, delta[:, :, :1, :1].expand_as(delta), atol=1e-4)  # one shift per image
    assert torch.equal(shifted, pca(x, torch.Generator().manual_seed(1)))
    again = LightingPCA.from_dict(json.loads(json.dumps(pca.to_dict())))
    assert torch.equal(again.eigvals, pca.eigvals) and torch.equal(again.eigvecs, pca.eigvecs)


def two_colour_folder(root: Path) -> list[Path]:
    """One pure red and one pure blue PNG: pixel statistics known by hand."""
    paths = []
    for name, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (70, 90), colour).save(root / name / "0.png")
        paths.append(root / name / "0.png")
    return paths


def test_colour_stats_of_two_pure_colours_match_the_hand_computed_values(tmp_path):
    # Half the pixels (1, 0, 0), half (0, 0, 1): mean (0.5, 0, 0.5), std 0.5 for red and blue (green is flat and
    # floored at 1e-3), covariance [[.25, 0, -.25], [0, 0, 0], [-.25, 0, .25]]: eigenvalues 0.5, 0, 0 and the
    # first eigenvector (1, 0, -1) / sqrt(2), its largest component positive.
    stats = color_stats(two_colour_folder(tmp_path))
    assert stats.mean == pytest.approx([0.5, 0.0, 0.5]) and stats.std == pytest.approx([0.5, 1e-3, 0.5])
    assert stats.eigvals == pytest.approx([0.5, 0.0, 0.0], abs=1e-12)
    assert [row[0] for row in stats.eigvecs] == pytest.approx([2 ** -0.5, 0.0, -(2 ** -0.5)])


def test_colour_stats_are_cached_and_recomputed_when_damaged_or_changed(data, tmp_path, monkeypatch):
    cache = tmp_path / "stats" / "color.json"
    stats = color_stats(data[0], cache, max_images=6)

    def boom(*args):
        raise AssertionError("recomputed despite a valid cache")

    with monkeypatch.context() as m:
        m.setattr(lighting_module, "_compute", boom)
        assert color_stats(data[0], cache, max_images=6) == stats
        assert dataset_mean_std(data[0], max_images=6, cache_path=cache) == (stats.mean, stats.std)
        assert torch.equal(LightingPCA.cached(data[0], cache, max_images=6).eigvals,
                           torch.tensor(stats.eigvals, dtype=torch.float32))
    cache.write_text("{not json")
    assert color_stats(data[0], cache, max_images=6) == stats and json.loads(cache.read_text())["key"]
    # A sampled file rewritten (same name, new content) is a new key: the stale entry is not used.
    paths = two_colour_folder(tmp_path / "two")
    first = color_stats(paths, cache)
    Image.new("RGB", (70, 90), (0, 255, 0)).save(paths[0])  # red -> green
    os.utime(paths[0], ns=(1, 1))
    assert color_stats(paths, cache).mean == pytest.approx([0.0, 0.5, 0.5]) != first.mean


def test_the_streamed_set_up_finds_its_colour_stats_in_a_second_process(tmp_path):
    # Keyed by Python's salted hash(), the entry was written afresh by every process and never read again.
    paths = two_colour_folder(tmp_path / "photos")
    cache = tmp_path / "cache"
    code = textwrap.dedent(f"""
        import sys, torch
        from alexnet.config import DataConfig
        from alexnet.data import lighting
        from alexnet.data.pipeline import build_training
        if sys.argv[1] == "second":
            def boom(*args):
                raise SystemExit("the colour statistics were computed again")
            lighting._compute = boom
        cfg = DataConfig(source={str(tmp_path / 'photos')!r}, loader="stream", val_split=0.0, lighting=True,
                         cache_dir={str(cache)!r}, resize=64)
        data = build_training(cfg, 32, 2, 0, torch.device("cpu"))
        print(data.spec.mean)
    """)
    first = subprocess.run([sys.executable, "-c", code, "first"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    (entry,) = (cache / "color-stats").iterdir()
    written = entry.stat().st_mtime_ns
    second = subprocess.run([sys.executable, "-c", code, "second"], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout == "(0.5, 0.0, 0.5)\n"
    assert list((cache / "color-stats").iterdir()) == [entry] and entry.stat().st_mtime_ns == written
    assert len(paths) == 2


def test_one_streamed_training_set_up_walks_the_tree_once(tmp_path, monkeypatch):
    from alexnet.config import DataConfig
    from alexnet.data import folder as folder_module
    from alexnet.data.pipeline import build_training

    two_colour_folder(tmp_path / "photos")  # 70 px and wider: `--loader auto` streams it
    walks = []
    real = folder_module.scan_folder
    monkeypatch.setattr(folder_module, "scan_folder", lambda root: (walks.append(root), real(root))[1])
    cfg = DataConfig(source=str(tmp_path / "photos"), val_split=0.0, cache_dir=str(tmp_path / "cache"), resize=64)
    data = build_training(cfg, 32, 2, 0, CPU)
    assert data.spec.kind == "stream" and data.num_train == 2
    assert walks == [tmp_path / "photos"]


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_file_stops_the_epoch_with_an_error_naming_it(folder, tmp_path, workers):
    root = tmp_path / "broken"
    shutil.copytree(folder, root)
    bad = root / "train" / "bee" / "2.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # a truncated JPEG
    loader = make(scan_folder(root).splits["train"], train=False, workers=workers)
    with pytest.raises(AlexnetError, match="2.jpg") as info:
        list(loader)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_bad_settings_are_user_errors(data):
    with pytest.raises(AlexnetError, match="crop"):
        make(data, crop="centre")
    with pytest.raises(AlexnetError, match="resize"):
        make(data, image_size=64, resize=48)


def test_a_process_holding_an_unreadable_batchs_traceback_still_exits(tmp_path):
    # The decoding workers ignore SIGTERM (a Ctrl-C or a scheduler's signal is the main process's to handle).
    # When an unreadable image ends an epoch and the caller keeps the exception (as pytest or a notebook does),
    # the workers must still be ended through the loader, not left to the interpreter's exit, which would
    # SIGTERM them and wait forever.
    folder = tmp_path / "train"
    for c in ("ant", "bee"):
        (folder / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 40), (60 * i, 100, 30)).save(folder / c / f"{i}.png")
    (folder / "bee" / "4.png").write_bytes(b"not a png")
    script = textwrap.dedent(f"""
        import sys, torch
        from alexnet.data.folder import scan_folder
        from alexnet.data.streaming import StreamingLoader
        paths, labels = scan_folder({str(tmp_path)!r}).splits["train"]
        loader = StreamingLoader(paths, labels, 2, train=False, image_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                                 device=torch.device("cpu"), workers=2, resize=40)
        try:
            for _ in loader:
                pass
        except Exception as e:
            kept = e  # the traceback keeps the loader's frame alive until exit
            print(type(e).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "UnreadableImageError", result.stderr
