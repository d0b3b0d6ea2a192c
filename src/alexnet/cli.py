"""`alexnet` command line: argument parsing only; every verb calls the Python API.

Heavy imports (torch, matplotlib) happen inside the verbs so `alexnet --help` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any, Sequence


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (not the whole usage block) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model name (see `alexnet info`): alexnet | alexnet-cifar")
    p.add_argument("--norm", choices=["lrn", "batchnorm", "none"], help="normalisation layers")
    p.add_argument("--groups", type=int, choices=[1, 2], help="2 = the paper's two-tower connectivity")
    p.add_argument("--init", choices=["default", "paper", "dirac"],
                   help="weight initialisation: paper (alexnet, Sec. 5) or dirac (alexnet-cifar, identity filters)")
    p.add_argument("--image-size", type=positive_int, help="model input side in pixels")
    p.add_argument("--widths", type=widths, metavar="W1,...,W5", help="alexnet-cifar conv widths, e.g. 32,64,128,128,128")
    p.add_argument("--hidden", type=int, help="alexnet-cifar hidden FC width (0 = no hidden FC layers)")
    p.add_argument("--pool-first", action=argparse.BooleanOptionalAction,
                   help="alexnet-cifar: max-pool before batch norm and ReLU (faster)")
    p.add_argument("--pools", type=pools, metavar="I,J,...",
                   help="alexnet-cifar: the convolutions followed by a max-pool (default 1,2,5)")
    p.add_argument("--pool-size", type=int, choices=[2, 3],
                   help="alexnet-cifar: max-pool window, 2 (default) or 3 (the paper's overlapping 3x3, stride 2)")
    p.add_argument("--global-pool", action=argparse.BooleanOptionalAction,
                   help="alexnet-cifar: max-pool conv5's whole map before the classifier")
    p.add_argument("--conv1-kernel", type=int, choices=[2, 3],
                   help="alexnet-cifar: conv1's side, 3 (default, padded) or 2 (unpadded 2x2, airbench's stem)")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model options given on the command line (None: not given)."""
    return {"norm": args.norm, "groups": args.groups, "init": args.init, "widths": args.widths,
            "hidden": args.hidden, "pool_first": args.pool_first, "pools": args.pools,
            "pool_size": args.pool_size, "global_pool": args.global_pool, "conv1_kernel": args.conv1_kernel}


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


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="alexnet", description="Train, evaluate, explain and serve AlexNet "
                                     "image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    t = sub.add_parser("train", help="train a model into a run folder")
    t.add_argument("--data", help="cifar10 | cifar-10-python.tar.gz | cifar-10-batches-py folder | image folder")
    t.add_argument("--preset", help="a named recipe (flags override it); see the README")
    add_model_options(t)
    t.add_argument("--epochs", type=positive_int)
    t.add_argument("--batch-size", type=positive_int)
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--optimizer", choices=["sgd", "muon"],
                   help="sgd (Nesterov momentum) | muon: conv filters after the first take Muon's orthogonalised steps")
    t.add_argument("--muon-lr", type=float, help="Muon's peak learning rate (default 0.24)")
    t.add_argument("--muon-momentum", type=float, help="Muon's momentum (default 0.6)")
    t.add_argument("--label-smoothing", type=float)
    t.add_argument("--warmup-epochs", type=float)
    t.add_argument("--schedule", choices=["linear", "cosine", "plateau"], help="learning-rate decay")
    t.add_argument("--dropout", type=float, help="dropout before the hidden FC layers (0 = none)")
    t.add_argument("--crop-padding", type=int, help="random-crop translation in pixels (default 4; 0 = off)")
    t.add_argument("--flip-mode", choices=["random", "alternate"],
                   help="random: a coin per image per epoch; alternate: mirrored every other epoch")
    t.add_argument("--cutout", type=int, help="paint a random square of this many pixels per side with the "
                                              "mean colour (in-memory data; 0 = off)")
    t.add_argument("--val-every", type=int, help="validate every N epochs (the last always; 0 = last only)")
    t.add_argument("--tta-shift", type=int, help="test-time augmentation: also average copies moved by this "
                                                 "many pixels (0 = flips only)")
    t.add_argument("--res-start", type=int, metavar="PX",
                   help="progressive resizing: train the first epoch at PX px, growing to the input side (0 = off)")
    t.add_argument("--res-ramp", type=float, metavar="F",
                   help="progressive resizing: the fraction of training after which batches are full size (0.75)")
    t.add_argument("--time-limit", type=float, metavar="S",
                   help="finish the whole command within S seconds: the schedule follows the clock, --epochs is "
                        "an upper bound (0 = none)")
    t.add_argument("--ema", type=float, help="weight moving-average decay, e.g. 0.99 (0 = off)")
    t.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=None, help="first conv from patch whitening")
    t.add_argument("--bn-scale", action=argparse.BooleanOptionalAction, default=None,
                   help="train batch-norm scales (--no-bn-scale freezes them at 1, as airbench does)")
    t.add_argument("--bn-bias-lr", type=float, help="learning-rate multiplier for batch-norm biases (airbench: 64)")
    t.add_argument("--accum-steps", type=positive_int, help="gradient accumulation: micro-batches per step")
    t.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm across processes")
    t.add_argument("--val-split", type=float, help="fraction of the training split held out (default 0.1)")
    t.add_argument("--seed", type=int)
    t.add_argument("--loader", choices=["auto", "memory", "stream"],
                   help="memory: decode once, hold in RAM; stream: DataLoader workers (auto picks by image size)")
    t.add_argument("--crop", choices=["random-resized", "paper"], help="streamed training crop")
    t.add_argument("--resize", type=positive_int, help="streamed evaluation: shorter side before the centre crop")
    t.add_argument("--lighting", action=argparse.BooleanOptionalAction, default=None, help="the paper's PCA colour lighting")
    t.add_argument("--workers", type=int, help="image-decoding processes (0 = all cores)")
    t.add_argument("--device", help="auto | cpu | cuda | mps")
    t.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"],
                   help="mixed precision (auto = bf16 on CUDA, fp16 + loss scaling where bf16 is missing; on CPU bf16 "
                        "where it has bf16 instructions (AVX512_BF16, AMX), else off)")
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    t.add_argument("--out", help="run folder (default runs/<time>-<model>)")
    t.add_argument("--resume", metavar="RUN", help="continue the run in RUN exactly where it stopped")
    t.add_argument("--stop-after-epoch", type=positive_int, metavar="N",
                   help="stop after epoch N as if interrupted (e.g. a time-limited job); --resume continues")
    t.add_argument("--report", action=argparse.BooleanOptionalAction,
                   help="write the HTML report at the end (default on; off in cifar10-fast: `alexnet report RUN` later)")
    t.add_argument("--quiet", action="store_true", help="no progress output")

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
    picks = {
        "data": {"source": args.data, "image_size": args.image_size, "val_split": args.val_split,
                 "workers": args.workers, "loader": args.loader, "crop": args.crop, "resize": args.resize,
                 "lighting": args.lighting, "crop_padding": args.crop_padding, "flip_mode": args.flip_mode,
                 "cutout": args.cutout},
        "model": {"name": args.model, "dropout": args.dropout, **model_options(args)},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                  "weight_decay": args.weight_decay, "label_smoothing": args.label_smoothing,
                  "optimizer": args.optimizer, "muon_lr": args.muon_lr, "muon_momentum": args.muon_momentum,
                  "warmup_epochs": args.warmup_epochs, "schedule": args.schedule, "seed": args.seed, "device": args.device,
                  "amp": args.amp, "compile": args.compile,
                  "accum_steps": args.accum_steps, "ema": args.ema,
                  "res_start": args.res_start, "res_ramp": args.res_ramp,
                  "time_limit": args.time_limit, "tta_shift": args.tta_shift,
                  "val_every": args.val_every,
                  "whiten": args.whiten, "sync_bn": args.sync_bn, "bn_scale": args.bn_scale,
                  "bn_bias_lr": args.bn_bias_lr},
    }
    out = {section: {k: v for k, v in values.items() if v is not None} for section, values in picks.items()}
    if args.report is not None:
        out["train"]["report"] = args.report
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
    print(f"run folder: {run}")
    if not (run / "report" / "report.html").exists() and not args.quiet:
        print(f"no HTML report written; `alexnet report {run}` writes it")


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
