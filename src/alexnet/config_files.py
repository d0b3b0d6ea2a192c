"""`alexnet train --config FILE`: training options from a TOML, YAML or JSON file.

The file is laid out as the run's own config: tables `[data]`, `[model]` and `[train]` holding DataConfig,
ModelConfig and TrainConfig fields by name (`image_size`, `widths`, `lr`, ...), and an optional top-level
`preset`. A run's config.json (its "config" entry holds those sections) is read as is, so
`--config RUN/config.json` resolves to that run's RunConfig. Precedence: the preset first, then the file,
then flags. `config_text` writes a resolved config back in this layout (`alexnet train --print-config`).

Torch-free: `alexnet train` resolves its config before importing torch.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig, apply_overrides, preset_config
from .errors import AlexnetError

SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
FORMATS = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}


def _parse(path: Path, flag: str = "--config") -> Any:
    """The file's data (TOML, YAML or JSON by its suffix); errors name `flag` and the file."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise AlexnetError(f"{flag} {path}: unknown format {path.suffix or '(no suffix)'}; use .toml, .yaml, "
                           ".yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AlexnetError(f"{flag} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AlexnetError(f"{flag} {path}: cannot read it ({e})") from None
    if kind == "TOML":
        try:
            # lazy: only a TOML --config needs the parser
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ImportError:
                raise AlexnetError(f"reading {path} needs Python 3.11 or tomli: pip install tomli") from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise AlexnetError(f"{flag} {path} is not valid TOML ({e})") from None
    if kind == "YAML":
        try:
            import yaml
        except ImportError:
            raise AlexnetError(f"reading {path} needs pyyaml: pip install pyyaml (or write the file as TOML)"
                               ) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise AlexnetError(f"{flag} {path} is not valid YAML ({' '.join(str(e).split())})") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise AlexnetError(f"{flag} {path} is not valid JSON ({e})") from None


def _unknown(path: Path, key: str, known: list[str]) -> AlexnetError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known)}"
    return AlexnetError(f"--config {path}: unknown key {key}{hint}")


def checked_value(value: Any, annotation: str, where: str) -> Any:
    """`value` if it fits a config field's annotation ("int", "float | None", "tuple[int, ...] | None"...), as that
    type; else AlexnetError "WHERE must be ..."."""
    kinds = [a.strip() for a in annotation.split("|")]
    if value is None and "None" in kinds:
        return None
    for kind in kinds:
        if kind == "bool" and isinstance(value, bool):
            return value
        if kind == "str" and isinstance(value, str):
            return value
        if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind.startswith("tuple") and isinstance(value, (list, tuple)) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
    wanted = " or ".join({"tuple[int, ...]": "a list of integers", "None": "null", "str": "a string",
                          "int": "an integer", "float": "a number", "bool": "true or false"}.get(k, k) for k in kinds)
    raise AlexnetError(f"{where} must be {wanted}, got {value!r}")


def _checked(value: Any, annotation: str, where: str, path: Path) -> Any:
    try:
        return checked_value(value, annotation, where)
    except AlexnetError as e:
        raise AlexnetError(f"--config {path}: {e}") from None


def read_config_file(path: str | Path) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """(preset, {"data"|"model"|"train": {field: value}, "recipe": a run's record of its recipe or None}) from a
    config file; every key and type checked."""
    path = Path(path)
    raw = _parse(path)
    if isinstance(raw, dict) and isinstance(raw.get("config"), dict) and "train" in raw["config"]:
        raw = raw["config"]  # a run's config.json: the resolved config sits under "config"
    if not isinstance(raw, dict):
        raise AlexnetError(f"--config {path}: expected tables [data], [model], [train] (and preset = NAME), "
                           f"got {type(raw).__name__}")
    for key in raw:
        if key not in (*SECTIONS, "preset", "recipe"):  # "recipe": a run's record of how it was chosen, not an option
            raise _unknown(path, str(key), [*SECTIONS, "preset"])
    preset = raw.get("preset")
    if raw.get("recipe") is not None and not isinstance(raw["recipe"], dict):
        raise AlexnetError(f"--config {path}: recipe is a run's record of its recipe (a table), got {raw['recipe']!r}")
    if preset is not None and not isinstance(preset, str):
        raise AlexnetError(f"--config {path}: preset must be a preset name, got {preset!r}")
    overrides: dict[str, dict[str, Any]] = {}
    for section, cls in SECTIONS.items():
        values = raw.get(section) or {}
        if not isinstance(values, dict):
            raise AlexnetError(f"--config {path}: {section} must be a table of options, got {values!r}")
        types = {f.name: str(f.type) for f in fields(cls)}
        for key, value in values.items():
            if key not in types:
                raise _unknown(path, f"{section}.{key}", [f"{section}.{name}" for name in types])
        overrides[section] = {k: _checked(v, types[k], f"{section}.{k}", path) for k, v in values.items()}
    overrides["recipe"] = raw.get("recipe")
    return preset, overrides


def resolve_config(preset: str | None, flags: dict[str, dict[str, Any]], path: str | Path | None) -> RunConfig:
    """The run config of `alexnet train`: the preset (a flag's, else the file's), then the file, then flags."""
    file_preset, values = read_config_file(path) if path is not None else (None, {})
    name = preset if preset is not None else file_preset
    base = preset_config(name)
    flag_model = flags.get("model", {}).get("name")
    if flag_model is not None and flag_model != values.get("model", {}).get("name", base.model.name):
        values = {**values, "model": {}}  # the file's model options belong to the file's (or preset's) model
    merged = {s: {**values.get(s, {}), **flags.get(s, {})} for s in SECTIONS}
    if values.get("recipe") is not None and preset is None:  # a run's config.json: its recipe is in its values
        return replace(apply_overrides(base, merged), recipe=values["recipe"], preset=file_preset)
    recipe = None
    if name is None and not merged["train"].get("init_from"):  # fine-tuning brings its own network: no recipe
        # lazy: only a run without a preset chooses a recipe: presets and --print-config skip the import
        from .recipe import choose_recipe

        recipe = choose_recipe(merged["data"].get("source", base.data.source), merged)
        if recipe is not None and recipe.overrides:
            # The recipe replaces the default one (it is no preset's), then the user's options win.
            base = replace(apply_overrides(base, recipe.overrides), preset=None)
    cfg = apply_overrides(base, merged)
    if recipe is not None:
        from .recipe import recipe_line  # lazy: as above, only a run without a preset has a recipe

        cfg = replace(cfg, recipe={**recipe.record(), "line": recipe_line(recipe, cfg)})
    return cfg


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def config_text(cfg: RunConfig) -> str:
    """`cfg` as a TOML file that `--config` reads back to the same config (unset options as comments)."""
    lines = ["# alexnet train --config FILE: the preset first, then these values, then any flags"]
    lines.append(f"preset = {_toml_value(cfg.preset)}" if cfg.preset else "# preset: none (the default recipe)")
    if cfg.recipe:
        lines.append(f"# {cfg.recipe['line']}")
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        part = getattr(cfg, section)
        for f in fields(part):
            value = getattr(part, f.name)
            lines.append(f"{f.name} = {_toml_value(value)}" if value is not None else f"# {f.name}: unset")
    return "\n".join(lines) + "\n"
