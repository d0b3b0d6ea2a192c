"""The training story: set a run up, restore it when resuming, then train epoch after epoch.

    run = set_up(cfg, ...)       data, model, optimiser, schedule, the callbacks
    restore(run, checkpoint)     a resumed run goes on from the very step it stopped at
    while the run goes on:
        train_epoch(run)         the epoch's steps, from run.state.step on
        end_epoch(run)           validate, append the history row

What needs the loop's moments (checkpoints, history files, the time limit, progress, early stopping,
TensorBoard, stopping on a signal) is a callback (callbacks.py), called at named points.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..classifier import view_passes
from ..config import RunConfig, validate
from ..data.memory import BatchLoader, images_digest, prefetch
from ..data.pipeline import InputSpec, build_training
from ..errors import AlexnetError, TrainingStopped
from ..models import create_model, default_image_size
from ..resume_options import apply_changes, resume_changes, resume_record
from . import distributed
from .budget import TimeBudget, clock_file, load_replay
from .callbacks import Callback, Checkpointing, EarlyStopping, GracefulStop, History, Progress, TimeLimit
from .checkpoint import (check_optimizer_state, load_checkpoint, load_weights, remove_stale_temp_files,
                         reported_write, restore_rng_state, write_json)
from .divergence import FACTOR, RESTARTS, DivergenceGuard, Diverged, lowered_rates
from .device import autocast, grad_scaler, hardware_info, precision, resolve_device, tune_cpu_allocator, versions
from .ema import EMA
from .evaluation import collect_logits, loss_and_accuracy
from .finetune import prepare_finetune
from .optim import build_optimizer, build_scheduler
from .progress import EpochProgress
from .resolution import epoch_side
from .run import Run, TrainState
from .tensorboard import TensorBoard
from .whitening import whiten_first_conv

# Validation outputs kept in best.pt for the report, up to this many logits (8 MB: 50,000 images x 40 classes).
MAX_SAVED_LOGITS = 2 ** 21


def train(cfg: RunConfig | None, out: str | Path | None = None, *, resume: str | Path | None = None,
          epochs: int | None = None, device: str | None = None, stop_after_epoch: int | None = None,
          progress: bool = True, started_at: float | None = None, time_limit: float | None = None,
          callbacks: list[Callback] | tuple[Callback, ...] = (), options: dict[str, dict[str, Any]] | None = None,
          preset: str | None = None) -> Path:
    """Train `cfg` into a run folder (or continue the run in `resume`) and return the folder.

    Under torchrun every rank calls this; rank 0 alone prints and writes files. `started_at` (time.time()) is
    when the command began, for --time-limit (default: now). A time-limited run resumes on its own clock when
    it stopped with time left, else only by steps (`time_limit=0`). SIGTERM/SIGINT stop it after the step in
    progress, with its position saved: `TrainingStopped` is raised. On resume, `options` ({"data"|"model"|
    "train": {field: value}}), `preset` and `out` may only change what leaves the run's results as they are
    (resume_options.py); the changes are recorded in RUN/config.json.
    """
    started_at = time.time() if started_at is None else started_at
    ckpt = load_checkpoint(Path(resume) / "last.pt") if resume is not None else None
    cfg = resolve_config(cfg, ckpt, resume, epochs, device, time_limit, options=options, preset=preset, out=out)
    resumed = resume_record(resume, RunConfig.from_dict(ckpt["config"]), cfg, ckpt) \
        if ckpt is not None and resume is not None else None
    attempts: list[dict[str, Any]] = []
    while True:
        run = set_up(cfg, Path(resume) if resume is not None else out, ckpt, progress, started_at, callbacks,
                     resumed=resumed)
        out = run.out
        try:
            return train_run(run, ckpt, stop_after_epoch)
        except Diverged as e:
            if ckpt is not None or run.info.enabled or len(attempts) >= RESTARTS:
                raise AlexnetError(diverged_message(run, e, attempts, final=True)) from None
            attempts.append({"lr": cfg.train.lr, "epoch": e.epoch, "step": e.step, "loss": e.loss,
                             "start": e.start, "history": run.state.history})
            cfg = replace(cfg, train=replace(cfg.train, **lowered_rates(cfg.train)))
            run.ui.print(diverged_message(run, e, attempts, final=False) + f": restarting from fresh weights at "
                         f"--lr {cfg.train.lr:g}")
            clear_attempt(run.out, attempts)


def train_run(run: Run, ckpt: dict[str, Any] | None, stop_after_epoch: int | None) -> Path:
    """One attempt at the run: restore a resumed one, train its epochs, end it."""
    cfg = run.cfg
    if ckpt is not None:
        restore(run, ckpt, str(run.out / "last.pt"))
    last_epoch = cfg.train.epochs if stop_after_epoch is None else min(stop_after_epoch, cfg.train.epochs)
    try:
        run.emit("on_train_begin")
        while run.state.epoch < last_epoch and run.stop_reason is None:
            if run.agree(run.stop_signal is not None)[0]:  # a signal that came between two epochs
                stop_on_signal(run)
            train_epoch(run)
            end_epoch(run)
    except BaseException as e:
        run.error = e
        raise
    finally:
        run.emit("on_train_end")
    if run.budget.enabled and run.info.is_main:
        with reported_write(run.out / "clock.json", run.saved_description(), run.out):
            write_json(run.out / "clock.json", clock_file(run.budget))  # --replay-clock reads it
    write_replica_report(run)
    return run.out


def diverged_message(run: Run, e: Diverged, attempts: list[dict[str, Any]], final: bool) -> str:
    """One line: where the loss ran away and from what; when the run stops, what was tried and what to try."""
    line = (f"the training loss rose to {e.loss:.3g} at epoch {e.epoch}, step {e.step}, over {FACTOR:g}x its start "
            f"({e.start:.3g}) at --lr {run.cfg.train.lr:g}")
    if not final:
        return line
    rates = [a["lr"] for a in attempts] + [run.cfg.train.lr]
    tried = f"; stopped after {len(rates)} tries (--lr {', '.join(f'{r:g}' for r in rates)})" if attempts else \
        "; training stopped"
    return (f"{line}{tried}: try a lower --lr (`alexnet lr-find` suggests one), a smaller --batch-size or "
            f"--warmup-epochs, or check the data; {run.saved_description()}")


def clear_attempt(out: Path, attempts: list[dict[str, Any]]) -> None:
    """Before a restart: the diverged attempt's checkpoints go (they hold a run that ran away), its history and
    rate stay on record in RUN/diverged.json."""
    for name in ("best.pt", "last.pt", "history.json", "history.csv"):
        (out / name).unlink(missing_ok=True)
    write_json(out / "diverged.json", attempts)


def resolve_config(cfg: RunConfig | None, ckpt: dict[str, Any] | None, resume: str | Path | None,
                   epochs: int | None = None, device: str | None = None, time_limit: float | None = None, *,
                   options: dict[str, dict[str, Any]] | None = None, preset: str | None = None,
                   out: str | Path | None = None) -> RunConfig:
    """The config to train with: a fresh run's as given; a resumed run's own, with the options that leave its
    results as they are (resume_options.py). One that would change them is refused here, before any work."""
    if ckpt is not None:
        given = {section: dict(values) for section, values in (options or {}).items()}
        for name, value in (("epochs", epochs), ("device", device), ("time_limit", time_limit)):
            if value is not None:
                given.setdefault("train", {})[name] = value
        saved = RunConfig.from_dict(ckpt["config"])
        changes = resume_changes(saved, given, resume if resume is not None else "the run", preset=preset,
                                 out=out)
        time_limit = changes["train"].pop("time_limit", None)  # the run's own value is no change
        epochs = device = None  # in `changes` now
        cfg = apply_changes(saved, changes)
        if time_limit:
            had = f"with --time-limit {saved.train.time_limit:g}" if saved.train.time_limit else "without --time-limit"
            raise AlexnetError(f"--time-limit cannot change on --resume, except to 0: {resume} was trained {had} (its "
                               "schedule so far followed steps or another command's clock); resume with --time-limit "
                               "0, or start a new run")
        clock = ckpt.get("clock")
        on_clock = bool(cfg.train.time_limit) and time_limit is None and clock is not None and not clock["spent"]
        if cfg.train.time_limit and time_limit is None and not on_clock:
            raise AlexnetError(f"the run in {resume} trained under --time-limit {cfg.train.time_limit:g} until its "
                               f"time was up; continue it by steps with --resume {resume} --time-limit 0, or start "
                               "a new run")
        if not on_clock:
            cfg = replace(cfg, train=replace(cfg.train, time_limit=0.0))
    assert cfg is not None
    if epochs is not None:
        cfg = replace(cfg, train=replace(cfg.train, epochs=epochs))
    if device is not None:
        cfg = replace(cfg, train=replace(cfg.train, device=device))
    return validate(cfg)


def new_run_dir(cfg: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.model.name}"


def prepare_run_dir(out: Path, resume: bool) -> None:
    """Refuse to train over a finished run (nothing already saved may be lost); clear what a killed one left."""
    if not resume and (out / "last.pt").exists():
        raise AlexnetError(f"--out {out} already holds a run (last.pt); pass --resume {out} to continue it "
                           "or choose another --out")
    if out.exists() and not out.is_dir():
        raise AlexnetError(f"--out {out} is a file; choose a folder path")
    with reported_write(out, "nothing was saved", None):
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(out)


def build_model(cfg: RunConfig, num_classes: int, image_size: int, device: torch.device) -> nn.Module:
    model = create_model(cfg.model.name, num_classes=num_classes, image_size=image_size, **cfg.model.options())
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_callbacks(cfg: RunConfig, user: list[Callback] | tuple[Callback, ...] = ()) -> list[Callback]:
    """The built-in callbacks around the user's: stop rules first (their reason then lands in the history row
    that the checkpoint saves), the user's, then checkpoints, history files, progress and loggers."""
    t = cfg.train
    callbacks: list[Callback] = [GracefulStop(), TimeLimit()]
    if t.early_stop:
        callbacks.append(EarlyStopping(t.early_stop, t.min_delta))
    callbacks += [*user, Checkpointing(), History(), Progress()]
    if t.tensorboard:
        callbacks.append(TensorBoard())
    return callbacks


def set_up(cfg: RunConfig, out: str | Path | None, ckpt: dict[str, Any] | None, progress: bool,
           started_at: float, user_callbacks: list[Callback] | tuple[Callback, ...] = (), *,
           resumed: list[dict[str, Any]] | None = None) -> Run:
    """Everything a run needs, built from its config: processes, data, model, optimiser, schedule, callbacks.
    `resumed`: config.json's record of the options changed on resume (resume_options.resume_record)."""
    info, dev = distributed.setup(resolve_device(cfg.train.device))
    if dev.type == "cpu":
        tune_cpu_allocator()
        torch.set_flush_denormal(cfg.train.flush_denormal)
    if cfg.train.time_limit and info.enabled:
        raise AlexnetError("--time-limit runs in one process (ranks' clocks would give them different learning "
                           "rates); drop --time-limit under torchrun")
    micro_batch = distributed.check_batch(cfg.train.batch_size, info.world_size, cfg.train.accum_steps)
    callbacks = build_callbacks(cfg, user_callbacks)  # a missing optional package fails before any data is read
    replay = load_replay(cfg.train.replay_clock, cfg.train.time_limit) if cfg.train.replay_clock else None
    out = Path(out) if out is not None else new_run_dir(cfg)
    if info.is_main:
        prepare_run_dir(out, ckpt is not None)
    torch.manual_seed(cfg.train.seed)
    ui = EpochProgress(progress and info.is_main)
    if cfg.recipe and ckpt is None:
        ui.print(cfg.recipe["line"])  # no preset: the recipe chosen from the data, and the data it saw

    t0 = time.perf_counter()
    image_size = cfg.data.image_size or default_image_size(cfg.model.name)
    data = build_training(cfg.data, image_size, micro_batch * cfg.train.accum_steps, cfg.train.seed, dev,
                          channels_last=cfg.train.channels_last, rank=info.rank, world_size=info.world_size,
                          spec=InputSpec.from_dict(ckpt["input"]) if ckpt else None,
                          lighting=ckpt.get("lighting") if ckpt else None)
    meta = {"classes": data.classes, "model_name": cfg.model.name, "image_size": image_size,
            "input": data.spec.to_dict(), "lighting": data.lighting}
    num_val = len(data.val.labels) if data.val else 0
    ui.print(f"data: {data.description}: {data.num_train:,} train, {num_val:,} val, {len(data.classes)} classes "
             f"({time.perf_counter() - t0:.1f}s)")

    model = build_model(cfg, len(data.classes), image_size, dev)
    tuned = prepare_finetune(model, cfg, data.classes, ckpt, meta, ui.print)  # --init-from, --freeze, --lr-backbone
    train_loader, val_loader = data.train, data.val.loader if data.val else None
    check_progressive(cfg, train_loader, image_size)
    optimizer = build_optimizer(model, cfg.train, tuned.lr_scales)
    # The report reuses the outputs of the validation that made best.pt (saved in it) for an in-memory split;
    # without a validation split it evaluates the training split.
    reused = (info.is_main and isinstance(val_loader, BatchLoader)
              and num_val * len(data.classes) <= MAX_SAVED_LOGITS)
    budget = TimeBudget(cfg.train.time_limit, started_at, val_images=num_val,
                        views=view_passes(cfg.train.tta, cfg.train.tta_shift), report=cfg.train.report and info.is_main,
                        report_images=0 if reused else (num_val or data.num_train))
    if replay is not None:  # the recorded readings stand in for the clock, against the recorded start
        budget.replay, budget.started = replay
    scheduler = build_scheduler(optimizer, cfg.train, len(train_loader), budget)
    if cfg.train.whiten and ckpt is None and isinstance(train_loader, BatchLoader):
        sample = train_loader.images[torch.randperm(len(train_loader.labels))[:5000].to(dev)]
        whiten_first_conv(model, train_loader.normalize(sample))
    ema = EMA(model, cfg.train.ema) if cfg.train.ema > 0 else None
    arithmetic = precision(dev, cfg.train.amp)  # what --amp resolved to here: bf16, fp16 or fp32
    if info.is_main:
        with reported_write(out / "config.json", "nothing was saved", None):
            write_json(out / "config.json", {"config": cfg.to_dict(), "dataset": data.description,
                                             "num_train": data.num_train, "num_val": num_val, **meta,
                                             # the validation split's classes: the chance level a score is read against
                                             "val_class_counts": np.bincount(np.asarray(data.val.labels), minlength=len(
                                                 data.classes)).tolist() if data.val else None,
                                             "world_size": info.world_size, "versions": versions(),
                                             "precision": arithmetic, "hardware": hardware_info(dev),
                                             **({"resumed": resumed} if resumed else {})})
    ui.print(f"model: {cfg.model.name} at {image_size}px, {sum(p.numel() for p in model.parameters()):,} "
             f"parameters; device {dev}, {arithmetic}"
             f"{f' x {info.world_size} processes' if info.enabled else ''}; run folder {out}")
    return Run(cfg=cfg, out=out, info=info, device=dev, data=data, model=model,
               run_model=wrap_model(model, cfg, info, dev), optimizer=optimizer, scheduler=scheduler,
               scaler=grad_scaler(dev, cfg.train.amp), ema=ema, budget=budget, meta=meta, ui=ui,
               image_size=image_size, reused=reused, callbacks=callbacks, started_at=started_at,
               guard=DivergenceGuard(len(data.classes)),
               val_digest=images_digest(val_loader.images) if reused else None)  # ties saved outputs to images


def restore(run: Run, ckpt: dict[str, Any], source: str) -> None:
    """Put a checkpoint's state back: weights, optimiser, schedule, loss scale, EMA, position, clock, RNG."""
    try:
        load_weights(run.model, ckpt["model"], source)
        run.optimizer.load_state_dict(ckpt["optimizer"])
        check_optimizer_state(run.optimizer, source)
        run.scheduler.load_state_dict(ckpt["scheduler"])
        if run.scaler.is_enabled() and "scaler" in ckpt:
            run.scaler.load_state_dict(ckpt["scaler"])
        if run.ema is not None:
            load_weights(run.ema.shadow, ckpt["ema"], source)
        steps = len(run.train_loader)
        run.state = TrainState(epoch=int(ckpt["epoch"]), step=int(ckpt.get("step", 0)),
                               global_step=int(ckpt.get("global_step", ckpt["epoch"] * steps)),
                               history=list(ckpt["history"]), best_val_acc=float(ckpt["best_val_acc"]),
                               train_seconds=float(ckpt["train_seconds"]), partial=ckpt.get("partial"))
        if run.guard is not None:
            run.guard.start = ckpt.get("loss_start")  # None (older checkpoints): measured again from here
        if not 0 <= run.state.step <= steps:
            raise ValueError(f"step {run.state.step} is outside an epoch of {steps} steps")
        if run.budget.enabled and ckpt.get("clock"):
            run.budget.wind(ckpt["clock"], run.started_at)  # the time left when it stopped
        restore_rng_state(ckpt["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        raise AlexnetError(f"{source} holds no state this run can resume from ({type(e).__name__}: {reason}); "
                           "start a new run") from None
    run.saved = (run.state.epoch, run.state.step)


def train_epoch(run: Run) -> None:
    """The steps of epoch `state.epoch`, from `state.step` on. After a stop signal, once Checkpointing has
    saved the position, TrainingStopped is raised."""
    s = run.state
    run.begin_epoch()
    run.emit("on_epoch_begin", s.epoch)
    run.run_model.train()
    steps = len(run.train_loader)
    last = time.perf_counter()
    for x, y in prefetch(iter(run.train_loader), run.device):
        loss, correct = forward_backward(run, x, y)
        value = loss.item()
        finite = math.isfinite(value)
        bad, diverged, stop, save = run.agree(not finite, finite and run.guard.observe(value),
                                              run.stop_signal is not None, run.save_due())
        if bad:
            raise AlexnetError(f"the loss became {value} at epoch {s.epoch + 1}, step {s.step + 1}; "
                               "training stopped and the last good checkpoint is kept; try a lower --lr")
        if diverged:
            raise Diverged("diverged", run.guard.recent_loss(), run.guard.start or 0.0, s.epoch + 1, s.step + 1)
        optimizer_step(run)
        run.add_to_sums(loss, correct, len(y))
        s.step += 1
        s.global_step += 1
        now = time.perf_counter()
        final = s.step == steps
        logs = {"epoch": s.epoch, "global_step": s.global_step, "loss": loss.item(),
                "accuracy": correct.item() / len(y), "lr": run.optimizer.param_groups[0]["lr"], "images": len(y),
                "seconds": now - last, "images_per_s": len(y) * run.info.world_size / max(now - last, 1e-9),
                "last": final or stop, "save": save and not final, "stop": stop}
        last = now
        run.emit("on_step_end", s.step - 1, logs)
        if stop:
            stop_on_signal(run)
        if run.ending_epoch:
            break


def forward_backward(run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's loss (over its micro-batches) and correct count; the gradients are accumulated."""
    accum, train = run.cfg.train.accum_steps, run.cfg.train
    logits, loss = None, torch.zeros((), device=run.device)
    for i, (xm, ym) in enumerate(zip(x.chunk(accum), y.chunk(accum))):
        # DDP all-reduces gradients on the last micro-batch only.
        sync = i == accum - 1 or not run.info.enabled
        with (run.run_model.no_sync() if not sync else contextlib.nullcontext()), autocast(run.device, train.amp):
            out = run.run_model(xm)
            micro = F.cross_entropy(out, ym, label_smoothing=train.label_smoothing) * (len(ym) / len(y))
        run.scaler.scale(micro).backward()
        loss += micro.detach()
        logits = out.detach() if logits is None else torch.cat([logits, out.detach()])
    return loss, (logits.argmax(1) == y).sum()


def optimizer_step(run: Run) -> None:
    if run.cfg.train.clip_grad:
        run.scaler.unscale_(run.optimizer)  # clip the true gradients, not fp16's scaled ones
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.train.clip_grad)
    run.scaler.step(run.optimizer)  # with fp16, skips the step when a gradient overflowed
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(getattr(run.run_model, "module", run.run_model))


def end_epoch(run: Run) -> None:
    """Validate when it is due and append the epoch's history row; the callbacks save, print, decide to go on."""
    s, cfg, budget = run.state, run.cfg, run.budget
    train_loss, train_acc, seen = run.epoch_means()
    train_time = run.epoch_seconds()
    epoch, out_of_time = s.epoch, budget.spent()
    every, last = cfg.train.val_every, epoch + 1 == cfg.train.epochs or out_of_time or run.stop_reason is not None
    scheduled = every > 0 and (epoch + 1) % every == 0
    if scheduled and not last and budget.would_cross(budget.eval_seconds()):
        scheduled = False  # it would eat into the final validation's time: train on, validate at the end
    validated = run.val_loader is not None and (last or scheduled)
    val_loss = val_acc = float("nan")
    outputs: dict[str, Any] = {}
    if validated:
        val_loss, val_acc, logits, labels = validate_epoch(run.ema.shadow if run.ema else validation_module(run),
                                                           run.val_loader, cfg, run.device, run.info)
        if run.reused:
            outputs = {"val_logits": logits, "val_labels": labels, "val_digest": run.val_digest}
        out_of_time = out_of_time or budget.spent()  # it took longer than estimated: let it be the final one
    run.out_of_time = out_of_time
    run.scheduler.epoch_end(val_acc)
    seconds = run.epoch_seconds()
    s.epoch, s.step, s.partial = epoch + 1, 0, None
    s.train_seconds += seconds
    row = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
           "val_acc": val_acc, "lr": run.optimizer.param_groups[0]["lr"], "images_per_s": seen / train_time,
           "seconds": seconds}
    s.history.append(row)
    # Without a validation split the latest epoch is the best one we can know of. An epoch skipped by
    # --val-every has no score: it writes best.pt only while none has been scored, so best.pt always exists.
    scored = validated or run.val_loader is None
    score = val_acc if run.val_loader is not None else float(s.epoch)
    improved = score > s.best_val_acc if scored else s.best_val_acc < 0
    if improved and scored:
        s.best_val_acc = score
    logs = {**row, "validated": validated, "improved": improved, "out_of_time": out_of_time, "side": run.side,
            "outputs": outputs}
    run.emit_epoch_end(epoch, logs, row)


def validation_module(run: Run) -> nn.Module:
    """What validates: the module the loop trains, except under a time limit with --compile, where evaluation
    mode would be compiled a second time, at a cost the budget cannot foresee: the same weights uncompiled."""
    if run.budget.enabled and hasattr(run.run_model, "_orig_mod"):
        return run.run_model._orig_mod
    return run.run_model


def validate_epoch(model: nn.Module, loader: BatchLoader, cfg: RunConfig, device: torch.device,
                   info: distributed.Dist) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """Validation loss, accuracy, logits and labels over the whole split: each rank runs a share, the logits
    are gathered."""
    logits, labels = collect_logits(model, loader, device, cfg.train.amp, cfg.train.tta,
                                    cfg.train.tta_shift)
    total = len(loader.labels)
    logits = distributed.gather_strided(logits.to(device), total, info).cpu()
    labels = distributed.gather_strided(labels.to(device), total, info).cpu()
    return *loss_and_accuracy(logits, labels), logits, labels


def stop_on_signal(run: Run) -> None:
    """Every rank saw the signal after the same step, and last.pt holds this position: end the run."""
    if run.info.enabled:
        torch.distributed.barrier()  # rank 0's last.pt is whole before any rank exits
    s, signal = run.state, run.stop_signal or "a stop signal"
    if run.saved is None:
        raise TrainingStopped(f"stopped by {signal} before the first step; nothing was trained: run the same "
                              "command again", show=run.info.is_main)
    where = f"step {s.step}/{len(run.train_loader)} of epoch {s.epoch + 1}" if s.step else f"epoch {s.epoch}"
    raise TrainingStopped(f"stopped by {signal} after {where}; {run.out / 'last.pt'} holds that position: "
                          f"continue with `alexnet train --resume {run.out}`", show=run.info.is_main)


def write_replica_report(run: Run) -> None:
    """Under torchrun: whether every replica ended with the same weights (distributed.json)."""
    if not run.info.enabled:
        return
    prints = distributed.weight_fingerprints(run.model, run.info)
    if run.info.is_main:
        write_json(run.out / "distributed.json", {"world_size": run.info.world_size, "weight_fingerprints": prints,
                                                  "replicas_identical": all(p == prints[0] for p in prints)})


def check_progressive(cfg: RunConfig, loader: Any, image_size: int) -> None:
    """Progressive resizing shrinks in-memory batches, and only below the model's input side."""
    start = cfg.train.res_start
    if not start:
        return
    if not isinstance(loader, BatchLoader):
        raise AlexnetError(f"--res-start works on in-memory data only, and {cfg.data.source} is streamed; "
                           "drop --res-start or pass --loader memory")
    if start >= image_size:
        raise AlexnetError(f"--res-start {start} must be below the input side {image_size} px")


def wrap_model(model: nn.Module, cfg: RunConfig, info: distributed.Dist, device: torch.device) -> nn.Module:
    """The module the loop calls: optionally SyncBatchNorm + DistributedDataParallel, then torch.compile."""
    if info.enabled:
        if cfg.train.sync_bn:
            if device.type != "cuda":
                raise AlexnetError("--sync-bn needs CUDA devices (torch's SyncBatchNorm has no CPU kernel); "
                                   "drop --sync-bn on CPU")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    return torch.compile(model) if cfg.train.compile else model
