import numpy as np
import pytest
import torch

from alexnet.data.memory import (BatchLoader, Normalizer, channel_stats, prefetch, random_crop, random_flip,
                                 stratified_split, to_device_tensor, translate)


def test_stratified_split_holds_out_the_fraction_of_every_class_and_is_seeded():
    labels = np.repeat(np.arange(4), 50)
    train, val = stratified_split(labels, 0.1, seed=3)
    assert len(val) == 20 and np.bincount(labels[val]).tolist() == [5, 5, 5, 5]
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 200
    assert np.array_equal(val, stratified_split(labels, 0.1, seed=3)[1])
    assert not np.array_equal(val, stratified_split(labels, 0.1, seed=4)[1])


def test_random_crop_translates_each_image_within_padding():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    y = random_crop(x, 2, gen)
    assert y.shape == x.shape and y.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # every output equals some window of the zero-padded input
        assert any(torch.equal(y[i], padded[i, :, dy:dy + 8, dx:dx + 8]) for dy in range(5) for dx in range(5))


def test_translate_cuts_each_image_at_its_own_offset_and_keeps_the_layout():
    x = torch.randint(0, 255, (60, 3, 6, 6), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    dy, dx = torch.randint(0, 3, (60,)), torch.randint(0, 3, (60,))
    y = translate(x, dy, dx, 1)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(60):
        assert torch.equal(y[i], padded[i, :, dy[i]:dy[i] + 6, dx[i]:dx[i] + 6])
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_random_crop_with_zero_padding_is_identity():
    x = torch.randint(0, 255, (3, 3, 6, 6), dtype=torch.uint8)
    assert torch.equal(random_crop(x, 0, torch.Generator()), x)


def test_random_flip_mirrors_about_half_and_keeps_the_rest():
    x = torch.randint(0, 255, (400, 3, 4, 4), dtype=torch.uint8)
    y = random_flip(x, torch.Generator().manual_seed(1))
    flipped = [torch.equal(y[i], x[i].flip(2)) for i in range(400)]
    kept = [torch.equal(y[i], x[i]) for i in range(400)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 150 < sum(flipped) < 250


def test_normalizer_uses_training_stats_and_resizes_to_input():
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    mean, std = channel_stats(images)
    norm = Normalizer(mean, std, 16, torch.device("cpu"))
    out = norm(to_device_tensor(images, torch.device("cpu")))
    assert out.shape == (20, 3, 16, 16)
    same = Normalizer(mean, std, 8, torch.device("cpu"))(to_device_tensor(images, torch.device("cpu")))
    assert same.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert same.std(dim=(0, 2, 3)) == pytest.approx([1.0] * 3, abs=0.01)


def make_loader(train: bool, seed: int = 0, rank: int = 0, world: int = 1) -> BatchLoader:
    images = torch.randint(0, 255, (100, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    norm = Normalizer([0.5] * 3, [0.25] * 3, 8, torch.device("cpu"))
    return BatchLoader(images, torch.arange(100), 16, norm, train=train, crop_padding=2, flip=True,
                       seed=seed, rank=rank, world_size=world)


def test_training_batches_depend_only_on_seed_and_epoch():
    a, b = make_loader(True), make_loader(True)
    a.set_epoch(3)
    b.set_epoch(3)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.set_epoch(4)
    assert not torch.equal(next(iter(a))[1], next(iter(b))[1])


def test_training_drops_the_partial_batch_and_evaluation_keeps_every_sample():
    train_labels = torch.cat([y for _, y in make_loader(True)])
    assert len(train_labels) == 96 and len(set(train_labels.tolist())) == 96
    eval_labels = torch.cat([y for _, y in make_loader(False)])
    assert eval_labels.tolist() == list(range(100))


def test_ranks_take_disjoint_shares_of_each_epoch():
    seen = [torch.cat([y for _, y in make_loader(True, rank=r, world=2)]) for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 48
    assert not set(seen[0].tolist()) & set(seen[1].tolist())


def test_two_ranks_together_see_exactly_the_batches_of_one_process():
    images = torch.randint(0, 255, (100, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    norm = Normalizer([0.5] * 3, [0.25] * 3, 8, torch.device("cpu"))

    def loader(batch, rank, world):
        return BatchLoader(images, torch.arange(100), batch, norm, train=True, crop_padding=2, flip=True,
                           seed=5, rank=rank, world_size=world)

    single = list(loader(32, 0, 1))
    ranks = [list(loader(16, r, 2)) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 3
    for (x1, y1), (xa, ya), (xb, yb) in zip(single, *ranks):
        assert torch.equal(x1[0::2], xa) and torch.equal(x1[1::2], xb)
        assert torch.equal(y1[0::2], ya) and torch.equal(y1[1::2], yb)


def test_alternate_flip_mirrors_each_image_in_every_other_epoch():
    # Images that are their own class label, no crop: then the flip of each image in each epoch is visible.
    images = torch.randint(0, 255, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    norm = Normalizer([0.5] * 3, [0.25] * 3, 8, torch.device("cpu"))
    loader = BatchLoader(images, torch.arange(64), 16, norm, train=True, flip=True, flip_mode="alternate", seed=3)
    plain = norm(images)

    def flipped(epoch):
        loader.set_epoch(epoch)
        state = {}
        for x, y in loader:
            for xi, yi in zip(x, y.tolist()):
                state[yi] = torch.equal(xi, plain[yi].flip(2))
        return state

    e0, e1, e2 = flipped(0), flipped(1), flipped(2)
    assert all(e1[i] != e0[i] for i in e0) and e2 == e0  # mirrored every other epoch, same coin each time
    assert 16 < sum(e0.values()) < 48  # the first epoch's coins are fair


def test_cutout_paints_one_mean_coloured_square_per_image_and_leaves_the_rest():
    # Constant white images, no crop or flip: every pixel the loader changed is the cut-out square.
    images = torch.full((64, 3, 16, 16), 255, dtype=torch.uint8)
    norm = Normalizer([0.4, 0.5, 0.6], [0.25] * 3, 16, torch.device("cpu"))
    loader = BatchLoader(images, torch.arange(64), 16, norm, train=True, cutout=6, seed=1)
    white = norm(images[:1])[0]
    painted = []
    for x, _ in loader:
        for xi in x:
            hole = (xi != white).any(0)  # (h, w)
            rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
            # one axis-aligned block, at most 6x6 (smaller where it hangs over the border), all of it filled
            assert len(rows) <= 6 and len(cols) <= 6
            assert hole.sum() == len(rows) * len(cols)
            assert xi[:, hole].abs().max() < 0.02  # the mean colour normalises to ~0
            painted.append(int(hole.sum()))
    assert max(painted) == 36 and min(painted) < 36 and len(set(painted)) > 3


def test_cutout_off_keeps_the_batches_of_a_run_without_it():
    images = torch.randint(0, 255, (100, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    norm = Normalizer([0.5] * 3, [0.25] * 3, 8, torch.device("cpu"))
    with_cut = BatchLoader(images, torch.arange(100), 16, norm, train=True, crop_padding=2, flip=True, cutout=3)
    for (xa, ya), (xb, yb) in zip(make_loader(True), with_cut):
        assert torch.equal(ya, yb)  # same order, crops and flips: the squares have their own random stream
        assert not torch.equal(xa, xb) and (xa != xb).any(1).sum() <= 9 * len(xa)


def test_prefetch_yields_every_batch_in_order_and_hands_on_the_producers_error():
    assert list(prefetch(iter(range(10)))) == list(range(10))

    def failing():
        yield 1
        raise ValueError("bad batch")

    it = prefetch(failing())
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad batch"):
        next(it)


def test_prefetch_stops_its_thread_when_the_consumer_leaves_early():
    import threading

    before = threading.active_count()
    it = prefetch(iter(range(1000)))
    assert next(it) == 0
    it.close()  # the consumer breaks out of its loop: the producer must not stay blocked on a full queue
    assert threading.active_count() == before


def test_prefetch_on_a_cpu_hands_the_batches_back_without_a_thread():
    batches = iter(range(3))
    assert prefetch(batches, torch.device("cpu")) is batches
    assert list(prefetch(iter(range(3)), torch.device("cuda"))) == [0, 1, 2]  # a GPU gets the thread
