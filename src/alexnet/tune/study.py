"""`alexnet tune`: an optuna study whose trials are ordinary `alexnet train` runs.

    tune(options)
        open the storage, create or join the study (its settings are stored with it)
        while the study lacks finished trials:        StudyTotal, after every trial
            ask a trial, draw its options (space.py), train it into DIR/trials/NNNN (pruning.py)
        write trials.csv/json, best.toml, the plots and summary.html (summary.py)

--trials N counts the study's COMPLETE and PRUNED trials, whichever worker ran them: optuna's MaxTrialsCallback
after every trial, and before a trial starts, the trials other workers are running count too, so that workers
sharing a study end with N finished trials between them (a worker that finds the rest running elsewhere waits
for them: one of them may die and be queued again). Two workers can still ask for the last trial at the same
moment; the one with the later trial number sees the other's and ends its own as a FAIL that ran nothing
(user attr `surplus`).

A trial stopped by SIGTERM or SIGINT (the training loop's own graceful stop: the step finishes, last.pt is
saved) is recorded as a FAIL with user attr `interrupted` and queued again with the same parameters (optuna's
retry callback: a WAITING copy with system attr `failed_trial`), the summary is written and the command exits
with 75, as `alexnet train` does. The next `alexnet tune` on the study takes that copy first and continues the
stopped run folder from last.pt (`alexnet.api.train(resume=...)`) instead of starting over. The copy of a
trial whose worker was killed outright (storage.py) continues its folder the same way when this DIR holds it.
A trial whose loss diverges is pruned where it diverged, not restarted at a lower rate (pruning.py).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from ..config import RunConfig, validate
from ..config_files import resolve_config
from ..engine import distributed
from ..engine.device import resolve_device
from ..errors import AlexnetError, TrainingStopped
from .pruning import Pruning, TrialDiverged
from .ranks import DONE, follow, share
from .space import Space, default_space, read_space, trial_config, with_fixed
from .storage import fail_dead_trials, open_storage, quiet_optuna, retry_callback, worker_identity
from .summary import closing_table, write_summary

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_FAILURES = 3  # trials failing in a row (the data, the disk...) end this worker
POLL_SECONDS = 2.0  # how often a worker waiting on other workers' last trials looks again
SETTINGS = "alexnet"  # the study's user attr holding the settings it was started with
# What each run of a trial records; a queued copy starts with the attrs of the trial it repeats.
ATTEMPT_ATTRS = ("interrupted", "error", "epochs", "train_seconds", "resumed", "resume_failed", "pruned", "diverged",
                 "surplus")
PRUNERS = ("median", "asha", "hyperband", "none")
SAMPLERS = ("tpe", "random")


@dataclass(frozen=True)
class TuneOptions:
    data: str
    out: Path
    trials: int = 20
    preset: str | None = None  # None: the study's (joining), else the default recipe
    space: str | None = None
    time_limit: float | None = None  # --time-limit-per-trial
    storage: str | None = None
    study: str = "alexnet"
    pruner: str | None = None
    sampler: str | None = None
    seed: int | None = None
    quiet: bool = False


class Surplus(Exception):
    """A trial asked for when the study already had its trials (two workers asked at once)."""


class TrialSeeded(optuna.samplers.BaseSampler):
    """--sampler, seeded anew for every trial from --seed and the trial's number: one worker draws the same
    trials on every run, and workers sharing a study never draw the same sequence (a sampler seeded once would
    hand each of them the same first trials)."""

    def __init__(self, kind: str, seed: int):
        self.kind, self.seed = kind, seed
        self.inner = self.make(seed)

    def make(self, seed: int) -> optuna.samplers.BaseSampler:
        if self.kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # constant_liar: trials running in other workers count as bad, so that workers spread out
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner = self.make(int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0]))
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, distribution: Any) -> Any:
        return self.inner.sample_independent(study, trial, param_name, distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        pass  # the seed comes from the trial's number


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """optuna's pruners with their defaults: median (below the median of earlier trials at the same epoch, from
    the 6th trial on), asha (asynchronous successive halving), hyperband, none."""
    return {"median": optuna.pruners.MedianPruner, "asha": optuna.pruners.SuccessiveHalvingPruner,
            "hyperband": optuna.pruners.HyperbandPruner, "none": optuna.pruners.NopPruner}[name]()


class StudyTotal(MaxTrialsCallback):
    """--trials N: the study's COMPLETE and PRUNED trials (MaxTrialsCallback), then whether this worker starts
    another trial or waits for the ones running elsewhere (`Worker.proceed`)."""

    def __init__(self, worker: "Worker"):
        super().__init__(worker.options.trials, states=FINISHED)
        self.worker = worker

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        super().__call__(study, trial)
        if not self.worker.proceed(study):
            study.stop()


def pending(trial: FrozenTrial) -> tuple[int, int]:
    """The order in which trials claim the study's places: queued copies (retries, continued runs) first, then
    by number. Every worker computes the same order from the storage."""
    queued = "failed_trial" in trial.system_attrs or "fixed_params" in trial.system_attrs
    return (0 if queued else 1, trial.number)


class Worker:
    """Rank 0's side of a study (the only process that talks to the storage)."""

    def __init__(self, options: TuneOptions, info: distributed.Dist):
        self.options, self.info = options, info
        self.out = Path(options.out)
        self.failures = 0
        self.last_error: str | None = None
        self.stop_signal: str | None = None  # a signal between trials
        self.stopped: tuple[int, str, str] | None = None  # (trial, its run folder, the signal) of a stopped trial
        self.waiting_shown = False
        self.previous_handlers: dict[int, Any] = {}

    # ------------------------------------------------------------------------------------------ set-up
    def open(self) -> optuna.Study:
        """Open the storage, read the settings a joined study was started with, build the base config and the
        space, create or load the study."""
        o = self.options
        quiet_optuna()
        self.storage = open_storage(o.storage, self.out)
        stored = self.stored_settings()
        settings = self.settings(stored)
        self.pruner_name, self.sampler_name, self.seed = settings["pruner"], settings["sampler"], settings["seed"]
        self.time_limit = settings["time_limit_per_trial"]
        self.base, self.space = self.build(settings, stored)
        if self.time_limit and self.info.enabled:
            raise AlexnetError("--time-limit-per-trial runs in one process (ranks' clocks would give them different "
                               "learning rates); drop it under torchrun")
        study = optuna.create_study(storage=self.storage.storage, study_name=o.study, direction="maximize",
                                    load_if_exists=True, sampler=TrialSeeded(self.sampler_name, self.seed),
                                    pruner=make_pruner(self.pruner_name))
        if stored is None:
            record = {**{k: settings[k] for k in ("preset", "time_limit_per_trial", "seed", "sampler", "pruner")},
                      "space": self.space.to_dict(), "data": o.data}
            if study.user_attrs.get(SETTINGS) is None:
                study.set_user_attr(SETTINGS, record)
            kept = study.user_attrs[SETTINGS]  # another worker may have created it at the same moment
            self.compare(kept, settings)
            if kept["space"]["params"] != record["space"]["params"]:
                raise AlexnetError(f"study {o.study!r} in {self.storage.description} was just started by another "
                                   "worker with another space; pass the same --space, or name another --study")
        self.study = study
        return study

    def stored_settings(self) -> dict[str, Any] | None:
        try:
            study = optuna.load_study(study_name=self.options.study, storage=self.storage.storage)
        except KeyError:
            return None
        settings = study.user_attrs.get(SETTINGS)
        if settings is None:
            raise AlexnetError(f"study {self.options.study!r} in {self.storage.description} was not started by "
                               "`alexnet tune`; name another --study")
        return settings

    def settings(self, stored: dict[str, Any] | None) -> dict[str, Any]:
        """The study's settings: a new study's from the flags (or the defaults), a joined one's as stored, where
        a flag may only repeat them."""
        o = self.options
        given = {"preset": o.preset, "time_limit_per_trial": o.time_limit, "seed": o.seed, "sampler": o.sampler,
                 "pruner": o.pruner}
        if stored is None:
            defaults = {"preset": None, "time_limit_per_trial": None, "seed": 0, "sampler": "tpe", "pruner": "median"}
            return {k: v if v is not None else defaults[k] for k, v in given.items()}
        self.compare(stored, given)
        return {k: stored.get(k) for k in given}

    def compare(self, stored: dict[str, Any], given: dict[str, Any]) -> None:
        flags = {"preset": "--preset", "time_limit_per_trial": "--time-limit-per-trial", "seed": "--seed",
                 "sampler": "--sampler", "pruner": "--pruner"}
        for key, flag in flags.items():
            if given.get(key) is not None and given[key] != stored.get(key):
                was = stored.get(key)
                raise AlexnetError(f"study {self.options.study!r} in {self.storage.description} was started with "
                                   f"{flag} {was if was is not None else '(not given)'}, not {given[key]}: repeat "
                                   "its options or leave them out (a worker joining a study takes its settings), "
                                   "or name another --study")

    def build(self, settings: dict[str, Any], stored: dict[str, Any] | None) -> tuple[RunConfig, Space]:
        """The base config (the preset or the data's recipe, with the space's fixed values, the seed) and the
        space, every end of every range checked against it. A joined study's space is the stored one; a --space
        given too must come to the same."""
        o = self.options
        if o.data != "cifar10" and not Path(o.data).expanduser().exists():
            raise AlexnetError(f"--data {o.data}: no such file or folder")
        given = read_space(o.space) if o.space else None
        joined = Space.from_dict(stored["space"]) if stored is not None else None
        base, space = self.complete(joined or given, settings)
        if joined is not None and given is not None:
            _, mine = self.complete(given, settings)
            if mine.to_dict()["params"] != joined.to_dict()["params"]:
                raise AlexnetError(f"study {o.study!r} in {self.storage.description} searches another space "
                                   f"({joined.source}: {joined.describe()}); pass the same --space, leave it out, "
                                   "or name another --study")
        where = f"--space {o.space}" if given is not None and joined is None else space.source
        space.check(lambda values: trial_config(base, space, values, settings["time_limit_per_trial"]), where)
        return base, space

    def complete(self, space: Space | None, settings: dict[str, Any]) -> tuple[RunConfig, Space]:
        """The base config for `space`'s fixed values, and the space to search: `space` itself, or with the
        default space added when it searches nothing (no file, or a file of fixed values only)."""
        o = self.options
        fixed = space.fixed_overrides() if space is not None else {"data": {}, "model": {}, "train": {}}
        source = str(Path(o.data).expanduser().resolve()) if o.data != "cifar10" else o.data
        flags = {**fixed, "data": {**fixed["data"], "source": source},
                 "train": {**fixed["train"], "seed": fixed["train"].get("seed", settings["seed"])}}
        base = validate(resolve_config(settings["preset"], flags, None))
        if base.data.val_split <= 0:
            raise AlexnetError("alexnet tune scores each trial on the validation split, and this recipe holds none "
                               "out (--val-split 0): set val_split in the --space file's [data] table")
        if space is None or not space.searched:
            defaults = with_fixed(default_space(base), fixed)
            space = Space((*(space.params if space else ()), *defaults.params),
                          f"{space.source} with {defaults.source}" if space else defaults.source)
        return base, space

    # ------------------------------------------------------------------------------------------ the loop
    def proceed(self, study: optuna.Study) -> bool:
        """Whether to start another trial: no while a stop signal came, MAX_FAILURES trials failed in a row or
        the study has its finished trials; yes while places are left (or a queued copy waits); else wait for the
        trials running in other workers (one may die and be queued again)."""
        while True:
            if self.stop_signal or self.failures >= MAX_FAILURES:
                return False
            fail_dead_trials(study, self.out, self.storage.heartbeat)
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            running = [t.number for t in trials if t.state == TrialState.RUNNING]
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            if finished >= self.options.trials:
                return False
            if waiting or finished + len(running) < self.options.trials:
                self.waiting_shown = False
                return True
            if not self.waiting_shown:
                self.say(f"{finished} of {self.options.trials} trials finished; waiting for trial"
                         f"{'s' * (len(running) > 1)} {', '.join(map(str, running))}, running in another worker")
                self.waiting_shown = True
            time.sleep(POLL_SECONDS)

    def run(self) -> None:
        study = self.open()
        o = self.options
        self.say(f"study {o.study!r} in {self.storage.description}: {plural(o.trials, 'trial')}, "
                 f"{self.sampler_name} sampler (seed {self.seed}), {self.pruner_name} pruner; searching "
                 f"{self.space.describe()}")
        self.catch_signals()
        try:
            if self.proceed(study):
                study.optimize(self.objective, callbacks=[StudyTotal(self)], catch=(AlexnetError, Surplus),
                               gc_after_trial=True)
        except TrainingStopped:
            pass  # recorded in self.stopped by the objective
        finally:
            self.restore_signals()
        self.finish(study)

    def finish(self, study: optuna.Study) -> None:
        o = self.options
        written = write_summary(study, self.out, self.space, o.study, self.storage.description, o.trials)
        table = closing_table(study, self.space, o.trials)
        self.print_table(table)
        for line in written:
            self.say(line)
        if self.stopped is not None:
            number, folder, name = self.stopped
            raise TrainingStopped(f"stopped by {name} in trial {number}; {folder}/last.pt holds its position and the "
                                  "study has it queued: the same `alexnet tune` command continues it")
        if self.stop_signal:
            raise TrainingStopped(f"stopped by {self.stop_signal} between trials; the same `alexnet tune` command "
                                  "goes on with the study")
        if self.failures >= MAX_FAILURES:
            raise AlexnetError(f"{self.failures} trials in a row failed, the last with: {self.last_error}")

    # ------------------------------------------------------------------------------------------ one trial
    def objective(self, trial: optuna.Trial) -> float:
        number = trial.number
        inherited = dict(trial.user_attrs)  # a queued copy's: those of the trial it repeats
        trial.set_user_attr("worker", worker_identity(number))
        for key in ATTEMPT_ATTRS:
            if inherited.get(key) is not None:
                trial.set_user_attr(key, None)
        frozen = self.frozen(trial)
        self.check_place(trial, frozen)
        repeats = frozen.system_attrs.get("failed_trial")
        folder = self.out / "trials" / f"{number:04d}"
        resume = None
        if repeats is not None and inherited.get("run") and (self.out / inherited["run"] / "last.pt").is_file():
            resume = self.out / inherited["run"]
        pruning = Pruning(trial, self.pruner_name, lambda: self.stop_signal)
        started = time.monotonic()
        try:
            values = self.space.suggest(trial)
            cfg = trial_config(self.base, self.space, values, self.time_limit)
            trial.set_user_attr("config", cfg.to_dict())
            again = f" (trial {repeats} again{f', continuing {resume}' if resume else ''})" \
                if repeats is not None else ""
            self.say(f"trial {number}{again}: {', '.join(f'{k} {show_value(v)}' for k, v in values.items())}")
            try:
                self.train(trial, cfg, resume or folder, resume is not None, pruning)
            except AlexnetError as e:
                if resume is None or pruning.started:
                    raise
                trial.set_user_attr("resume_failed", str(e))
                self.say(f"trial {number}: {resume} cannot be continued ({e}); training afresh in {folder}")
                pruning = Pruning(trial, self.pruner_name, lambda: self.stop_signal)
                self.train(trial, cfg, folder, False, pruning)
        except TrialDiverged as e:
            self.failures = 0
            trial.set_user_attr("diverged", e.info)
            trial.set_user_attr("epochs", pruning.epochs)
            self.say(f"trial {number}: {e}; stopped there (pruned) rather than restarted at a lower rate")
            raise optuna.TrialPruned(str(e)) from None
        except TrainingStopped:
            name = pruning.stop_signal or self.stop_signal or "a signal"
            trial.set_user_attr("interrupted", {"signal": name, "epochs": pruning.epochs})
            retry_callback()(self.study, self.frozen(trial))  # queued again: the next worker continues its folder
            self.stopped = (number, str(self.out / trial.user_attrs["run"]), name)
            raise
        except AlexnetError as e:
            self.failures += 1
            self.last_error = str(e)
            trial.set_user_attr("error", str(e))
            self.say(f"trial {number} failed: {e}")
            raise
        self.failures = 0
        seconds = time.monotonic() - started
        trial.set_user_attr("epochs", pruning.epochs)
        trial.set_user_attr("train_seconds", pruning.seconds)
        if pruning.pruned is not None:
            p = pruning.pruned
            trial.set_user_attr("pruned", p)
            self.say(f"trial {number}: pruned after epoch {p['epoch']} ({p['value'] * 100:.2f}% validation "
                     f"accuracy; {seconds:.1f}s)")
            raise optuna.TrialPruned(f"pruned after epoch {p['epoch']}")
        self.say(f"trial {number}: {pruning.best * 100:.2f}% best validation accuracy in "
                 f"{plural(pruning.epochs, 'epoch')} ({seconds:.1f}s)")
        return pruning.best

    def train(self, trial: optuna.Trial, cfg: RunConfig, folder: Path, resume: bool, pruning: Pruning) -> None:
        trial.set_user_attr("run", folder.relative_to(self.out).as_posix())
        if resume:
            trial.set_user_attr("resumed", True)
        message = {"config": cfg.to_dict(), "out": str(folder), "resume": str(folder) if resume else None}
        share(message, self.info)
        train_trial(message, pruning, progress=not self.options.quiet)

    def check_place(self, trial: optuna.Trial, frozen: FrozenTrial) -> None:
        """This trial's place in the study: the finished trials, and the running and queued ones before it in
        `pending` order, must leave one (else another worker asked for the last place first)."""
        trials = self.study.get_trials(deepcopy=False)
        ahead = sum(t.state in FINISHED or (t.state in (TrialState.RUNNING, TrialState.WAITING)
                                            and t.number != frozen.number and pending(t) < pending(frozen))
                    for t in trials)
        if ahead >= self.options.trials:
            trial.set_user_attr("surplus", True)
            self.say(f"trial {frozen.number}: not run, the study has its {self.options.trials} trials")
            raise Surplus("the study had its trials")

    def frozen(self, trial: optuna.Trial) -> FrozenTrial:
        """The trial as the storage holds it (its system attrs: whether it repeats another)."""
        return next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)

    # ------------------------------------------------------------------------------------------ signals, output
    def catch_signals(self) -> None:
        """Between trials a SIGTERM or SIGINT ends the study after the trial in progress sets up (the training
        loop's own handler takes over while a trial trains); a second one ends the process at once."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handle(signum: int, frame: Any) -> None:
            self.stop_signal = signal.Signals(signum).name
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)

        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous_handlers[sig] = signal.signal(sig, handle)

    def restore_signals(self) -> None:
        for sig, handler in self.previous_handlers.items():
            signal.signal(sig, handler)
        self.previous_handlers = {}

    def say(self, line: str) -> None:
        print(line, flush=True)

    def print_table(self, table: Any) -> None:
        # Piped output keeps whole lines (rich would otherwise fold the table to 80 columns).
        Console(highlight=False, width=None if sys.stdout.isatty() else 240).print(table)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def show_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def train_trial(message: dict[str, Any], pruning: Pruning, progress: bool) -> Path:
    """Train one trial's run, on every rank alike: `message` holds its config and folder, or the folder it
    continues."""
    from ..api import train  # lazy: the trainer, once a trial starts

    if message["resume"]:
        return train(resume=message["resume"], callbacks=[pruning], progress=progress, started_at=time.time())
    return train(RunConfig.from_dict(message["config"]), out=message["out"], callbacks=[pruning], progress=progress,
                 started_at=time.time())


def tune(options: TuneOptions) -> None:
    """`alexnet tune`: run trials until the study has `options.trials` finished ones, then write the summary.
    Under torchrun every rank calls this; rank 0 runs the study and the others train its trials with it."""
    if options.pruner is not None and options.pruner not in PRUNERS:
        raise AlexnetError(f"--pruner must be one of {', '.join(PRUNERS)}")
    if options.sampler is not None and options.sampler not in SAMPLERS:
        raise AlexnetError(f"--sampler must be one of {', '.join(SAMPLERS)}")
    if options.time_limit is not None and options.time_limit < 0:
        raise AlexnetError("--time-limit-per-trial must be >= 0 seconds (0 = none)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    with distributed.held(resolve_device("auto") if world > 1 else resolve_device("cpu")) as (info, _):
        if not info.is_main:
            follow(info, lambda message: train_trial(message, Pruning(None), progress=False))
            return
        try:
            Worker(options, info).run()
        finally:
            share(DONE, info)  # the other ranks leave too
