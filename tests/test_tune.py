"""`alexnet tune` on the tiny class folders, with the default journal storage: workers sharing a study, a bad space
file, a worker killed outright, a worker stopped by SIGTERM, pruning, the search space and the rank messages."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import run_cli

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Quick trials: a small network, one or two epochs, batch 16.
SPACE = """\
[model]
widths = [8, 8, 8, 8, 8]
hidden = 0

[train]
epochs = { low = 1, high = 2 }
lr = { low = 0.02, high = 0.1, log = true }
batch_size = 16
whiten = false
"""
# Trials long enough to be caught in the middle: 40 epochs of the small network (a few seconds).
LONG_SPACE = SPACE.replace("epochs = { low = 1, high = 2 }", "epochs = 40")


def write_space(tmp_path: Path, text: str = SPACE, name: str = "space.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def tune_args(data: Path, out: Path, space: Path, trials: int, *flags: str) -> list[str]:
    return ["tune", "--data", str(data), "--space", str(space), "--trials", str(trials), "--out", str(out), "--quiet",
            *flags]


def start(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m alexnet ARGS` in the background, its output to `log`."""
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "alexnet", *args], stdout=f, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def trials_of(out: Path, name: str = "alexnet") -> list:
    """The study's trials, read from DIR/journal.log as another worker would."""
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    path = str(out / "journal.log")
    storage = JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the worker exited {proc.returncode} before {what}:\n{log.read_text()[-3000:] if log else ''}")
        assert time.monotonic() < deadline, f"no {what} after {timeout} s:\n{log.read_text()[-3000:] if log else ''}"
        time.sleep(0.02)


def assert_outputs(out: Path) -> None:
    for name in ("trials.csv", "trials.json", "best.toml", "summary.html", "optimization-history.png", "params.png"):
        assert (out / name).is_file(), name
    assert (out / "summary.html").read_text().count("data:image/png;base64,") >= 2


@pytest.mark.slow
def test_two_workers_share_one_study_and_best_toml_trains_the_best_trial_again(tiny_folder, tmp_path):
    import torch

    from alexnet.engine.checkpoint import load_checkpoint

    # Trials of 40 epochs that a 3 s time limit ends: the clock decides each trial's steps and rates.
    out, space = tmp_path / "study", write_space(tmp_path, LONG_SPACE)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start(tune_args(tiny_folder, out, space, 4, "--time-limit-per-trial", "3"), log) for log in logs]
    for proc, log in zip(procs, logs):
        try:
            assert proc.wait(120) == 0, log.read_text()[-3000:]
        finally:
            proc.kill()

    trials = trials_of(out)
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == 4, [(t.number, t.state) for t in trials]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    # Two workers asking for the last place at the same moment: the later one ends its trial unrun.
    assert all(t.user_attrs.get("surplus") for t in trials if t.state not in FINISHED)
    folders = sorted(p.name for p in (out / "trials").iterdir())
    assert folders == sorted(t.user_attrs["run"].split("/")[-1] for t in finished)
    assert_outputs(out)
    rows = json.loads((out / "trials.json").read_text())
    done = sorted(r["number"] for r in rows if r["state"] in ("COMPLETE", "PRUNED"))
    assert done == sorted(t.number for t in finished)
    assert "lr" in rows[0]["params"] and all(r["epochs_trained"] < 40 for r in rows if r["state"] == "COMPLETE")
    header = (out / "trials.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["number", "state", "best_val_acc"] and "lr" in header and "epochs_trained" in header

    # `alexnet runs` reads the trials as runs; best.toml trains the best trial again, to the same weights: it
    # replays the trial's clock readings, whatever this machine's clock does now.
    listed = run_cli("runs", out / "trials", "--json")
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == len(folders)
    best = max((t for t in finished if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
    assert f'replay_clock = "{(out / best.user_attrs["run"] / "clock.json").resolve()}"' in (out / "best.toml").read_text()
    # With the trial's thread count: CPU reductions split across threads round differently.
    again = run_cli("train", "--config", out / "best.toml", "--out", tmp_path / "again", "--quiet",
                    env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-2000:]
    theirs = load_checkpoint(out / best.user_attrs["run"] / "best.pt")["model"]
    ours = load_checkpoint(tmp_path / "again" / "best.pt")["model"]
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)


BAD_SPACES = {
    "[train]\nlr = { low = 0.5, high = 0.1 }\n": "train.lr: low (0.5) must be below high (0.1)",
    "train:\n  lrr: {low: 0.1, high: 0.5}\n": "unknown option train.lrr; did you mean train.lr?",
    "lr = { low = -1, high = 0.5 }\n": "lr = -1: --lr must be > 0",
    "batch_size = { low = 0.5, high = 64 }\n": "batch_size: batch_size takes integers, so low must be one",
    "[model]\nwidths = { choices = [[8, 8, 8, 8, 8], [8, 8]] }\n": "model.widths: choice [8, 8]: expected 5 positive",
    "[train]\nlr = { low = 0.1, high = 1, log = true, step = 0.1 }\n": "train.lr: step must be > 0 and cannot go",
    "[train]\nval_every = 2\n": "train.val_every: not an option of the search",
    "[train]\nbatch_size = [16, 32]\n": "train.batch_size: a list is no value of this option",
    "[train\nlr = 1\n": "is not valid TOML",
}


@pytest.mark.parametrize("text", list(BAD_SPACES), ids=range(len(BAD_SPACES)))
def test_a_bad_space_file_is_one_line_naming_the_file_and_the_option(text, tiny_folder, tmp_path, capsys):
    from alexnet.cli import main

    space = write_space(tmp_path, text, "space.yaml" if text.startswith("train:") else "space.toml")
    assert main(tune_args(tiny_folder, tmp_path / "study", space, 2)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"alexnet tune: error: --space {space}") and BAD_SPACES[text] in err, err
    assert "Traceback" not in err


def test_without_optuna_the_command_says_which_extra_to_install(tmp_path):
    block = textwrap.dedent("""
        import sys
        class NoOptuna:
            def find_spec(self, name, path=None, target=None):
                if name == "optuna" or name.startswith("optuna."):
                    raise ImportError("blocked")
        sys.meta_path.insert(0, NoOptuna())
        from alexnet.cli import main
        sys.exit(main(sys.argv[1:]))
        """)
    result = subprocess.run([sys.executable, "-c", block, "tune", "--data", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "alexnet tune: error: alexnet tune needs optuna: pip install 'alexnet[tune]'"


def kill_mid_trial(tiny_folder: Path, out: Path, space: Path, trials: int, sig: int, log: Path) -> subprocess.Popen:
    """Start a worker and send it `sig` once its first trial has saved an epoch: trials/0000/last.pt, and
    history.json, which the callbacks write after the checkpoint."""
    proc = start(tune_args(tiny_folder, out, space, trials), log)
    trial = out / "trials" / "0000"
    try:
        wait_for(lambda: (trial / "last.pt").is_file() and (trial / "history.json").is_file(), 90, "saved epoch",
                 proc, log)
        proc.send_signal(sig)
        proc.wait(60)
    finally:
        proc.kill()
    return proc


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_a_trial_that_the_next_worker_retries_and_continues(tiny_folder, tmp_path):
    out, space = tmp_path / "study", write_space(tmp_path, LONG_SPACE)
    kill_mid_trial(tiny_folder, out, space, 2, signal.SIGKILL, tmp_path / "a.log")
    (killed,) = trials_of(out)
    assert killed.state == TrialState.RUNNING and killed.params, "the trial ended before the kill; lengthen it"
    saved = len(json.loads((out / "trials" / "0000" / "history.json").read_text()))
    assert 1 <= saved < 40

    b = run_cli(*tune_args(tiny_folder, out, space, 2))
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    trials = trials_of(out)
    table = [(t.number, t.state, t.system_attrs.get("failed_trial")) for t in trials]
    assert [t.number for t in trials] == [0, 1, 2], table
    assert trials[0].state == TrialState.FAIL and "its worker died; queued again" in (out / "trials.csv").read_text()
    retry = trials[1]
    assert retry.state in FINISHED and retry.system_attrs["failed_trial"] == 0, table
    assert retry.params == killed.params
    # The copy went on in the killed trial's folder, from the epoch it had saved, to the end.
    assert retry.user_attrs["run"] == "trials/0000" and retry.user_attrs["resumed"]
    history = json.loads((out / "trials" / "0000" / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, 41))
    assert min(retry.intermediate_values) == 1 and max(retry.intermediate_values) == 40
    assert trials[2].state in FINISHED and trials[2].user_attrs["run"] == "trials/0002"
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000", "0002"]

    # The study is complete: another worker runs nothing; one with other settings is refused.
    again = run_cli(*tune_args(tiny_folder, out, space, 2))
    assert again.returncode == 0 and len(trials_of(out)) == 3
    other = run_cli(*tune_args(tiny_folder, out, space, 2, "--pruner", "asha"))
    assert other.returncode == 2
    assert "was started with --pruner median, not asha" in other.stderr and len(other.stderr.splitlines()) == 1


@pytest.mark.slow
def test_sigterm_stops_the_trial_saved_and_queued_and_the_next_run_continues_it(tiny_folder, tmp_path):
    out, space, log = tmp_path / "study", write_space(tmp_path, LONG_SPACE), tmp_path / "a.log"
    proc = kill_mid_trial(tiny_folder, out, space, 1, signal.SIGTERM, log)
    assert proc.returncode == 75, log.read_text()[-3000:]
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("alexnet tune: stopped by SIGTERM in trial 0;") and "the same `alexnet tune`" in last
    stopped, queued = trials_of(out)
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["interrupted"]["signal"] == "SIGTERM"
    assert queued.state == TrialState.WAITING and queued.system_attrs["failed_trial"] == 0
    assert queued.params == stopped.params
    saved = len(json.loads((out / "trials" / "0000" / "history.json").read_text()))
    assert 1 <= saved < 40
    assert (out / "summary.html").is_file() and "stopped by SIGTERM" in (out / "trials.csv").read_text()

    b = run_cli(*tune_args(tiny_folder, out, space, 1))
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    stopped, done = trials_of(out)
    assert done.state in FINISHED and done.user_attrs["run"] == "trials/0000" and done.user_attrs["resumed"]
    assert done.user_attrs.get("interrupted") is None  # the copy's own record, not the stopped trial's
    history = json.loads((out / "trials" / "0000" / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, 41))
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000"]


class FakeTrial:
    """An optuna trial whose pruner prunes after `after` epochs."""

    number = 7

    def __init__(self, after: int):
        self.after, self.reported = after, []

    def report(self, value: float, step: int) -> None:
        self.reported.append((step, value))

    def should_prune(self) -> bool:
        return len(self.reported) >= self.after


def test_the_pruning_callback_stops_training_after_the_epoch_the_pruner_names(tiny_folder, tmp_path):
    from alexnet.api import train
    from alexnet.tune.pruning import PRUNED_FILE, Pruning

    trial = FakeTrial(after=1)
    pruning = Pruning(trial, "median")
    run = train(data=str(tiny_folder), out=tmp_path / "run", epochs=3, batch_size=16, lr=0.05, whiten=False,
                widths=(8, 8, 8, 8, 8), val_every=1, report=False, progress=False, callbacks=[pruning])
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 1 and "pruned by the median pruner after epoch 1" in history[0]["stopped"]
    assert [step for step, _ in trial.reported] == [1]
    record = json.loads((run / PRUNED_FILE).read_text())
    assert record == {"trial": 7, "epoch": 1, "value": trial.reported[0][1], "pruner": "median"}
    assert pruning.pruned["epoch"] == 1 and pruning.epochs == 1
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()


def test_a_pruned_trial_is_recorded_as_pruned_with_its_folder_saying_so(tiny_folder, tmp_path, monkeypatch, capsys):
    """Through the whole command (in this process), with a pruner that prunes every trial at its first epoch."""
    from alexnet.tune import study as tune_study

    monkeypatch.setattr(tune_study, "make_pruner", lambda name: optuna.pruners.ThresholdPruner(lower=1.01))
    out = tmp_path / "study"
    tune_study.tune(tune_study.TuneOptions(data=str(tiny_folder), out=out, trials=2,
                                           space=str(write_space(tmp_path, LONG_SPACE)), quiet=True))
    trials = trials_of(out)
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.PRUNED]
    for t in trials:
        assert list(t.intermediate_values) == [1]
        record = json.loads((out / t.user_attrs["run"] / "pruned.json").read_text())
        assert record["trial"] == t.number and record["epoch"] == 1
        assert len(json.loads((out / t.user_attrs["run"] / "history.json").read_text())) == 1
    rows = json.loads((out / "trials.json").read_text())
    assert [r["note"] for r in rows] == ["pruned after epoch 1"] * 2
    # No complete trial: no best.toml, and no importances (with a note saying why).
    assert not (out / "best.toml").exists() and not (out / "importances.png").exists()
    assert "parameter importances need at least 2 complete trials" in (out / "summary.html").read_text()
    printed = capsys.readouterr().out
    assert "trial 0: pruned after epoch 1" in printed and "2 of 2 trials finished" in printed


def test_a_diverging_trial_stops_at_the_trainers_restart():
    """The trainer restarts a diverged run at a lower rate; the callback ends the trial there instead."""
    from types import SimpleNamespace

    from alexnet.engine.divergence import Diverged
    from alexnet.tune.pruning import Pruning, TrialDiverged

    pruning = Pruning(FakeTrial(after=99))
    state = SimpleNamespace(epoch=2, best_val_acc=0.5, train_seconds=1.0, history=[])
    run = SimpleNamespace(state=state, stop_signal=None, cfg=SimpleNamespace(train=SimpleNamespace(lr=3.0)),
                          error=Diverged("diverged", 40.0, 1.1, 2, 3))
    pruning.on_train_end(run)
    with pytest.raises(TrialDiverged, match=r"epoch 2, step 3 \(loss 40 at lr 3\)"):
        pruning.on_train_begin(run)


# ------------------------------------------------------------------------------------------------ the space
def test_the_space_file_takes_flag_names_sections_and_yaml(tmp_path):
    from alexnet.config import preset_config
    from alexnet.tune.space import read_space, trial_config

    flat = read_space(write_space(tmp_path, "lr = { low = 0.01, high = 1, log = true }\nweight-decay = 0.001\n"
                                            "batch_size = { choices = [16, 32] }\n"))
    assert [(p.name, p.kind) for p in flat.params] == [("lr", "float"), ("weight_decay", "fixed"),
                                                         ("batch_size", "choices")]
    yaml = read_space(write_space(tmp_path, "train:\n  lr: {low: 0.01, high: 1, log: true}\n  weight_decay: 0.001\n"
                                            "  batch_size: {choices: [16, 32]}\n", "space.yaml"))
    assert yaml.to_dict()["params"] == flat.to_dict()["params"]
    widths = read_space(write_space(tmp_path, "[model]\nwidths = { choices = [[8, 8, 8, 8, 8], [16, 16, 32, 32, 32]] }"
                                              "\n[train]\nepochs = { low = 2, high = 8, step = 2 }\n"))

    class Trial:  # picks the last choice and the low end
        def suggest_categorical(self, name, choices):
            return choices[-1]

        def suggest_int(self, name, low, high, step=1, log=False):
            return low

    values = widths.suggest(Trial())
    assert values == {"widths": (16, 16, 32, 32, 32), "epochs": 2}
    cfg = trial_config(preset_config("cifar10"), widths, values, 30.0)
    assert cfg.model.widths == (16, 16, 32, 32, 32) and cfg.train.epochs == 2
    assert cfg.train.val_every == 1 and not cfg.train.report and cfg.train.time_limit == 30.0
    # As optuna stores the choice ("16,16,32,32,32"), for a retried trial.
    assert widths.overrides({"widths": "16,16,32,32,32"})["model"]["widths"] == (16, 16, 32, 32, 32)


def test_the_default_space_varies_four_or_five_options_around_the_recipe():
    from alexnet.config import preset_config
    from alexnet.tune.space import default_space

    space = default_space(preset_config("cifar10"))  # Muon: its rate too
    assert [p.name for p in space.params] == ["lr", "muon_lr", "weight_decay", "batch_size", "label_smoothing"]
    lr = space.params[0]
    assert lr.log and lr.low == pytest.approx(0.1) and lr.high == pytest.approx(1.6)
    assert space.params[3].choices == (128, 256, 512)
    finetune = default_space(preset_config("finetune"))  # SGD
    assert [p.name for p in finetune.params] == ["lr", "weight_decay", "batch_size", "label_smoothing"]
    assert finetune.params[2].choices == (16, 32, 64)


# ------------------------------------------------------------------------------------------------ torchrun
RANKS = """
import json, sys, torch
from alexnet.engine import distributed
from alexnet.errors import AlexnetError
from alexnet.tune.ranks import DONE, follow, share

MESSAGES = [{"config": {"lr": 0.1}, "out": "trials/0000", "resume": None}, {"fail": True},
            {"config": {"lr": 0.2}, "out": "trials/0002", "resume": "trials/0001"}]
with distributed.held(torch.device("cpu")) as (info, _):
    distributed.teardown()  # as each train() ends: the group stays for the next trial
    if info.is_main:
        for message in MESSAGES:
            assert share(message, info) == message
        share(DONE, info)
        print(json.dumps({"rank": 0}))
    else:
        got = []

        def train(message):
            got.append(message)
            if message.get("fail"):
                raise AlexnetError("this trial failed")

        count = follow(info, train)
        print(json.dumps({"rank": info.rank, "count": count, "got": got}))
"""


def test_rank_0_sends_each_trial_and_the_other_ranks_follow_until_done(tmp_path):
    """Two gloo processes, as torchrun starts them: the follower trains what rank 0 sends, past a failed trial,
    over one process group kept across the trials."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", RANKS], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env))
    outs = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert outs[0] == {"rank": 0}
    assert outs[1]["count"] == 3
    assert outs[1]["got"] == [{"config": {"lr": 0.1}, "out": "trials/0000", "resume": None}, {"fail": True},
                              {"config": {"lr": 0.2}, "out": "trials/0002", "resume": "trials/0001"}]
