"""Checkpoints under faults: a full or read-only disk, a crash between two writes, temp files a killed process
left, hostile checkpoint files, a non-finite loss. What was saved before always loads."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import alexnet
from alexnet.cli import main
from alexnet.engine import callbacks
from alexnet.engine.checkpoint import atomic_write, load_checkpoint, reported_write
from alexnet.engine.trainer import prepare_run_dir
from alexnet.errors import CheckpointWriteError

FLAGS = ["--epochs", "2", "--batch-size", "16", "--lr", "0.05", "--widths", "8,8,8,8,8", "--no-whiten", "--no-report",
         "--quiet", "--device", "cpu", "--seed", "1", "--val-every", "1"]
OPTIONS = dict(epochs=2, batch_size=16, lr=0.05, widths=(8, 8, 8, 8, 8), whiten=False, report=False, device="cpu",
               seed=1, val_every=1, progress=False)


def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_previous_checkpoint(tiny_folder, tmp_path, monkeypatch,
                                                                                  capsys):
    run = tmp_path / "r"
    real_save, last_writes, before = torch.save, [], {}

    def save(obj, f, *args, **kwargs):
        if ".last.pt." in str(f):
            last_writes.append(f)
            if len(last_writes) == 2:  # epoch 2's last.pt
                before["bytes"] = (run / "last.pt").read_bytes()
                with open(f, "wb") as fh:
                    fh.write(b"\x80\x02half a checkpoint")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert main(["train", "--data", str(tiny_folder / "train"), "--out", str(run), *FLAGS]) == 74
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"could not write {run / 'last.pt'}: No space left on device (ENOSPC)" in err
    assert "still holds epoch 1" in err and "free some disk space" in err and f"--resume {run}" in err
    assert (run / "last.pt").read_bytes() == before["bytes"] and load_checkpoint(run / "last.pt")["epoch"] == 1
    assert not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    alexnet.train(resume=run, progress=False)  # space freed: it goes on
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_a_failed_write_names_the_error_and_what_to_do():
    for code, advice in [(errno.EROFS, "make the folder writable"), (errno.EACCES, "make the folder writable"),
                         (errno.ENOSPC, "free some disk space")]:
        with pytest.raises(CheckpointWriteError) as caught:
            with reported_write(Path("RUN/best.pt"), "RUN/last.pt still holds epoch 3 and loads", Path("RUN")):
                raise OSError(code, os.strerror(code))
        message = str(caught.value)
        assert message.startswith(f"could not write RUN/best.pt: {os.strerror(code)} ({errno.errorcode[code]})")
        assert advice in message and message.endswith("continue with `alexnet train --resume RUN`")
        assert caught.value.exit_code == 74


def test_a_run_folder_that_cannot_be_made_is_one_line(tiny_folder, tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    out = tmp_path / "file" / "run"
    assert main(["train", "--data", str(tiny_folder / "train"), "--out", str(out), *FLAGS]) == 74
    err = capsys.readouterr().err.strip()
    assert err == (f"alexnet train: error: could not write {out}: Not a directory (ENOTDIR); nothing was saved; "
                   "choose another --out, then run the command again")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_a_read_only_run_folder_is_refused_in_one_line(tiny_folder, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--data", str(tiny_folder / "train"), "--out", str(run), *FLAGS,
                 "--stop-after-epoch", "1"]) == 0
    before = (run / "last.pt").read_bytes()
    run.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert main(["train", "--resume", str(run), "--quiet"]) == 74
    finally:
        run.chmod(stat.S_IRWXU)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Permission denied (EACCES)" in err
    assert (run / "last.pt").read_bytes() == before


def test_best_pt_is_written_before_last_pt_so_a_crash_between_never_leaves_it_behind(tiny_folder, tmp_path,
                                                                                   monkeypatch):
    run, order = tmp_path / "r", []
    real = callbacks.save_checkpoint

    def save(path, state):
        order.append(path.name)
        if order == ["best.pt", "last.pt", "best.pt", "last.pt"]:
            raise KeyboardInterrupt("the machine went down")  # a crash between epoch 2's two writes
        real(path, state)

    monkeypatch.setattr(callbacks, "save_checkpoint", save)
    with pytest.raises(KeyboardInterrupt):  # no validation split: every epoch is the best so far
        alexnet.train(data=str(tiny_folder / "train"), out=run, val_split=0.0, **OPTIONS)
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert (best["epoch"], last["epoch"]) == (2, 1)
    assert best["best_val_acc"] >= last["best_val_acc"]
    monkeypatch.undo()
    alexnet.train(resume=run, progress=False)
    assert load_checkpoint(run / "last.pt")["epoch"] == load_checkpoint(run / "best.pt")["epoch"] == 2


def test_temp_files_a_killed_process_left_are_removed_at_the_next_start(tmp_path):
    left = [tmp_path / ".last.pt.k3j2x9.tmp", tmp_path / ".best.pt.a1.tmp", tmp_path / ".history.json.zz.tmp"]
    for path in left:
        path.write_bytes(b"half")
    mine = tmp_path / ".notes.txt.tmp"
    mine.write_text("not ours")
    prepare_run_dir(tmp_path, resume=True)
    assert not any(p.exists() for p in left) and mine.exists()


def test_atomic_write_syncs_the_file_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "x.bin", lambda tmp: open(tmp, "wb").write(b"data"))
    assert synced == [False, True]  # the file's bytes, then the rename in its folder
    assert (tmp_path / "x.bin").read_bytes() == b"data" and os.listdir(tmp_path) == ["x.bin"]


def test_a_non_finite_loss_exits_2_and_the_last_good_checkpoint_loads(tiny_folder, tmp_path, monkeypatch, capsys):
    run, calls = tmp_path / "r", []
    real = torch.nn.functional.cross_entropy

    def cross_entropy(*args, **kwargs):
        calls.append(1)  # epoch 1: 6 training steps and the validation's loss; call 9 is epoch 2's step 2
        return real(*args, **kwargs) * (float("nan") if len(calls) >= 9 else 1.0)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)
    assert main(["train", "--data", str(tiny_folder / "train"), "--out", str(run), *FLAGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the loss became nan at epoch 2, step 2" in err
    assert "last good checkpoint is kept" in err
    assert load_checkpoint(run / "last.pt")["epoch"] == load_checkpoint(run / "best.pt")["epoch"] == 1


def test_a_checkpoint_carrying_a_pickle_payload_is_refused_without_running_it(tmp_path, capsys):
    run, marker = tmp_path / "r", tmp_path / "payload-ran"
    run.mkdir()
    code = ("import os, torch\n"
            "class Payload:\n"
            "    def __reduce__(self):\n"
            f"        return (os.system, ('touch {marker}',))\n"
            f"torch.save({{'format': 'alexnet-checkpoint', 'version': 1, 'model': Payload()}}, r'{run / 'last.pt'}')\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not plain tensors (a pickle payload?)" in err and str(run / "last.pt") in err
    assert not marker.exists()


def test_weights_or_optimiser_state_of_the_wrong_shape_are_refused_in_one_line(tiny_folder, tmp_path, capsys):
    run = alexnet.train(data=str(tiny_folder / "train"), out=tmp_path / "r", stop_after_epoch=1, **OPTIONS)
    good = load_checkpoint(run / "last.pt")
    conv = next(k for k, v in good["model"].items() if v.ndim == 4)
    shape = tuple(good["model"][conv].shape)

    bad_weights = tmp_path / "w"
    shutil.copytree(run, bad_weights)
    ckpt = load_checkpoint(bad_weights / "last.pt")
    ckpt["model"][conv] = ckpt["model"][conv][:, :, :-1]
    torch.save(ckpt, bad_weights / "last.pt")
    assert main(["train", "--resume", str(bad_weights), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"{conv} has shape {(shape[0], shape[1], shape[2] - 1, shape[3])}, the model's is {shape}" in err

    bad_momentum = tmp_path / "m"
    shutil.copytree(run, bad_momentum)
    ckpt = load_checkpoint(bad_momentum / "last.pt")
    buffer = ckpt["optimizer"]["state"][0]["momentum_buffer"]
    ckpt["optimizer"]["state"][0]["momentum_buffer"] = buffer.flatten()[:-1]
    torch.save(ckpt, bad_momentum / "last.pt")
    assert main(["train", "--resume", str(bad_momentum), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "an optimiser momentum_buffer has shape" in err
