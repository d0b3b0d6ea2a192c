"""What may change when a run is resumed (`alexnet train --resume RUN FLAGS`, `alexnet.train(resume=RUN, **options)`).

A resumed run goes on exactly where it stopped, so only the options that leave its results as they are may change:
those that neither touch the weights of the steps already taken nor the steps still to come (their data order,
augmentation, arithmetic, learning rates). Those take effect and are recorded in RUN/config.json ("resumed"); any
other is refused before any work, in one line naming it, the run's value and what to do instead. An option given
with the run's own value is no change, so it is accepted silently. CLI and API both come here (through
`engine.trainer.resolve_config`).
"""

from __future__ import annotations

import json
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import AlexnetError
from .train_options import BOOL, TRAIN_GROUPS, Option

# (section, field) of the options that may change on resume, and why each leaves the run's results as they are.
SAFE: dict[tuple[str, str], str] = {
    ("train", "epochs"): "the run's length: the steps taken keep their weights; a linear or cosine decay is "
                         "stretched (or shortened) to the new end from the step the run stopped at",
    ("train", "device"): "where the same arithmetic runs (bit-identical only on the same kind of device)",
    ("train", "time_limit"): "0 only: a time-limited run continues by steps (engine/trainer.py has the rules)",
    ("train", "save_every"): "when last.pt is written inside an epoch; saving reads the state, never changes it",
    ("train", "save_every_steps"): "the same, by steps",
    ("train", "report"): "whether the HTML report is written after training",
    ("train", "tensorboard"): "whether event files are written; the writer only reads the loop's numbers",
    ("train", "early_stop"): "when the run stops: every step it does take is the step it would have taken",
    ("train", "min_delta"): "the same: what early stopping counts as an improvement",
    ("data", "workers"): "how many processes decode: an image decodes to the same pixels in any of them, and "
                         "streamed batches draw their order and augmentation from (seed, epoch, index) alone",
    ("data", "cache_dir"): "where decoded images are kept: the same pixels, decoded again when not there",
}

# Every option with a flag, by the config field it sets.
OPTIONS: dict[tuple[str, str], Option] = {(o.section, o.field): o for _, group in TRAIN_GROUPS for o in group
                                          if o.section is not None and o.field is not None}


def option_name(section: str, field: str) -> str:
    """`--lr`; an option without a flag (API only) by its field name."""
    o = OPTIONS.get((section, field))
    return o.flag if o is not None else field


def trained_with(section: str, field: str, value: Any) -> str:
    """How a run had a value, as the flags that give it: `with --lr 0.4`, `with --no-whiten`, `with --widths
    8,8,8,8,8`, `without --init-from`."""
    o = OPTIONS.get((section, field))
    if o is None:
        return f"with {field}={value!r}"
    action = o.kwargs.get("action")
    if action is BOOL:
        return f"with {o.flag}" if value else f"with --no-{o.flag[2:]}"
    if action == "store_true":
        return f"with {o.flag}" if value else f"without {o.flag}"
    if value is None:
        return f"without {o.flag}" + (" (the network's default)" if section == "model" else "")
    if isinstance(value, (tuple, list)):
        value = ",".join(str(v) for v in value)
    return f"with {o.flag} {value}"


def same_value(section: str, field: str, given: Any, saved: Any) -> bool:
    if (section, field) == ("data", "source") and isinstance(given, str) and given != "cifar10":
        path = Path(given).expanduser()  # the run saved its data path absolute
        given = str(path.resolve()) if path.exists() else given
    if isinstance(given, (tuple, list)) and isinstance(saved, (tuple, list)):
        return tuple(given) == tuple(saved)
    return bool(given == saved)


def refusal(section: str, field: str, saved: Any, run: str | Path) -> str:
    name = option_name(section, field)
    instead = (f"start a new run ({run}'s weights fit only the network they were trained in)" if section == "model"
               else f"start a new run, or use --init-from {run} to start from its weights")
    return f"{name} cannot change on --resume: {run} was trained {trained_with(section, field, saved)}; {instead}"


def resume_changes(saved: RunConfig, given: dict[str, dict[str, Any]], run: str | Path, *,
                   preset: str | None = None, out: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The options of `given` ({"data"|"model"|"train": {field: value}}, None = not given) that differ from the
    run's own (`saved`): all of them safe to change. One that would change the run's results is an AlexnetError."""
    if preset is not None and preset != saved.preset:
        had = f"with --preset {saved.preset}" if saved.preset else "without --preset"
        raise AlexnetError(f"--preset cannot change on --resume: {run} was trained {had}; start a new run, or "
                           f"use --init-from {run} to start from its weights")
    if out is not None and Path(out).resolve() != Path(run).resolve():
        raise AlexnetError(f"--out cannot change on --resume: the run continues in its own folder, {run}; drop "
                           f"--out, or copy the run folder to {out} and pass --resume {out}")
    changes: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "train": {}}
    for section, values in given.items():
        if section not in changes:
            raise AlexnetError(f"unknown config section {section!r}")
        part = getattr(saved, section)
        known = {f.name for f in fields(part)}
        for field, value in values.items():
            if field not in known:
                raise AlexnetError(f"unknown {section} option {field!r}")
            current = getattr(part, field)
            if value is None or same_value(section, field, value, current):
                continue
            if (section, field) not in SAFE:
                raise AlexnetError(refusal(section, field, current, run))
            changes[section][field] = value
    patience = changes["train"].get("early_stop")
    if patience:
        why = ("holds out no validation images (--val-split 0)" if saved.data.val_split <= 0 else
               "validates only after its last epoch (--val-every 0)" if saved.train.val_every <= 0 else None)
        if why:
            raise AlexnetError(f"--early-stop cannot act on --resume: {run} {why}, and that cannot change on "
                               f"--resume; start a new run with --early-stop {patience} (it validates every epoch "
                               "unless --val-every says otherwise)")
    return changes


def apply_changes(cfg: RunConfig, changes: dict[str, dict[str, Any]]) -> RunConfig:
    parts = {s: replace(getattr(cfg, s), **values) for s, values in changes.items() if values}
    return replace(cfg, **parts)


def changed_options(before: RunConfig, after: RunConfig) -> list[dict[str, Any]]:
    """[{"option": "--save-every-steps", "field": "train.save_every_steps", "from": 0, "to": 3}, ...]"""
    out = []
    for section in ("data", "model", "train"):
        a, b = getattr(before, section), getattr(after, section)
        for f in fields(a):
            old, new = getattr(a, f.name), getattr(b, f.name)
            if old != new:
                out.append({"option": option_name(section, f.name), "field": f"{section}.{f.name}",
                            "from": list(old) if isinstance(old, tuple) else old,
                            "to": list(new) if isinstance(new, tuple) else new})
    return out


def resume_record(run: str | Path, before: RunConfig, after: RunConfig, ckpt: dict[str, Any]) -> list[dict[str, Any]]:
    """RUN/config.json's "resumed" list: the earlier resumes' entries (from the file as it is) and, when this one
    changes an option, its own: when, from which position, what changed."""
    try:
        earlier = json.loads((Path(run) / "config.json").read_text()).get("resumed") or []
    except (OSError, ValueError, AttributeError):
        earlier = []
    changed = changed_options(before, after)
    if not changed:
        return list(earlier)
    return [*earlier, {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "epoch": int(ckpt.get("epoch", 0)),
                       "step": int(ckpt.get("step", 0)), "changed": changed}]
