"""Class folders: layouts, class order, bad files, parallel decoding and the on-disk cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.data import folder
from alexnet.data.folder import IMAGE_EXTENSIONS, decode_images, load_folder, scan_folder
from alexnet.errors import AlexnetError


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def make_classes(root: Path, counts: dict[str, int], ext: str = ".png") -> None:
    """Class c gets images whose red channel is 10*class_index + image_index (lossless PNG)."""
    for c, (name, count) in enumerate(sorted(counts.items())):
        for i in range(count):
            write_image(root / name / f"{i:03d}{ext}", (10 * c + i, 50, 60))


def test_image_extensions_cover_common_formats():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"} <= IMAGE_EXTENSIONS


def test_layout_a_sorts_classes_by_name_and_labels_follow(tmp_path):
    make_classes(tmp_path, {"truck": 2, "airplane": 1, "cat": 3})
    scan = scan_folder(tmp_path)
    assert scan.classes == ["airplane", "cat", "truck"]
    assert list(scan.splits) == ["train"]
    paths, labels = scan.splits["train"]
    assert labels == [0, 1, 1, 1, 2, 2]
    assert [p.relative_to(tmp_path).as_posix() for p in paths[:2]] == ["airplane/000.png", "cat/000.png"]


def test_layout_b_gives_train_val_and_test_splits(tmp_path):
    make_classes(tmp_path / "train", {"cat": 2, "dog": 2})
    make_classes(tmp_path / "test", {"cat": 1, "dog": 1})
    make_classes(tmp_path / "val", {"dog": 1})
    scan = scan_folder(tmp_path)
    assert scan.classes == ["cat", "dog"]
    assert set(scan.splits) == {"train", "val", "test"}
    assert scan.splits["test"][1] == [0, 1]
    assert scan.splits["val"][1] == [1]  # a val split may lack some classes


def test_layout_b_with_only_train_folder(tmp_path):
    make_classes(tmp_path / "train", {"cat": 1, "dog": 1})
    assert list(scan_folder(tmp_path).splits) == ["train"]


def test_test_class_missing_from_train_is_an_error(tmp_path):
    make_classes(tmp_path / "train", {"cat": 1, "dog": 1})
    make_classes(tmp_path / "test", {"cat": 1, "emu": 1})
    with pytest.raises(AlexnetError, match="emu has no matching folder in the train split"):
        scan_folder(tmp_path)


def test_hidden_files_and_non_images_are_ignored_and_extensions_are_case_insensitive(tmp_path):
    make_classes(tmp_path, {"cat": 1, "dog": 1})
    write_image(tmp_path / "cat" / "UPPER.JPG", (1, 2, 3))
    write_image(tmp_path / "cat" / ".hidden.png", (1, 2, 3))
    write_image(tmp_path / ".thumbs" / "x.png", (1, 2, 3))
    (tmp_path / "cat" / "notes.txt").write_text("hi")
    (tmp_path / "README.md").write_text("hi")
    scan = scan_folder(tmp_path)
    assert scan.classes == ["cat", "dog"]
    assert sorted(p.name for p in scan.splits["train"][0]) == ["000.png", "000.png", "UPPER.JPG"]


def test_single_class_folder_is_an_error(tmp_path):
    make_classes(tmp_path, {"cat": 2})
    with pytest.raises(AlexnetError, match="found 1 class .cat. .*need at least 2"):
        scan_folder(tmp_path)


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("no pictures")
    with pytest.raises(AlexnetError, match=r"no images found under .*<class>/\*\.jpg"):
        scan_folder(tmp_path)


def test_empty_class_folder_is_an_error(tmp_path):
    make_classes(tmp_path, {"cat": 1, "dog": 1})
    (tmp_path / "emu").mkdir()
    with pytest.raises(AlexnetError, match="emu has no images"):
        scan_folder(tmp_path)


def test_missing_data_path_is_an_error(tmp_path):
    with pytest.raises(AlexnetError, match="data path .*nowhere does not exist; pass --data"):
        scan_folder(tmp_path / "nowhere")


def test_decode_images_gives_uint8_nhwc_in_path_order(tmp_path):
    make_classes(tmp_path, {"cat": 2, "dog": 1})
    paths, _ = scan_folder(tmp_path).splits["train"]
    images = decode_images(paths, 8, workers=1)
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    assert images[:, 0, 0, 0].tolist() == [0, 1, 10]


def test_decode_images_without_size_uses_the_first_image_and_fits_the_rest(tmp_path):
    first = write_image(tmp_path / "a.png", (1, 1, 1), (6, 6))
    wide = write_image(tmp_path / "b.png", (2, 2, 2), (12, 9))
    images = decode_images([first, wide], None, workers=1)
    assert images.shape == (2, 6, 6, 3)
    assert (images[1] == 2).all()


def test_unreadable_images_are_all_counted_in_one_error(tmp_path):
    make_classes(tmp_path, {"cat": 2, "dog": 2}, ext=".jpg")
    noisy = tmp_path / "dog" / "noise.jpg"
    Image.effect_noise((64, 64), 80).convert("RGB").save(noisy)
    data = noisy.read_bytes()
    (tmp_path / "dog" / "cut.jpg").write_bytes(data[: len(data) // 2])  # truncated mid-scan
    noisy.unlink()
    (tmp_path / "cat" / "bad.jpg").write_text("this is not a jpeg")
    with pytest.raises(AlexnetError) as info:
        load_folder(tmp_path, None, size=8, workers=1)
    message = str(info.value)
    assert message.startswith(f"2 unreadable images under {tmp_path}, e.g. {tmp_path / 'cat' / 'bad.jpg'} (")
    assert message.endswith("remove or fix them") and "\n" not in message


def test_parallel_decoding_matches_serial_and_reports_failures(tmp_path, monkeypatch):
    make_classes(tmp_path, {"cat": 6, "dog": 6})
    paths, _ = scan_folder(tmp_path).splits["train"]
    monkeypatch.setattr(folder, "_MIN_PARALLEL", 1)  # use the pool even for 12 images
    serial = decode_images(paths, 8, workers=1)
    parallel = decode_images(paths, 8, workers=2)
    np.testing.assert_array_equal(serial, parallel)
    paths[3].write_bytes(b"junk")
    with pytest.raises(AlexnetError, match=f"1 unreadable image under .*: {paths[3]} "):
        decode_images(paths, None, workers=2)


def test_load_folder_returns_splits_labels_and_classes(tmp_path):
    make_classes(tmp_path / "train", {"cat": 2, "dog": 1})
    make_classes(tmp_path / "test", {"cat": 1, "dog": 1})
    data, classes = load_folder(tmp_path, None, workers=1)
    assert classes == ["cat", "dog"]
    train_x, train_y = data["train"]
    assert train_x.shape == (3, 8, 8, 3) and train_y.dtype == np.int64
    assert train_y.tolist() == [0, 0, 1] and data["test"][1].tolist() == [0, 1]


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    make_classes(root, {"cat": 2, "dog": 2})
    return root, tmp_path / "cache"


def forbid_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("images were decoded again")

    monkeypatch.setattr(folder, "decode_images", fail)


def test_cache_is_reused_on_second_load(dataset, monkeypatch):
    root, cache = dataset
    first, _ = load_folder(root, cache, workers=1)
    assert len(list(cache.glob("folder-*"))) == 1
    forbid_decoding(monkeypatch)
    second, classes = load_folder(root, cache, workers=1)
    assert classes == ["cat", "dog"]
    np.testing.assert_array_equal(first["train"][0], second["train"][0])
    np.testing.assert_array_equal(first["train"][1], second["train"][1])


def test_cache_is_invalidated_when_a_file_changes(dataset):
    root, cache = dataset
    load_folder(root, cache, workers=1)
    changed = root / "dog" / "001.png"
    write_image(changed, (222, 0, 0))
    os.utime(changed, ns=(1, 1))  # a distinct mtime even on coarse-clock file systems
    data, _ = load_folder(root, cache, workers=1)
    assert data["train"][0][3, 0, 0].tolist() == [222, 0, 0]
    assert len(list(cache.glob("folder-*"))) == 1  # the superseded entry was removed


def test_cache_is_invalidated_when_a_file_is_added(dataset):
    root, cache = dataset
    load_folder(root, cache, workers=1)
    write_image(root / "dog" / "002.png", (5, 5, 5))
    data, _ = load_folder(root, cache, workers=1)
    assert data["train"][0].shape[0] == 5


@pytest.mark.parametrize("damage", ["truncate_images", "garbage_meta", "remove_meta"])
def test_corrupt_cache_is_ignored_and_rebuilt(dataset, damage):
    root, cache = dataset
    first, _ = load_folder(root, cache, workers=1)
    (entry,) = cache.glob("folder-*")
    if damage == "truncate_images":
        npy = entry / "train-images.npy"
        npy.write_bytes(npy.read_bytes()[:150])
    elif damage == "garbage_meta":
        (entry / "meta.json").write_text("{not json")
    else:
        (entry / "meta.json").unlink()
    again, _ = load_folder(root, cache, workers=1)
    np.testing.assert_array_equal(first["train"][0], again["train"][0])
    assert load_folder(root, cache, workers=1)[0]["train"][0].shape == (4, 8, 8, 3)  # rebuilt entry loads


def test_cache_depends_on_the_requested_size(dataset):
    root, cache = dataset
    assert load_folder(root, cache, size=4, workers=1)[0]["train"][0].shape == (4, 4, 4, 3)
    assert load_folder(root, cache, size=6, workers=1)[0]["train"][0].shape == (4, 6, 6, 3)


def test_decoding_without_fork_matches(tmp_path, monkeypatch):
    # macOS and Windows start workers by spawn: chunks travel through pipes instead of shared memory
    import multiprocessing

    make_classes(tmp_path, {"cat": 4, "dog": 4})
    paths, _ = scan_folder(tmp_path).splits["train"]
    monkeypatch.setattr(folder, "_MIN_PARALLEL", 1)
    serial = decode_images(paths, 8, workers=1)
    monkeypatch.setattr(folder, "_mp_context", lambda: multiprocessing.get_context("spawn"))
    np.testing.assert_array_equal(decode_images(paths, 8, workers=2), serial)
