"""Start from pretrained weights: --init-from (load them), --freeze (train only what follows a layer),
--lr-backbone (the loaded layers' own learning rate).

Weights come from a state dict (.pth/.pt as torch.save writes it, or .safetensors: torchvision's published
AlexNet among them), from one of our runs (best.pt, its EMA weights when it kept them, as `load_model`
serves) or from an exported model folder (config.json + model.safetensors). Every tensor must fit the model
by name and shape; the one exception is the classifier's last layer, replaced by a fresh one when the data
has other classes than the weights were trained on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..errors import AlexnetError
from .checkpoint import FORMAT, VERSION, load_checkpoint

# Wrappers whose prefix a saved state dict may carry: DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class Weights:
    """A state dict read from disk, with the class names it was trained on when the file says."""

    state: dict[str, torch.Tensor]
    classes: list[str] | None
    source: str


@dataclass
class FineTune:
    """What the optimiser needs from the set-up: a learning-rate multiplier per parameter (by id)."""

    lr_scales: dict[int, float] = field(default_factory=dict)


def _tensors_only(obj: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    for key in ("state_dict", "model"):  # common wrappers: {"state_dict": ...}, {"model": ...}
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return _tensors_only(obj[key], source)
    raise AlexnetError(f"--init-from {source} holds no state dict (a name -> tensor mapping); save one with "
                       "torch.save(model.state_dict(), FILE)")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file  # lazy: only an --init-from .safetensors file needs it

    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types; one line for the user
        raise AlexnetError(f"--init-from {path} is not a readable safetensors file ({str(e).splitlines()[0][:120]})"
                           ) from None


def _exported_classes(folder: Path) -> list[str] | None:
    try:
        classes = json.loads((folder / "config.json").read_text()).get("classes")
    except (OSError, ValueError, AttributeError):
        return None
    return list(classes) if isinstance(classes, list) else None


def read_weights(source: str | Path) -> Weights:
    """Read the weights `--init-from` names; anything else is a one-line AlexnetError."""
    path, name = Path(source), str(source)
    if not path.exists():
        raise AlexnetError(f"--init-from {name}: no such file or folder")
    if path.is_dir():
        if (path / "model.safetensors").is_file():  # an exported model folder
            return Weights(_load_safetensors(path / "model.safetensors"), _exported_classes(path), name)
        if not any((path / f).is_file() for f in ("best.pt", "last.pt")):
            raise AlexnetError(f"--init-from {name} holds neither model.safetensors (an exported model) nor "
                               "best.pt (a run folder)")
    if path.is_dir():
        return _run_weights(load_checkpoint(path), name)  # best.pt (else last.pt)
    if path.suffix == ".safetensors":
        return Weights(_load_safetensors(path), None, name)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # never runs pickled code
    except Exception as e:  # noqa: BLE001
        text = str(e)
        if "Unsupported global" in text:  # a pickled class: refused, as it could run code
            raise AlexnetError(f"--init-from {name} holds objects that are not plain tensors (a pickled model?); "
                               "save model.state_dict() instead") from None
        why = ("not a file torch.save wrote" if "Weights only load failed" in text or "WeightsUnpickler" in text
               else (text.strip().splitlines() or [type(e).__name__])[0][:120])
        raise AlexnetError(f"--init-from {name} is not a readable weights file ({why}); give a .pth/.pt state "
                           "dict, a .safetensors file, a run folder or an exported model folder") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:  # one of our checkpoints, wherever it sits
        if obj.get("version", 0) > VERSION:
            raise AlexnetError(f"--init-from {name} was written by a newer alexnet (format {obj['version']}); upgrade")
        return _run_weights(obj, name)
    return Weights(_tensors_only(obj, name), None, name)


def _run_weights(ckpt: dict[str, Any], name: str) -> Weights:
    # The averaged weights when the run kept them: the ones its evaluation scored and `load_model` serves.
    return Weights(dict(ckpt.get("ema", ckpt["model"])), list(ckpt.get("classes", [])) or None, name)


def _strip_wrappers(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    for prefix in WRAPPER_PREFIXES:
        if state and not set(state) & wanted and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def head_layer(model: nn.Module) -> str:
    """The name of the classifier's last layer: the model's last nn.Linear."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise AlexnetError("--init-from needs a model whose last layer is a Linear classifier")
    return names[-1]


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def load_pretrained(model: nn.Module, weights: Weights, model_name: str, classes: list[str],
                    say: Callable[[str], None]) -> list[str]:
    """Copy `weights` into `model`; return the layers left as built (the replaced classifier layer, if any)."""
    own = model.state_dict()
    state = _strip_wrappers(weights.state, set(own))
    src = weights.source
    head = head_layer(model)
    head_keys = {k for k in own if k.startswith(head + ".")}
    extra = [k for k in state if k not in own]
    if extra:
        raise AlexnetError(f"--init-from {src} holds {extra[0]} ({_shape(state[extra[0]])}), which model "
                           f"{model_name} has no place for ({len(extra)} such tensors); are these {model_name} "
                           "weights?")
    # A batch norm's step counter is bookkeeping, absent from state dicts older than torch 0.4.1.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise AlexnetError(f"--init-from {src} has no {missing[0]} ({_shape(own[missing[0]])}) for model "
                           f"{model_name} ({len(missing)} of its {len(own)} tensors missing)")
    out_features = own[head + ".weight"].shape[0]
    file_classes = state[head + ".weight"].shape[0]
    replace_head = file_classes != out_features or (weights.classes is not None and weights.classes != classes)
    for key, tensor in state.items():
        if tensor.shape == own[key].shape or (replace_head and key in head_keys and
                                              tensor.shape[1:] == own[key].shape[1:]):
            continue
        raise AlexnetError(f"--init-from {src}: {key} is {_shape(tensor)} but model {model_name} (at this "
                           f"--image-size and these options) needs {_shape(own[key])}")
    merged = {k: (own[k] if replace_head and k in head_keys else state.get(k, own[k])) for k in own}
    model.load_state_dict(merged)
    if replace_head:
        why = (f"{file_classes} -> {out_features} classes" if file_classes != out_features else
               f"trained on other classes ({_names(weights.classes or [])} -> {_names(classes)})")
        say(f"init: {head} replaced: {why}")
    say(f"init: {len(state) - (len(head_keys) if replace_head else 0)} tensors loaded from {src}")
    return [head] if replace_head else []


def _names(classes: list[str]) -> str:
    return ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")


def _keep_eval(module: nn.Module, args: Any) -> None:
    module.training = False  # a frozen batch norm normalises with its running statistics and never updates them


def freeze(model: nn.Module, layer: str, model_name: str) -> list[str]:
    """Stop training every parameter up to and including layer `layer` (a module name: "features",
    "features.6"); batch norms in that part stay in eval mode. Returns the frozen parameter names."""
    names = [n for n, _ in model.named_parameters()]
    hits = [i for i, n in enumerate(names) if n.startswith(layer + ".")]
    if not hits:
        # Every module that owns weights, at every depth, in the model's order: features, features.0, ...
        layers = list(dict.fromkeys(".".join(n.split(".")[:d]) for n in names for d in range(1, n.count(".") + 1)))
        raise AlexnetError(f"--freeze {layer}: model {model_name} has no layer {layer!r} with weights; choose one "
                           f"of: {', '.join(layers)}")
    frozen = names[:hits[-1] + 1]
    if len(frozen) == len(names):
        raise AlexnetError(f"--freeze {layer} leaves nothing to train; name an earlier layer (e.g. the "
                           f"one before {head_layer(model)})")
    params = dict(model.named_parameters())
    for n in frozen:
        params[n].requires_grad_(False)
    modules = list(model.named_modules())
    owner = frozen[-1].rsplit(".", 1)[0]
    last = next(i for i, (m, _) in enumerate(modules) if m == owner)
    for _, module in modules[:last + 1]:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(_keep_eval)
    return frozen


def backbone_scales(model: nn.Module, replaced: list[str], lr: float, lr_backbone: float | None) -> dict[int, float]:
    """Rate multipliers for the loaded (not replaced) parameters still training: lr_backbone / lr."""
    if lr_backbone is None or lr_backbone == lr:
        return {}
    return {id(p): lr_backbone / lr for n, p in model.named_parameters()
            if p.requires_grad and not any(n.startswith(r + ".") for r in replaced)}


def split_rates(groups: list[dict], lr_scales: dict[int, float] | None) -> list[dict]:
    """Split each optimiser group by rate multiplier (its other settings kept): the schedule then scales every
    group's own peak rate, so the pretrained layers keep their ratio to the rest all along."""
    if not lr_scales:
        return groups
    out = []
    for group in groups:
        by_scale: dict[float, list] = {}
        for p in group["params"]:
            by_scale.setdefault(lr_scales.get(id(p), 1.0), []).append(p)
        out += [dict(group, params=params, lr=group["lr"] * scale) for scale, params in by_scale.items()]
    return out


def prepare_finetune(model: nn.Module, cfg: RunConfig, classes: list[str], ckpt: dict | None,
                     meta: dict[str, Any], say: Callable[[str], None]) -> FineTune:
    """Apply --init-from (not on a resume: the checkpoint holds the weights), --freeze and --lr-backbone to a
    freshly built model; what was done is recorded in meta["init"] (config.json and every checkpoint)."""
    t = cfg.train
    if t.init_from is None and t.freeze is None:
        if t.lr_backbone is not None and t.lr_backbone != t.lr:
            say(f"init: no --init-from, so every layer is new and trains at --lr {t.lr:g} (--lr-backbone unused)")
        return FineTune()
    if ckpt is not None:  # resuming: the weights come from the checkpoint, the layout from its record
        replaced = list((ckpt.get("init") or {}).get("replaced", []))
    elif t.init_from is not None:
        replaced = load_pretrained(model, read_weights(t.init_from), cfg.model.name, classes, say)
    else:
        replaced = []
    frozen = freeze(model, t.freeze, cfg.model.name) if t.freeze else []
    if frozen:
        count = sum(p.numel() for n, p in model.named_parameters() if n in set(frozen))
        say(f"init: frozen up to {t.freeze}: {count:,} parameters in {len(frozen)} tensors do not train")
    meta["init"] = {"from": t.init_from, "replaced": replaced, "frozen": frozen}
    scales = backbone_scales(model, replaced, t.lr, t.lr_backbone) if t.init_from else {}
    return FineTune(scales)
