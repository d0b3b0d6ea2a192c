"""`alexnet tune --space FILE`: what the search varies, read from a TOML or YAML file, and the default space.

The keys are the options of `alexnet train`, written as in a `--config` file (tables `[data]`, `[model]`,
`[train]` of config fields) or at the top level by their flag name (`lr`, `weight_decay`, `batch_size`):

    [train]
    lr = { low = 0.05, high = 0.8, log = true }    # a float range; log = true samples it on a log scale
    epochs = { low = 4, high = 12, step = 2 }      # an int range (integers: an int range)
    batch_size = { choices = [128, 256, 512] }     # one of the choices
    whiten = false                                 # a plain value: fixed for every trial

    [model]
    widths = { choices = [[16, 32, 64, 128, 256], [24, 48, 96, 192, 192]] }

A file of fixed values only searches the default space (`default_space`) around them. Every value is checked
against the option's type, and each end of a range and each choice against the same rules as `alexnet train`
(config.validate), before any trial runs: a bad file is one line naming the file and the option. Torch-free
and optuna-free: `suggest` takes the trial object it is given.
"""

from __future__ import annotations

import argparse
import difflib
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..config import DataConfig, ModelConfig, RunConfig, TrainConfig, apply_overrides, validate
from ..config_files import _parse as parse_file
from ..config_files import checked_value
from ..errors import AlexnetError
from ..recipe import DataProfile, Recipe, recipe_line
from ..train_options import TRAIN_GROUPS, pools, widths

SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
# Options a search may not set, and why.
NOT_SEARCHED = {
    ("data", "source"): "--data names the data",
    ("train", "val_every"): "every trial validates after each epoch, so the pruner sees every epoch's score",
}
RANGE_KEYS = ("low", "high", "log", "step")
# List options checked as their flags check them (5 positive widths, distinct conv numbers).
LIST_CHECKS = {("model", "widths"): widths, ("model", "pools"): pools}

# Each config field's flag name with underscores (model.name -> "model"), else its field name.
FLAG_NAMES: dict[tuple[str, str], str] = {
    (o.section, o.field): o.flag[2:].replace("-", "_")
    for _, options in TRAIN_GROUPS for o in options if o.section is not None and o.field is not None}
FIELD_TYPES: dict[tuple[str, str], str] = {(s, f.name): str(f.type) for s, cls in SECTIONS.items()
                                           for f in fields(cls)}
BY_NAME: dict[str, tuple[str, str]] = {**{key[1]: key for key in FIELD_TYPES}, **{v: k for k, v in FLAG_NAMES.items()}}


def param_name(section: str, field: str) -> str:
    """The name a searched option has in the study, the trials table and the plots: its flag's (lr, model)."""
    return FLAG_NAMES.get((section, field), field)


@dataclass(frozen=True)
class Param:
    """One option of the space: a range (`float`, `int`), `choices` or a `fixed` value."""

    name: str
    section: str
    field: str
    kind: str  # float | int | choices | fixed
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None

    def suggest(self, trial: Any) -> Any:
        """This option's value for an optuna trial (a list option's choice comes back as a tuple)."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.kind == "choices":
            return self.to_value(trial.suggest_categorical(self.name, [encode(c) for c in self.choices]))
        return self.value

    def to_value(self, raw: Any) -> Any:
        """A value as the config takes it: a list option's "8,16,32,64,64" (as optuna stores it) as a tuple."""
        if "tuple" in FIELD_TYPES[(self.section, self.field)] and isinstance(raw, (str, list)):
            return tuple(int(v) for v in (raw.split(",") if isinstance(raw, str) else raw))
        return raw

    def corners(self) -> list[Any]:
        """The values `validate` is tried with: a range's ends, every choice."""
        if self.kind in ("float", "int"):
            cast = int if self.kind == "int" else float
            return [cast(self.low), cast(self.high)]
        return list(self.choices) if self.kind == "choices" else [self.value]

    def spec(self) -> dict[str, Any]:
        """As the file would write it (JSON types): stored with the study, compared when a worker joins."""
        if self.kind == "fixed":
            return {"value": encode_json(self.value)}
        if self.kind == "choices":
            return {"choices": [encode_json(c) for c in self.choices]}
        out: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        return out | ({"step": self.step} if self.step is not None else {})

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.name} = {show(self.value)}"
        if self.kind == "choices":
            return f"{self.name} in {{{', '.join(show(c) for c in self.choices)}}}"
        scale = " (log)" if self.log else ""
        step = f" step {self.step:g}" if self.step is not None else ""
        return f"{self.name} in [{self.low:g}, {self.high:g}]{scale}{step}"


def encode(value: Any) -> Any:
    """A choice as optuna stores it: lists (widths) as "8,16,32,64,64" text, other values as they are."""
    return ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else value


def encode_json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]
    source: str  # the file, or which default

    @property
    def searched(self) -> list[Param]:
        return [p for p in self.params if p.kind != "fixed"]

    def fixed_overrides(self) -> dict[str, dict[str, Any]]:
        return self.overrides({})

    def suggest(self, trial: Any) -> dict[str, Any]:
        """{name: value} of every searched option for `trial`, in the file's order."""
        return {p.name: p.suggest(trial) for p in self.searched}

    def overrides(self, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """{"data"|"model"|"train": {field: value}}: the fixed values and the given searched ones."""
        out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for p in self.params:
            if p.kind == "fixed":
                out[p.section][p.field] = p.value
            elif p.name in values:
                out[p.section][p.field] = p.to_value(values[p.name])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "params": {f"{p.section}.{p.field}": p.spec() for p in self.params}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Space":
        """The space a study was started with (`to_dict`), as a worker joining it takes it."""
        params = []
        for key, spec in d["params"].items():
            section, field = key.split(".", 1)
            params.append(parse_param(section, field, spec["value"] if "value" in spec else spec,
                                      f"the study's stored space: {key}"))
        return cls(tuple(params), d.get("source", "the study's space"))

    def describe(self) -> str:
        return "; ".join(p.describe() for p in self.params)

    def check(self, make_config: Any, where: str) -> None:
        """Each end of each range and each choice must make a valid config (`make_config(values)` builds and
        validates one): a bad value fails now, naming the option, not in the middle of the study."""
        try:
            make_config({})
        except AlexnetError as e:
            raise AlexnetError(f"{where}: with its fixed values: {e}") from None
        for p in self.searched:
            for value in p.corners():
                try:
                    make_config({p.name: value})
                except AlexnetError as e:
                    raise AlexnetError(f"{where}: {p.name} = {show(value)}: {e}") from None


# ------------------------------------------------------------------------------------------------ reading
def read_space(path: str | Path) -> Space:
    """The space in a TOML or YAML file; any mistake is an AlexnetError naming the file and the option."""
    path = Path(path)
    where = f"--space {path}"
    raw = parse_file(path, "--space")
    if not isinstance(raw, dict) or not raw:
        raise AlexnetError(f"{where}: expected options such as lr = {{ low = 0.01, high = 1, log = true }} or "
                           f"[train] tables of them, got {raw!r}")
    params: list[Param] = []
    for key, value in raw.items():
        key = str(key)
        if key in SECTIONS and isinstance(value, dict) and not set(value) & {*RANGE_KEYS, "choices"}:
            for field, spec in value.items():
                known = [f.name for f in fields(SECTIONS[key])]
                if field not in known:
                    raise unknown(where, f"{key}.{field}", [f"{key}.{k}" for k in known])
                params.append(parse_param(key, str(field), spec, f"{where}: {key}.{field}"))
            continue
        name = key.replace("-", "_")
        if name not in BY_NAME:
            raise unknown(where, key, sorted(BY_NAME))
        section, field = BY_NAME[name]
        params.append(parse_param(section, field, value, f"{where}: {key}"))
    seen: dict[str, str] = {}
    for p in params:
        if p.name in seen:
            raise AlexnetError(f"{where}: {p.section}.{p.field} is given twice")
        seen[p.name] = p.field
    return Space(tuple(params), str(path))


def unknown(where: str, key: str, known: list[str]) -> AlexnetError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return AlexnetError(f"{where}: unknown option {key}{hint} (the options of `alexnet train`, by flag name or "
                        "under [data], [model], [train])")


def parse_param(section: str, field: str, spec: Any, where: str) -> Param:
    """One entry: {low, high[, log][, step]}, {choices = [...]} or a plain value, checked against the field's type."""
    if (section, field) in NOT_SEARCHED:
        raise AlexnetError(f"{where}: not an option of the search ({NOT_SEARCHED[section, field]})")
    annotation = FIELD_TYPES[(section, field)]
    name = param_name(section, field)
    check = LIST_CHECKS.get((section, field))

    def value_of(raw: Any, label: str) -> Any:
        value = typed(raw, annotation, label)
        if check is not None and value is not None:
            try:
                check(",".join(map(str, value)))
            except argparse.ArgumentTypeError as e:
                raise AlexnetError(f"{label}: {e}") from None
        return value

    if not isinstance(spec, dict):
        if isinstance(spec, list) and "tuple" not in annotation:
            raise AlexnetError(f"{where}: a list is no value of this option; write {{ choices = [...] }} to search "
                               "among values")
        return Param(name, section, field, "fixed", value=value_of(spec, where))
    extra = set(spec) - {*RANGE_KEYS, "choices"}
    if extra:
        raise AlexnetError(f"{where}: unknown key {', '.join(sorted(map(str, extra)))} (a range takes low, high, "
                           "log and step; a choice takes choices)")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise AlexnetError(f"{where}: choices takes no {', '.join(sorted(set(spec) - {'choices'}))}")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise AlexnetError(f"{where}: choices must be a non-empty list, got {choices!r}")
        values = tuple(value_of(c, f"{where}: choice {c!r}") for c in choices)
        if len({encode(v) for v in values}) != len(values):
            raise AlexnetError(f"{where}: a choice is given twice")
        return Param(name, section, field, "choices", choices=values)
    if "low" not in spec or "high" not in spec:
        raise AlexnetError(f"{where}: a range needs both low and high (or give choices = [...])")
    kinds = [k.strip() for k in annotation.split("|")]
    if "int" in kinds:
        kind = "int"
    elif "float" in kinds:
        kind = "float"
    else:
        raise AlexnetError(f"{where}: a range needs a numeric option, and {field} takes "
                           f"{' or '.join(kinds)}: give choices = [...] instead")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for label, v in (("low", low), ("high", high), *((("step", step),) if step is not None else ())):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise AlexnetError(f"{where}: {label} must be a number, got {v!r}")
        if kind == "int" and not isinstance(v, int):
            raise AlexnetError(f"{where}: {field} takes integers, so {label} must be one, got {v!r}")
    if not isinstance(log, bool):
        raise AlexnetError(f"{where}: log must be true or false, got {log!r}")
    if not low < high:
        raise AlexnetError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise AlexnetError(f"{where}: a log range needs low > 0, got {low}")
    if step is not None and (step <= 0 or log):
        raise AlexnetError(f"{where}: step must be > 0 and cannot go with log = true")
    return Param(name, section, field, kind, low=low if kind == "int" else float(low),
                 high=high if kind == "int" else float(high), log=log, step=step)


def typed(value: Any, annotation: str, where: str) -> Any:
    """`value` if the field's annotation ("int", "float | None", "tuple[int, ...] | None"...) takes it (a tuple
    not empty)."""
    if isinstance(value, (list, tuple)) and not value:
        raise AlexnetError(f"{where} must not be an empty list")
    return checked_value(value, annotation, where)


# ------------------------------------------------------------------------------------------------ the default
def default_space(cfg: RunConfig) -> Space:
    """Four options around the recipe's own values (five with Muon's rate): the learning rate from a quarter to
    four times its value (log scale), the weight decay from a tenth to ten times (log), half, the same and twice
    the batch size, label smoothing from 0 to 0.2."""
    t = cfg.train
    wd = t.weight_decay if t.weight_decay > 0 else 5e-4
    batches = sorted({max(1, t.batch_size // 2), t.batch_size, t.batch_size * 2})
    params = [
        Param("lr", "train", "lr", "float", low=t.lr / 4, high=t.lr * 4, log=True),
        Param("weight_decay", "train", "weight_decay", "float", low=wd / 10, high=wd * 10, log=True),
        Param("batch_size", "train", "batch_size", "choices", choices=tuple(batches)),
        Param("label_smoothing", "train", "label_smoothing", "float", low=0.0, high=max(0.2, t.label_smoothing)),
    ]
    if t.optimizer == "muon":
        params.insert(1, Param("muon_lr", "train", "muon_lr", "float", low=t.muon_lr / 4, high=t.muon_lr * 4,
                               log=True))
    return Space(tuple(params), f"the default space of {cfg.preset or 'the default recipe'}")


def with_fixed(space: Space, overrides: dict[str, dict[str, Any]]) -> Space:
    """`space` without the options `overrides` (the file's fixed values) already set: a default space leaves the
    options a file fixes alone."""
    return replace(space, params=tuple(p for p in space.params if p.field not in overrides.get(p.section, {})))


def trial_config(base: RunConfig, space: Space, values: dict[str, Any], time_limit: float | None) -> RunConfig:
    """A trial's config: the base (preset or recipe, data, seed), then the space's fixed and searched values; it
    validates every epoch and writes no report (`alexnet report RUN` writes one later); `time_limit`
    (--time-limit-per-trial) holds whatever the space sets."""
    overrides = space.overrides(values)
    if time_limit is not None:
        overrides["train"]["time_limit"] = time_limit
    cfg = apply_overrides(base, overrides)
    cfg = validate(replace(cfg, train=replace(cfg.train, val_every=1, report=False)))
    if cfg.recipe and cfg.recipe.get("line"):  # the data's recipe, described with this trial's values
        r = cfg.recipe
        profile = DataProfile(**r["profile"]) if r.get("profile") else None
        cfg = replace(cfg, recipe={**r, "line": recipe_line(Recipe(r["name"], r["reason"], r["settings"], profile),
                                                            cfg)})
    return cfg
