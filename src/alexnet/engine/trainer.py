"""The training story: read data, build the model, loop over epochs, validate, checkpoint, report."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RunConfig, validate
from ..data.memory import BatchLoader, images_digest, prefetch
from ..data.pipeline import InputSpec, build_training
from ..errors import AlexnetError
from ..models import create_model, default_image_size
from .budget import TimeBudget
from .checkpoint import (atomic_write, load_checkpoint, restore_rng_state, rng_state, save_checkpoint,
                         write_json)
from . import distributed
from .device import autocast, grad_scaler, hardware_info, precision, resolve_device, tune_cpu_allocator, versions
from .ema import EMA
from .evaluation import collect_logits, loss_and_accuracy, tta_views
from .optim import build_optimizer, build_scheduler
from .progress import EpochProgress
from .resolution import epoch_side
from .whitening import whiten_first_conv

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "seconds"]


@dataclass
class TrainState:
    """What changes as training goes: restored exactly on --resume."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_acc: float = -1.0
    train_seconds: float = 0.0


def new_run_dir(cfg: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.model.name}"


def prepare_run_dir(out: Path, resume: bool) -> None:
    """Refuse to train over a finished run: nothing already saved may be lost."""
    if not resume and (out / "last.pt").exists():
        raise AlexnetError(f"--out {out} already holds a run (last.pt); pass --resume {out} to continue it "
                           "or choose another --out")
    if out.exists() and not out.is_dir():
        raise AlexnetError(f"--out {out} is a file; choose a folder path")
    out.mkdir(parents=True, exist_ok=True)


def build_model(cfg: RunConfig, num_classes: int, image_size: int, device: torch.device) -> nn.Module:
    model = create_model(cfg.model.name, num_classes=num_classes, image_size=image_size, **cfg.model.options())
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def write_history(out: Path, history: list[dict[str, Any]]) -> None:
    """history.csv and history.json, like Keras' History, rewritten atomically each epoch."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(history)

    def write_csv(tmp: str) -> None:
        Path(tmp).write_text(buf.getvalue())

    atomic_write(out / "history.csv", write_csv)
    write_json(out / "history.json", history)


def train_one_epoch(model: nn.Module, loader: BatchLoader, optimizer: torch.optim.Optimizer,
                    scheduler: Any, cfg: RunConfig, device: torch.device, progress: EpochProgress,
                    epoch: int, info: distributed.Dist, ema: EMA | None = None,
                    scaler: torch.amp.GradScaler | None = None, budget: TimeBudget | None = None,
                    cost_scale: float = 1.0) -> tuple[float, float, int]:
    """One pass over the training split; returns (mean loss, accuracy, images seen), reduced over ranks.

    With a time `budget`, the pass ends early once the time left is what the end of the run needs."""
    model.train()
    loader.set_epoch(epoch)
    scaler = scaler or grad_scaler(device, "off")
    accum = cfg.train.accum_steps
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    start = last = time.perf_counter()
    progress.start(f"epoch {epoch + 1}/{cfg.train.epochs}", len(loader))
    try:
        for step, (x, y) in enumerate(prefetch(iter(loader), device)):
            logits, loss = None, torch.zeros((), device=device)
            for i, (xm, ym) in enumerate(zip(x.chunk(accum), y.chunk(accum))):
                # DDP all-reduces gradients on the last micro-batch only.
                sync = i == accum - 1 or not info.enabled
                with (model.no_sync() if not sync else contextlib.nullcontext()), autocast(device, cfg.train.amp):
                    out = model(xm)
                    micro = F.cross_entropy(out, ym, label_smoothing=cfg.train.label_smoothing) * (len(ym) / len(y))
                scaler.scale(micro).backward()
                loss += micro.detach()
                logits = out.detach() if logits is None else torch.cat([logits, out.detach()])
            bad = not math.isfinite(loss.item())
            if distributed.broadcast_flag(bad, device) if info.enabled else bad:
                raise AlexnetError(f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                                   "training stopped and the last good checkpoint is kept; try a lower --lr")
            scaler.step(optimizer)  # with fp16, skips the step when a gradient overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update(getattr(model, "module", model))
            loss_sum += loss * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if step % 5 == 0 or step + 1 == len(loader):
                rate = seen * info.world_size / (time.perf_counter() - start)
                progress.update(step + 1, loss_sum.item() / seen, correct.item() / seen, rate)
            if budget is not None and budget.enabled:
                now = time.perf_counter()
                budget.observe_step(now - last, len(y), cost_scale)
                last = now
                if budget.spent():
                    break
    finally:
        progress.stop()
    totals = distributed.all_reduce_sum(torch.stack([loss_sum, correct, torch.tensor(float(seen), device=device)]))
    n = max(totals[2].item(), 1)
    return totals[0].item() / n, totals[1].item() / n, int(totals[2].item())


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


# Validation outputs kept in best.pt for the report, up to this many logits (8 MB: 50,000 images x 40 classes).
MAX_SAVED_LOGITS = 2 ** 21


def checkpoint_state(model: nn.Module, optimizer: Any, scheduler: Any, state: TrainState, cfg: RunConfig,
                     meta: dict[str, Any], full: bool, ema: EMA | None = None,
                     scaler: torch.amp.GradScaler | None = None) -> dict[str, Any]:
    raw = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    ckpt = {
        # With EMA the averaged weights are the ones evaluated and served; the raw ones resume training.
        **({"ema": {k: v.detach().cpu() for k, v in ema.state_dict().items()}} if ema is not None else {}),
        "model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
        "epoch": state.epoch,
        "history": state.history,
        "best_val_acc": state.best_val_acc,
        "train_seconds": state.train_seconds,
        "config": cfg.to_dict(),
        **meta,
    }
    if full:
        ckpt.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng_state())
        if scaler is not None and scaler.is_enabled():
            ckpt["scaler"] = scaler.state_dict()
    return ckpt


def train(cfg: RunConfig | None, out: str | Path | None = None, *, resume: str | Path | None = None,
          epochs: int | None = None, device: str | None = None, stop_after_epoch: int | None = None,
          progress: bool = True, started_at: float | None = None, time_limit: float | None = None) -> Path:
    """Train `cfg` into a run folder (or continue the run in `resume`) and return the folder.

    Under torchrun every rank calls this; rank 0 alone prints and writes files. `started_at` (time.time())
    is when the command began, for --time-limit (default: now). A run trained under a time limit resumes
    only with `time_limit=0`: its remaining epochs then follow the step schedule.
    """
    started_at = time.time() if started_at is None else started_at
    state = TrainState()
    ckpt = None
    if resume is not None:
        out = Path(resume)
        ckpt = load_checkpoint(out / "last.pt")
        cfg = RunConfig.from_dict(ckpt["config"])
        if time_limit:
            raise AlexnetError("--resume cannot set a --time-limit (the schedule so far followed steps or another "
                               "command's clock); resume with --time-limit 0 or start a new run")
        if cfg.train.time_limit and time_limit is None:
            raise AlexnetError(f"the run in {out} trained under --time-limit {cfg.train.time_limit:g}, whose schedule "
                               "follows its own command's clock; continue it by steps with --resume "
                               f"{out} --time-limit 0, or start a new run")
        cfg = replace(cfg, train=replace(cfg.train, time_limit=0.0))
        state = TrainState(ckpt["epoch"], ckpt["history"], ckpt["best_val_acc"], ckpt["train_seconds"])
    assert cfg is not None
    # Flags that may change on resume: more epochs, another device.
    if epochs is not None:
        cfg = replace(cfg, train=replace(cfg.train, epochs=epochs))
    if device is not None:
        cfg = replace(cfg, train=replace(cfg.train, device=device))
    validate(cfg)
    info, dev = distributed.setup(resolve_device(cfg.train.device))
    if dev.type == "cpu":
        tune_cpu_allocator()
    if cfg.train.time_limit and info.enabled:
        raise AlexnetError("--time-limit runs in one process (ranks' clocks would give them different learning "
                           "rates); drop --time-limit under torchrun")
    micro_batch = distributed.check_batch(cfg.train.batch_size, info.world_size, cfg.train.accum_steps)
    out = Path(out) if out is not None else new_run_dir(cfg)
    if info.is_main:
        prepare_run_dir(out, resume is not None)
    torch.manual_seed(cfg.train.seed)
    ui = EpochProgress(progress and info.is_main)

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
    train_loader, val_loader = data.train, data.val.loader if data.val else None
    check_progressive(cfg, train_loader, image_size)
    optimizer = build_optimizer(model, cfg.train)
    views = tta_views(cfg.train.tta, cfg.train.tta_shift)
    # The report reuses the outputs of the validation that made best.pt (saved in it) for an in-memory split;
    # without a validation split it evaluates the training split.
    reused = (info.is_main and isinstance(val_loader, BatchLoader)
              and num_val * len(data.classes) <= MAX_SAVED_LOGITS)
    val_digest = images_digest(val_loader.images) if reused else None  # ties the saved outputs to the images
    budget = TimeBudget(cfg.train.time_limit, started_at, val_images=num_val, views=views,
                        report=cfg.train.report and info.is_main,
                        report_images=0 if reused else (num_val or data.num_train))
    scheduler = build_scheduler(optimizer, cfg.train, len(train_loader), budget)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        restore_rng_state(ckpt["rng"])
    if cfg.train.whiten and ckpt is None and isinstance(train_loader, BatchLoader):
        sample = train_loader.images[torch.randperm(len(train_loader.labels))[:5000].to(dev)]
        whiten_first_conv(model, train_loader.normalize(sample))
    scaler = grad_scaler(dev, cfg.train.amp)
    if scaler.is_enabled() and ckpt is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    ema = EMA(model, cfg.train.ema) if cfg.train.ema > 0 else None
    if ema is not None and ckpt is not None:
        ema.load_state_dict(ckpt["ema"])
    run_model = wrap_model(model, cfg, info, dev)
    arithmetic = precision(dev, cfg.train.amp)  # what --amp resolved to here: bf16, fp16 or fp32

    if info.is_main:
        write_json(out / "config.json", {"config": cfg.to_dict(), "dataset": data.description,
                                         "num_train": data.num_train, "num_val": num_val, **meta,
                                         "world_size": info.world_size, "versions": versions(),
                                         "precision": arithmetic,
                                         "hardware": hardware_info(dev)})
    ui.print(f"model: {cfg.model.name} at {image_size}px, "
             f"{sum(p.numel() for p in model.parameters()):,} parameters; device {dev}, "
             f"{arithmetic}"
             f"{f' x {info.world_size} processes' if info.enabled else ''}; run folder {out}")

    last_epoch = cfg.train.epochs if stop_after_epoch is None else min(stop_after_epoch, cfg.train.epochs)
    for epoch in range(state.epoch, last_epoch):
        start = time.perf_counter()
        done = max(epoch / cfg.train.epochs, budget.run_fraction())  # by epochs or by the clock
        side = epoch_side(done, image_size, cfg.train.res_start, cfg.train.res_ramp)
        if cfg.train.res_start:
            train_loader.set_size(side)
        train_loss, train_acc, seen = train_one_epoch(run_model, train_loader, optimizer, scheduler, cfg, dev,
                                                      ui, epoch, info, ema, scaler, budget,
                                                      (image_size / side) ** 2)
        train_time = time.perf_counter() - start
        val_loss = val_acc = float("nan")
        outputs: dict[str, Any] = {}
        out_of_time = budget.spent()
        every, last = cfg.train.val_every, epoch + 1 == cfg.train.epochs or out_of_time
        scheduled = every > 0 and (epoch + 1) % every == 0
        if scheduled and not last and budget.would_cross(budget.eval_seconds()):
            scheduled = False  # it would eat into the final validation's time: train on, validate at the end
        validated = val_loader is not None and (last or scheduled)
        if validated:
            val_loss, val_acc, logits, labels = validate_epoch(ema.shadow if ema else run_model, val_loader, cfg,
                                                               dev, info)
            if reused:
                outputs = {"val_logits": logits, "val_labels": labels, "val_digest": val_digest}
            if not out_of_time and budget.spent():  # it took longer than estimated: let it be the final one
                out_of_time = True
        scheduler.epoch_end(val_acc)
        seconds = time.perf_counter() - start
        state.epoch = epoch + 1
        state.train_seconds += seconds
        state.history.append({"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                              "val_loss": val_loss, "val_acc": val_acc,
                              "lr": optimizer.param_groups[0]["lr"], "images_per_s": seen / train_time,
                              "seconds": seconds})
        # Without a validation split the latest epoch is the best one we can know of. An epoch skipped by
        # --val-every has no score: it writes best.pt only while none has been scored, so best.pt always exists.
        scored = validated or val_loader is None
        score = val_acc if val_loader is not None else float(state.epoch)
        improved = score > state.best_val_acc if scored else state.best_val_acc < 0
        if improved and scored:
            state.best_val_acc = score
        if info.is_main:
            save_checkpoint(out / "last.pt", checkpoint_state(model, optimizer, scheduler, state, cfg, meta, True, ema,
                                                                  scaler))
            if improved:
                best = checkpoint_state(model, optimizer, scheduler, state, cfg, meta, False, ema)
                save_checkpoint(out / "best.pt", best | outputs)
            write_history(out, state.history)
        val_text = f"val loss {val_loss:.3f} acc {val_acc * 100:.2f}%" if validated else "no val"
        ui.print(f"epoch {epoch + 1:>3}/{cfg.train.epochs}  train loss {train_loss:.3f} acc {train_acc * 100:.2f}%"
                 f"  {val_text}  lr {optimizer.param_groups[0]['lr']:.4g}  {seen / train_time:,.0f} img/s"
                 f"  {seconds:.1f}s{f'  at {side}px' if side != image_size else ''}"
                 f"{'  *best' if improved and validated else ''}"
                 f"{f'  (--time-limit {cfg.train.time_limit:g}s reached)' if out_of_time else ''}")
        if out_of_time:
            break
    if info.enabled:
        prints = distributed.weight_fingerprints(model, info)
        if info.is_main:
            write_json(out / "distributed.json", {"world_size": info.world_size, "weight_fingerprints": prints,
                                                  "replicas_identical": all(p == prints[0] for p in prints)})
    return out


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
