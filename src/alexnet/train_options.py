"""The flags of `alexnet train` (and of `lr-find`, which takes them too) as one table: each flag, its group in
`--help`, and the config field it sets. The parser and the overrides are both built from it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from .config import PRESETS


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None


def widths(text: str) -> tuple[int, ...]:
    values = _ints(text, "integers")
    if len(values) != 5 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected 5 positive widths (one per conv), got {text!r}")
    return values


def pools(text: str) -> tuple[int, ...]:
    values = _ints(text, "conv numbers")
    if min(values) < 1 or max(values) > 5 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct conv numbers between 1 and 5, got {text!r}")
    return values



@dataclass(frozen=True)
class Option:
    """One `alexnet train` flag and the config field it sets (section None: run control, not in the config)."""

    flag: str
    section: str | None
    field: str | None
    kwargs: dict[str, Any]


def opt(flag: str, section: str | None = None, name: str | None = None, **kwargs: Any) -> Option:
    return Option(flag, section, name if name is not None or section is None else flag[2:].replace("-", "_"), kwargs)


BOOL = argparse.BooleanOptionalAction

MODEL_OPTIONS = [
    opt("--model", "model", "name", help="network: alexnet (the 2012 paper's, 227 px) | alexnet-cifar (32 px native) | "
                                         "alexnet-torchvision (torchvision's layout: its ImageNet weights load, "
                                         "224 px); `alexnet info --model M` prints its layers"),
    opt("--norm", "model", choices=["lrn", "batchnorm", "none"], help="normalisation after the convolutions"),
    opt("--groups", "model", type=int, choices=[1, 2], help="alexnet: 2 = the paper's two-tower connectivity"),
    opt("--init", "model", choices=["default", "paper", "dirac"],
        help="weight initialisation: paper (alexnet, the paper's section 5) or dirac (alexnet-cifar, identity filters)"),
    opt("--image-size", "data", type=positive_int, help="model input side in pixels (smaller stored "
                                                                    "images are upsampled)"),
    opt("--widths", "model", type=widths, metavar="W1,...,W5", help="alexnet-cifar: the five conv widths"),
    opt("--hidden", "model", type=int, help="alexnet-cifar: hidden FC width (0 = one linear classifier)"),
    opt("--dropout", "model", type=float, help="dropout before the hidden FC layers (0 = none)"),
    opt("--pools", "model", type=pools, metavar="I,J,...",
        help="alexnet-cifar: the convolutions followed by a max-pool"),
    opt("--pool-first", "model", action=BOOL, help="alexnet-cifar: max-pool before batch norm and ReLU (same "
                                                    "function, fewer pixels to normalise)"),
    opt("--global-pool", "model", action=BOOL, help="alexnet-cifar: max-pool conv5's whole map before the classifier"),
]

# Screened and not adopted by any preset (docs/recipes.md has each measurement); kept for further experiments.
EXPERIMENTAL_MODEL_OPTIONS = [
    opt("--pool-size", "model", type=int, choices=[2, 3],
        help="alexnet-cifar: max-pool window, 2 or 3 (the paper's overlapping 3x3, stride 2)"),
    opt("--conv1-kernel", "model", type=int, choices=[2, 3],
        help="alexnet-cifar: conv1's side, 3 (padded) or 2 (unpadded 2x2, airbench's stem)"),
]

TRAIN_GROUPS: list[tuple[str, list[Option]]] = [
    ("data", [
        opt("--data", "data", "source", help="cifar10 (downloaded) | cifar-10-python.tar.gz | cifar-10-batches-py "
                                             "folder | a folder of class folders (or a .tar.gz of one)"),
        opt("--val-split", "data", type=float, help="fraction of the training images held out for validation "
                                                    "(0 = train on all of them)"),
        opt("--loader", "data", choices=["auto", "memory", "stream"],
            help="memory: decode once, hold in RAM; stream: DataLoader workers (auto: by image size)"),
        opt("--workers", "data", type=int, help="image-decoding processes (0 = all cores; streaming: 2)"),
        opt("--store-size", "data", type=positive_int, metavar="PX",
            help="in-memory image folders: the square side images are decoded to and held at (default: the first "
                 "image's shorter side)"),
        opt("--resize", "data", type=positive_int, help="streamed evaluation: shorter side before the "
                                                                    "centre crop"),
        opt("--input-stats", "data", choices=["dataset", "imagenet"],
            help="normalise by the training images' mean/std, or by ImageNet's (pretrained weights expect it)"),
    ]),
    ("model", MODEL_OPTIONS),
    ("fine-tuning (docs/finetuning.md)", [
        opt("--init-from", "train", metavar="WEIGHTS", shown_default="none (fresh weights)",
            help="start from these weights: a state dict (.pth/.pt/.safetensors, e.g. torchvision's AlexNet), a "
                 "run folder or checkpoint, or an exported model folder; the last classifier layer is replaced "
                 "when the classes differ"),
        opt("--freeze", "train", metavar="LAYER", shown_default="none (every layer trains)",
            help="train nothing up to and including LAYER: features (all convolutions) or one of them, e.g. "
                 "features.6"),
        opt("--lr-backbone", "train", type=float, metavar="LR", shown_default="--lr",
            help="learning rate of the layers --init-from loaded (the replaced classifier layer takes --lr)"),
    ]),
    ("optimisation", [
        opt("--epochs", "train", type=positive_int, help="epochs (an upper bound under --time-limit)"),
        opt("--batch-size", "train", type=positive_int, help="images per step (all processes together)"),
        opt("--optimizer", "train", choices=["sgd", "muon"],
            help="sgd (Nesterov momentum) | muon: conv filters after the first take Muon's orthogonalised steps"),
        opt("--lr", "train", type=float, help="peak learning rate (after warm-up)"),
        opt("--momentum", "train", type=float, help="SGD momentum"),
        opt("--muon-lr", "train", type=float, help="Muon's peak learning rate"),
        opt("--muon-momentum", "train", type=float, help="Muon's momentum"),
        opt("--weight-decay", "train", type=float, help="L2 on conv and linear weights (not biases or norm scales)"),
        opt("--label-smoothing", "train", type=float, help="cross-entropy label smoothing"),
        opt("--warmup-epochs", "train", type=float, help="linear warm-up from 0 to the peak rate"),
        opt("--schedule", "train", choices=["linear", "cosine", "plateau"],
            help="decay after warm-up: linear or cosine to 0, or plateau (the paper's /10 when validation stalls)"),
        opt("--whiten", "train", action=BOOL, help="first conv from the whitening of training patches (in-memory data)"),
        opt("--amp", "train", choices=["auto", "bf16", "fp16", "off"],
            help="mixed precision; auto = bf16 on CUDA (fp16 + loss scaling without bf16) and on CPUs with bf16 "
                 "instructions (AVX512_BF16, AMX), else off"),
        opt("--flush-denormal", "train", action=BOOL,
            help="CPU: treat subnormal floats as zero (FTZ/DAZ); on by default, --no-flush-denormal for IEEE "
                 "subnormals"),
        opt("--channels-last", "train", action=BOOL, help="channels-last (NHWC) activations and weights; on by "
                                                          "default"),
        opt("--clip-grad", "train", type=float, metavar="NORM",
            help="scale the gradients down to this global L2 norm when above it, as timm's --clip-grad (0 = off)"),
        opt("--accum-steps", "train", type=positive_int, help="gradient accumulation: micro-batches "
                                                                          "per step"),
    ]),
    ("augmentation", [
        opt("--crop-padding", "data", type=int, help="in-memory data: random-crop translation in pixels (0 = off)"),
        opt("--crop-scale", "data", type=float, metavar="MIN",
            help="in-memory data: random-resized crops keeping MIN to all of the image's area, scaled to the input "
                 "side (replaces --crop-padding; 0 = off)"),
        opt("--crop", "data", choices=["random-resized", "paper"],
            help="streamed data: random-resized crops, or the paper's resize-256 + random crop"),
        opt("--lighting", "data", action=BOOL, help="streamed data: the paper's PCA colour lighting"),
    ]),
    ("evaluation", [
        opt("--val-every", "train", type=int, help="validate every N epochs (the last always; 0 = last only)"),
        opt("--tta-shift", "train", type=int, help="test-time views: flips, plus copies moved by this many pixels "
                                                   "(0 = flips only)"),
        opt("--report", "train", action=BOOL, help="write the HTML report at the end (`alexnet report RUN` later)"),
        opt("--early-stop", "train", type=int, metavar="PATIENCE",
            help="stop after PATIENCE validations in a row without a better validation accuracy; best.pt keeps the "
                 "best epoch (0 = off; a recipe validating only at the end then validates every epoch)"),
        opt("--min-delta", "train", type=float, metavar="D",
            help="--early-stop: a validation accuracy gain of D or less (e.g. 0.002) is no improvement"),
    ]),
    ("run control", [
        opt("--preset", metavar="NAME", help=f"a named recipe (flags override it): {' | '.join(PRESETS)}; default: "
                                            "cifar10's network and epochs, no time limit"),
        opt("--out", help="run folder (default runs/<time>-<model>)"),
        opt("--config", metavar="FILE", help="options from a TOML/YAML/JSON file: [data], [model], [train] tables "
                                             "of config fields (a run's config.json reproduces it); flags override it"),
        opt("--print-config", action="store_true", help="print the resolved config (TOML, --config reads it back) "
                                                        "and exit"),
        opt("--time-limit", "train", type=float, metavar="S",
            help="finish the whole command within S seconds: the schedule follows the clock, --epochs is an upper "
                 "bound (0 = none)"),
        opt("--replay-clock", "train", metavar="RUN",
            help="read the clock readings of a time-limited RUN (RUN/clock.json) instead of the clock: with its "
                 "config and seed the same steps, rates and stop, so the same weights on the same machine"),
        opt("--seed", "train", type=int, help="seed of initialisation, shuffling and augmentation"),
        opt("--device", "train", help="auto | cpu | cuda | cuda:N | mps"),
        opt("--compile", "train", action="store_true", default=None, help="torch.compile the model"),
        opt("--sync-bn", "train", action="store_true", default=None, help="SyncBatchNorm across processes (CUDA)"),
        opt("--resume", metavar="RUN", help="continue the run in RUN exactly where it stopped; flags that leave its "
                                            "results as they are (--save-every, --workers, --no-report, "
                                            "--early-stop, --epochs...) take effect, others are refused "
                                            "(docs/training.md)"),
        opt("--stop-after-epoch", type=positive_int, metavar="N",
            help="stop after epoch N as if interrupted; --resume continues"),
        opt("--save-every", "train", type=float, metavar="S",
            help="also save RUN/last.pt inside an epoch every S seconds, for long epochs (0 = at epoch ends only)"),
        opt("--save-every-steps", "train", type=int, metavar="N",
            help="also save RUN/last.pt inside an epoch every N steps (0 = at epoch ends only)"),
        opt("--tensorboard", "train", action=BOOL,
            help="write TensorBoard event files under RUN/tensorboard (needs the `tensorboard` extra)"),
        opt("--quiet", action="store_true", help="no progress output"),
    ]),
    ("experimental (screened; no preset uses them, see docs/recipes.md)", [
        *EXPERIMENTAL_MODEL_OPTIONS,
        opt("--flip-mode", "data", choices=["random", "alternate"],
            help="random: a coin per image per epoch; alternate: mirrored every other epoch (airbench)"),
        opt("--cutout", "data", type=int, help="in-memory data: paint a random square of this side with the mean "
                                               "colour (0 = off)"),
        opt("--ema", "train", type=float, help="weight moving-average decay, e.g. 0.99 (0 = off)"),
        opt("--bn-scale", "train", action=BOOL, help="train batch-norm scales (--no-bn-scale freezes them at 1)"),
        opt("--bn-bias-lr", "train", type=float, help="learning-rate multiplier for batch-norm biases (airbench: 64)"),
        opt("--res-start", "train", type=int, metavar="PX",
            help="progressive resizing: the first epoch's side, growing to the input side (0 = off)"),
        opt("--res-ramp", "train", type=float, metavar="F",
            help="progressive resizing: the fraction of training after which batches are full size"),
    ]),
]


def shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return "the model's own" if value is None else str(value)


def add_options(p: argparse.ArgumentParser, options: list[Option], defaults: Any = None) -> None:
    """Add flags to `p`; with `defaults` (a RunConfig) each help line ends with the default recipe's value."""
    for o in options:
        kwargs = dict(o.kwargs)
        text = kwargs.pop("shown_default", None)  # where `shown` would mislead ("the model's own")
        if defaults is not None and o.section is not None:
            value = getattr(getattr(defaults, o.section), o.field)
            kwargs["help"] = f"{kwargs.get('help', '')} [default: {text or shown(value)}]"
        p.add_argument(o.flag, dest=o.flag[2:].replace("-", "_"), **kwargs)


def add_model_options(p: argparse.ArgumentParser) -> None:
    add_options(p, [o for o in MODEL_OPTIONS + EXPERIMENTAL_MODEL_OPTIONS if o.flag != "--dropout"])


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model options given on the command line (None: not given), for `alexnet info`."""
    return {o.field: getattr(args, o.flag[2:].replace("-", "_"))
            for o in MODEL_OPTIONS + EXPERIMENTAL_MODEL_OPTIONS
            if o.section == "model" and o.field != "name" and o.flag != "--dropout"}
