"""`alexnet` command line: argument parsing only; every verb calls the Python API.

Heavy imports (torch, matplotlib) happen inside the verbs so `alexnet --help` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

from .config import PRESETS


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (not the whole usage block) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    opt("--model", "model", "name", help="network: alexnet (the 2012 paper's, 227 px) | alexnet-cifar (32 px native); "
                                         "`alexnet info --model M` prints its layers"),
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
        opt("--resize", "data", type=positive_int, help="streamed evaluation: shorter side before the "
                                                                    "centre crop"),
    ]),
    ("model", MODEL_OPTIONS),
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
        opt("--accum-steps", "train", type=positive_int, help="gradient accumulation: micro-batches "
                                                                          "per step"),
    ]),
    ("augmentation", [
        opt("--crop-padding", "data", type=int, help="in-memory data: random-crop translation in pixels (0 = off)"),
        opt("--crop", "data", choices=["random-resized", "paper"],
            help="streamed data: random-resized crops, or the paper's resize-256 + random crop"),
        opt("--lighting", "data", action=BOOL, help="streamed data: the paper's PCA colour lighting"),
    ]),
    ("evaluation", [
        opt("--val-every", "train", type=int, help="validate every N epochs (the last always; 0 = last only)"),
        opt("--tta-shift", "train", type=int, help="test-time views: flips, plus copies moved by this many pixels "
                                                   "(0 = flips only)"),
        opt("--report", "train", action=BOOL, help="write the HTML report at the end (`alexnet report RUN` later)"),
    ]),
    ("run control", [
        opt("--preset", metavar="NAME", help=f"a named recipe (flags override it): {' | '.join(PRESETS)}; default: "
                                            "cifar10's network and epochs, no time limit"),
        opt("--out", help="run folder (default runs/<time>-<model>)"),
        opt("--time-limit", "train", type=float, metavar="S",
            help="finish the whole command within S seconds: the schedule follows the clock, --epochs is an upper "
                 "bound (0 = none)"),
        opt("--seed", "train", type=int, help="seed of initialisation, shuffling and augmentation"),
        opt("--device", "train", help="auto | cpu | cuda | cuda:N | mps"),
        opt("--compile", "train", action="store_true", default=None, help="torch.compile the model"),
        opt("--sync-bn", "train", action="store_true", default=None, help="SyncBatchNorm across processes (CUDA)"),
        opt("--resume", metavar="RUN", help="continue the run in RUN exactly where it stopped"),
        opt("--stop-after-epoch", type=positive_int, metavar="N",
            help="stop after epoch N as if interrupted; --resume continues"),
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
        if defaults is not None and o.section is not None:
            value = getattr(getattr(defaults, o.section), o.field)
            kwargs["help"] = f"{kwargs.get('help', '')} [default: {shown(value)}]"
        p.add_argument(o.flag, dest=o.flag[2:].replace("-", "_"), **kwargs)


def add_model_options(p: argparse.ArgumentParser) -> None:
    add_options(p, [o for o in MODEL_OPTIONS + EXPERIMENTAL_MODEL_OPTIONS if o.flag != "--dropout"])


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model options given on the command line (None: not given), for `alexnet info`."""
    return {o.field: getattr(args, o.flag[2:].replace("-", "_"))
            for o in MODEL_OPTIONS + EXPERIMENTAL_MODEL_OPTIONS
            if o.section == "model" and o.field != "name" and o.flag != "--dropout"}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="alexnet", description="Train, evaluate, explain and serve AlexNet "
                                     "image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    from .config import preset_config

    t = sub.add_parser("train", help="train a model into a run folder",
                       description="Train a model into a run folder. Flags override the --preset (default: the "
                                   "cifar10 recipe without its time limit); [default: ...] is the default recipe's "
                                   "value.")
    defaults = preset_config(None)
    for title, options in TRAIN_GROUPS:
        add_options(t.add_argument_group(title), options, defaults)

    e = sub.add_parser("evaluate", help="accuracy, top-5, per-class scores, confusion matrix")
    e.add_argument("checkpoint", help="RUN/best.pt (or a run folder)")
    e.add_argument("--data", help="data to evaluate on (default: the training data)")
    e.add_argument("--split", default="test", choices=["test", "val", "train"])
    e.add_argument("--json", metavar="FILE", help="also write the metrics as JSON ('-' = stdout only)")
    e.add_argument("--ten-crop", action="store_true", help="average the paper's ten crops (streamed models)")
    e.add_argument("--device", default="auto")

    pr = sub.add_parser("predict", help="top-k classes of image files")
    pr.add_argument("checkpoint")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--top-k", type=positive_int, default=5)
    pr.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pr.add_argument("--device", default="auto")

    r = sub.add_parser("report", help="write the HTML report of a run")
    r.add_argument("run", help="run folder (or a checkpoint in it)")
    r.add_argument("--data", help="data to evaluate on (default: the training data)")
    r.add_argument("--split", default="val", choices=["test", "val", "train"])
    r.add_argument("--out", help="output folder (default RUN/report)")
    r.add_argument("--device", default="auto")

    i = sub.add_parser("info", help="Keras-style summary of a model: layers, shapes, parameters, MACs")
    add_model_options(i)
    i.add_argument("--num-classes", type=positive_int, default=10)
    return parser


def train_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Only the flags the user gave: they override the preset."""
    out: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "train": {}}
    for _, options in TRAIN_GROUPS:
        for o in options:
            value = getattr(args, o.flag[2:].replace("-", "_"))
            if o.section is not None and value is not None:
                out[o.section][o.field] = value
    return out


def cmd_train(args: argparse.Namespace) -> None:
    from .config import apply_overrides, preset_config
    from .data.prefetch import cache_warming

    cfg = None if args.resume else apply_overrides(preset_config(args.preset), train_overrides(args))
    # A cold image archive is decoded by a child while this process imports torch (data/prefetch.py).
    with cache_warming(cfg.data) if cfg is not None else contextlib.nullcontext():
        from .api import train
        from .engine.optim import preload_compiler_hooks

        preload_compiler_hooks()
    if args.resume:
        run = train(resume=args.resume, epochs=args.epochs, device=args.device, time_limit=args.time_limit,
                    stop_after_epoch=args.stop_after_epoch, progress=not args.quiet)
    else:
        # --time-limit counts from the start of the process (interpreter start-up and imports included) when
        # this is the `alexnet` command; from main()'s call when main(argv) runs inside another program.
        import psutil

        started = args.started_at if args.started_at is not None else psutil.Process().create_time()
        run = train(cfg, out=args.out, stop_after_epoch=args.stop_after_epoch, progress=not args.quiet,
                    started_at=started)
    from .runs import closing_lines

    lines = closing_lines(run)
    print("\n".join(lines if not args.quiet else lines[:1]))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .api import evaluate
    from .engine.checkpoint import write_json
    from .jsonio import json_text
    from .tables import format_metrics

    metrics = evaluate(args.checkpoint, data=args.data, split=args.split, device=args.device,
                       ten_crop=args.ten_crop)
    if args.json == "-":
        print(json_text(metrics))
        return
    print(format_metrics(metrics, f"{args.checkpoint} on the {args.split} split"))
    if args.json:
        write_json(args.json, metrics)


def cmd_predict(args: argparse.Namespace) -> None:
    from .api import predict
    from .jsonio import json_text

    results = predict(args.checkpoint, args.images, top_k=args.top_k, device=args.device)
    if args.json:
        print(json_text(results))
        return
    for r in results:
        top = "  ".join(f"{p['class']} {p['probability'] * 100:.1f}%" for p in r["predictions"])
        print(f"{r['image']}: {top}")


def cmd_report(args: argparse.Namespace) -> None:
    from .api import report

    out = report(args.run, data=args.data, split=args.split, out=args.out, device=args.device)
    print(f"report: {out / 'report.html'}")


def cmd_info(args: argparse.Namespace) -> None:
    from .models import create_model, default_image_size
    from .summary import format_summary, summarize

    name = args.model or "alexnet-cifar"
    size = args.image_size or default_image_size(name)
    options = {k: v for k, v in model_options(args).items() if v is not None}
    model = create_model(name, num_classes=args.num_classes, image_size=size, **options)
    extra = "".join(f", {k}={v}" for k, v in options.items())
    print(format_summary(summarize(model, (3, size, size)),
                         f"{name} ({args.num_classes} classes, {size}x{size} input{extra})"))


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "report": cmd_report,
            "info": cmd_info}


def main(argv: Sequence[str] | None = None) -> int:
    called_at = None if argv is None else time.time()
    args = build_parser().parse_args(argv)
    args.started_at = called_at
    from .errors import AlexnetError

    try:
        COMMANDS[args.command](args)
    except AlexnetError as e:
        print(f"alexnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted; a run's last.pt holds its last finished epoch "
              "(continue with --resume RUN, adding --time-limit 0 for a time-limited run)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `alexnet evaluate ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if argv is None:
        # The `alexnet` command is about to exit: the interpreter's last collection would walk the ~300,000
        # objects torch's modules hold (0.6 s on the 2-core box); frozen, it skips them. Files are closed.
        import gc

        gc.freeze()
    return 0


if __name__ == "__main__":
    sys.exit(main())
