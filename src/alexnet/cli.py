"""`alexnet` command line: argument parsing only; every verb calls the Python API.

Heavy imports (torch, matplotlib) happen inside the verbs so `alexnet --help` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import AlexnetError, TrainingStopped
from .train_options import TRAIN_GROUPS, add_model_options, add_options, model_options, positive_int


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (not the whole usage block) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


TRAIN_EPILOG = ("Stopping and resuming (docs/training.md): SIGTERM or Ctrl-C (SIGINT) finishes the step in progress, "
                "saves its position in RUN/last.pt and exits with 75; `alexnet train --resume RUN` continues it "
                "exactly (on a CPU, bit-identical to a run never stopped). A second signal stops at once (the shell reports 143 or "
                "130); what was saved stays whole. Exit codes: 0 done, 2 a bad flag or input or a failed run (a "
                "non-finite loss: the last good checkpoint is kept), 74 a checkpoint could not be written (disk "
                "full, read-only: the previous one is intact), 75 stopped by a signal, resumable.")


def add_precision_views(p: argparse.ArgumentParser) -> None:
    """--precision and --views: what `predict` and `serve` compute with (docs/serving.md has the trade)."""
    p.add_argument("--precision", choices=["auto", "fp32", "int8"], default="auto",
                   help="auto: what the exported folder's config recommends for this CPU (int8 only where its "
                        "export measured it faster within the accuracy limit), else fp32; int8 needs "
                        "`alexnet export --quantize int8`")
    p.add_argument("--views", choices=["all", "1", "2"], default="all",
                   help="test-time views per image: all = the run's own (default), 1 = the image alone, 2 = and "
                        "its mirror image; fewer is faster and usually a little less accurate")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="alexnet", description="Train, evaluate, explain and serve AlexNet "
                                     "image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    # lazy: per command (see the module doc)
    from .config import preset_config

    t = sub.add_parser("train", help="train a model into a run folder",
                       description="Train a model into a run folder. Flags override the --preset (default: the "
                                   "cifar10 recipe without its time limit); [default: ...] is the default recipe's "
                                   "value.",
                       epilog=TRAIN_EPILOG)
    defaults = preset_config(None)
    for title, options in TRAIN_GROUPS:
        add_options(t.add_argument_group(title), options, defaults)

    e = sub.add_parser("evaluate", help="accuracy, top-5, per-class scores, confusion matrix")
    e.add_argument("checkpoint", metavar="MODEL", help="a run folder, RUN/best.pt or an exported model folder")
    e.add_argument("--data", help="data to evaluate on (default: the training data)")
    e.add_argument("--split", default="test", choices=["test", "val", "train"])
    e.add_argument("--json", metavar="FILE", help="also write the metrics as JSON ('-' = stdout only)")
    e.add_argument("--ten-crop", action="store_true", help="average the paper's ten crops (streamed models)")
    e.add_argument("--device", default="auto")
    e.add_argument("--backend", choices=["torch", "onnx"],
                   help="torch (the default for fp32: the run's own arithmetic) or onnx (an exported folder's "
                        "graph; the default for --precision int8)")
    e.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                   help="int8: the exported folder's model.int8.onnx (alexnet export --quantize int8)")
    e.add_argument("--views", choices=["all", "1", "2"], default="all",
                   help="test-time views per image: all = the run's own (default), 1 or 2")

    pr = sub.add_parser("predict", help="top-k classes of image files, folders or globs")
    pr.add_argument("checkpoint", metavar="MODEL", help="a run folder, RUN/best.pt or an exported model folder")
    pr.add_argument("images", nargs="+", metavar="IMAGE",
                    help="image files, folders (searched recursively) or quoted globs such as 'photos/**/*.jpg'")
    pr.add_argument("--top-k", type=positive_int, default=5)
    pr.add_argument("--batch-size", type=positive_int, default=64,
                    help="images decoded and predicted together (memory stays bounded by this)")
    pr.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pr.add_argument("--csv", metavar="FILE", help="write image, class_1, probability_1, ... rows to FILE "
                                                  "('-' = stdout); the file appears complete or not at all")
    pr.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                    help="auto: onnxruntime for an exported folder with model.onnx (no torch import), else torch")
    pr.add_argument("--device", default="auto")
    add_precision_views(pr)

    xp = sub.add_parser("explain", help="what a prediction rests on: a heatmap over each image (Grad-CAM, occlusion)",
                        description="Predict each image as `alexnet predict` does and map where the evidence for its "
                                    "top class (or --target) lies, over the image file at its own size.")
    xp.add_argument("checkpoint", metavar="MODEL", help="a run folder, RUN/best.pt or an exported model folder")
    xp.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or quoted globs, as predict takes")
    xp.add_argument("--method", choices=["gradcam", "gradcam++", "occlusion"], default="gradcam",
                    help="gradcam / gradcam++: gradients at --layer (torch); occlusion: the probability's drop under a "
                         "grey patch (also onnxruntime, on an exported folder)")
    xp.add_argument("--target", metavar="CLASS", help="explain this class of the model instead of the top one")
    xp.add_argument("--top-k", type=positive_int, default=5)
    xp.add_argument("--layer", metavar="NAME", help="Grad-CAM's layer, a module name such as features.conv5 or "
                                                    "features.10 (default: the ReLU after the last convolution)")
    xp.add_argument("--patch", type=positive_int, help="occlusion: the patch's side in input pixels (default: a "
                                                       "quarter of the input side, 8 for 32 px)")
    xp.add_argument("--stride", type=positive_int, help="occlusion: the patch's step (default: an eighth of the side)")
    xp.add_argument("--out", metavar="DIR", help="write an overlay PNG per image (map, colour bar, class) into DIR")
    xp.add_argument("--json", metavar="FILE", help="write [{image, class, probability, method, heatmap}] to FILE, "
                                                   "heatmap as rows of floats in [0, 1] at the image's own size")
    xp.add_argument("--batch-size", type=positive_int, default=16, help="images explained together")
    xp.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                    help="auto: torch for Grad-CAM; onnxruntime for occlusion on an exported folder (no torch import)")
    xp.add_argument("--device", default="auto")

    sv = sub.add_parser("serve", help="serve a model over HTTP, with a page to try it",
                        description="Serve a model over HTTP: POST /predict, GET /model, GET /health, and a page at "
                                    "/ to drop images on (docs/serving.md).")
    sv.add_argument("model", metavar="MODEL", help="a run folder, RUN/best.pt or an exported model folder")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (0 = any free one; the URL is printed)")
    sv.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                    help="auto: onnxruntime for an exported folder with model.onnx (no torch import), else torch")
    sv.add_argument("--device", default="auto", help="auto | cpu | cuda (torch also: mps)")
    add_precision_views(sv)
    sv.add_argument("--amp", choices=["off", "bf16"], default="off",
                    help="off: fp32, the numbers of `alexnet predict`; bf16 (torch): faster for large networks on "
                         "CPUs with bf16 units (AVX512_BF16, AMX), probabilities within ~1e-2")
    sv.add_argument("--max-batch", type=positive_int, default=32,
                    help="images per forward pass (default 32; 1 = batching off)")
    sv.add_argument("--max-wait-ms", type=float, default=5.0,
                    help="how long the oldest queued image waits for others to share its forward pass (default 5)")
    sv.add_argument("--top-k", type=positive_int, default=5, help="classes per image in answers (?top_k= overrides)")
    sv.add_argument("--max-image-bytes", type=positive_int, default=20 * 2 ** 20, help="largest encoded image (20 MiB)")
    sv.add_argument("--max-pixels", type=positive_int, default=40_000_000,
                    help="largest image, width x height, read from its header before decoding (40 Mpx)")
    sv.add_argument("--max-request-bytes", type=positive_int, default=64 * 2 ** 20,
                    help="largest request body, several multipart images together (64 MiB)")
    sv.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                    help="close a connection whose request line and headers are not complete S s after it opened "
                         "or after its previous answer (default 10)")
    sv.add_argument("--body-timeout", type=float, default=10.0, metavar="S",
                    help="close (408) an upload that stalls for S s or falls S s behind --min-upload-rate (default 10)")
    sv.add_argument("--min-upload-rate", type=float, default=1024.0, metavar="BYTES_PER_S",
                    help="the slowest average an upload may keep up (default 1024; 0 = only stalls are closed)")
    sv.add_argument("--max-in-flight", type=positive_int, default=64,
                    help="requests decoded or predicted at once, once their bodies have arrived; more get 503 with "
                         "Retry-After at once (default 64)")
    sv.add_argument("--max-connections", type=positive_int, default=4096,
                    help="open connections, lowered to fit the open-files limit; more are closed at once (4096)")
    sv.add_argument("--max-buffered-bytes", type=positive_int, default=256 * 2 ** 20,
                    help="request bodies held in memory, all requests together; a request past it gets 503 (256 MiB)")

    r = sub.add_parser("report", help="write the HTML report of a run")
    r.add_argument("run", help="run folder (or a checkpoint in it)")
    r.add_argument("--data", help="data to evaluate on (default: the training data)")
    r.add_argument("--split", default="val", choices=["test", "val", "train"])
    r.add_argument("--out", help="output folder (default RUN/report)")
    r.add_argument("--device", default="auto")
    r.add_argument("--no-explain", dest="explain", action="store_false",
                   help="leave out the Grad-CAM maps (the examples' map panels, the most confused pair's section)")

    x = sub.add_parser("export", help="write a model folder: ONNX graph, safetensors weights, config, model card",
                       description="Export a trained model as a self-describing folder: model.onnx (uint8 images in, "
                                   "probabilities out, test-time views inside), model.safetensors, config.json and a "
                                   "README.md model card. Needs the export extra: pip install 'alexnet[export]'.")
    x.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder, RUN/best.pt or an exported folder")
    x.add_argument("--out", required=True, metavar="DIR",
                   help="folder to write (new, empty, or a previous export, which is replaced)")
    x.add_argument("--format", default="onnx,safetensors", help="what to write: onnx, safetensors or both "
                                                                 "(default onnx,safetensors)")
    x.add_argument("--check", metavar="DATA", help="compare torch and onnxruntime on DATA's evaluation images (the "
                                                   "validation split of the training data); fail beyond 1e-4")
    x.add_argument("--check-limit", type=positive_int, default=1000, metavar="N",
                   help="images the check uses at most (default 1000)")
    q = x.add_argument_group("int8")
    q.add_argument("--quantize", choices=["int8"], help="also write model.int8.onnx: 8-bit convolutions and linear "
                                                        "layers (onnxruntime static quantization, per-channel)")
    q.add_argument("--calibrate", metavar="DATA", help="data whose training split calibrates the 8-bit ranges "
                                                       "(default: the run's own training data)")
    q.add_argument("--calibration-images", type=positive_int, default=512, metavar="N",
                   help="calibration images (default 512)")
    q.add_argument("--calibration-method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="how activation ranges are set from the calibration images (default minmax)")
    q.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="POINTS",
                   help="with --check: fail if int8 loses more accuracy than this (default 1.0 point)")

    i = sub.add_parser("info", help="Keras-style summary of a model: layers, shapes, parameters, MACs")
    add_model_options(i)
    i.add_argument("--num-classes", type=positive_int, default=10)

    f = sub.add_parser("lr-find", help="learning-rate range test: the loss as the rate grows, a plot and a "
                                       "suggested --lr (nothing is saved in any run folder)",
                       description="The range test of Smith (2017) as fastai runs it: train from the start of a run "
                                   "with the rate growing exponentially, stop when the loss diverges, plot the "
                                   "smoothed loss against the rate and suggest one. Takes the train flags.")
    for title, options in TRAIN_GROUPS:
        kept = [o for o in options if o.flag not in LR_FIND_SKIPS]
        if kept:
            add_options(f.add_argument_group(title), kept, defaults)
    g = f.add_argument_group("range test")
    g.add_argument("--out", default="lr-find.png", help="the plot (a .png; the numbers go beside it as .json), or "
                                                        "a folder to hold lr-find.png (default ./lr-find.png)")
    g.add_argument("--steps", type=positive_int, default=200, help="steps from --start-lr to --end-lr (default 200)")
    g.add_argument("--start-lr", type=float, default=1e-6, help="the first step's rate (default 1e-6)")
    g.add_argument("--end-lr", type=float, default=10.0, help="the last step's rate (default 10)")

    rn = sub.add_parser("runs", help="table of the runs under a folder: when, model, preset, epochs, time, scores")
    rn.add_argument("dir", nargs="?", default="runs", metavar="DIR", help="folder of run folders (default ./runs)")
    rn.add_argument("--json", action="store_true", help="print JSON instead of a table")

    tn = sub.add_parser("tune", help="search training options with Optuna; each trial is a run folder",
                        description="Search training options with Optuna (docs/tuning.md): each trial trains an "
                                    "ordinary run into DIR/trials/NNNN, reports every epoch's validation accuracy to "
                                    "the pruner, and the study ends with DIR/trials.csv, best.toml and summary.html. "
                                    "Workers running the same command share the study. Needs the tune extra: pip "
                                    "install 'alexnet[tune]'.",
                        epilog="SIGTERM or Ctrl-C stops the trial in progress as `alexnet train` stops (its last.pt "
                               "saved), queues it again and exits with 75; the same command continues it. A worker "
                               "killed outright has its trial failed and retried by the next worker.")
    tn.add_argument("--data", required=True, help="the training data, as `alexnet train --data` takes it")
    tn.add_argument("--preset", metavar="NAME", help="the recipe every trial starts from (default: the one `alexnet "
                                                     "train` picks for the data)")
    tn.add_argument("--trials", type=positive_int, default=20, metavar="N",
                    help="finished (complete or pruned) trials the study ends with, all workers together (default 20)")
    tn.add_argument("--time-limit-per-trial", type=float, metavar="S", help="each trial's --time-limit in seconds")
    tn.add_argument("--space", metavar="FILE", help="the search space, TOML or YAML (default: lr, weight decay, batch "
                                                    "size and label smoothing around the recipe's values)")
    tn.add_argument("--storage", metavar="URL", help="the study's storage: a database URL such as "
                                                     "postgresql://USER@HOST/DB for workers on many machines "
                                                     "(default: the journal file DIR/journal.log)")
    tn.add_argument("--study", default="alexnet", metavar="NAME", help="the study's name in the storage (default "
                                                                       "alexnet)")
    tn.add_argument("--pruner", choices=["asha", "hyperband", "median", "none"],
                    help="stops trials that fall behind, after any epoch (default median)")
    tn.add_argument("--sampler", choices=["tpe", "random"], help="how trials are drawn (default tpe)")
    tn.add_argument("--seed", type=int, help="seeds the sampler (per trial number) and every trial's training "
                                             "(default 0)")
    tn.add_argument("--out", default="tune", metavar="DIR", help="the study's folder (default ./tune)")
    tn.add_argument("--quiet", action="store_true", help="one line per trial, no epoch lines")
    return parser


# Train flags that mean nothing to a range test: one process stepping the rate itself, no epochs, schedule,
# validation, weight averaging or run folder.
LR_FIND_SKIPS = {"--out", "--resume", "--stop-after-epoch", "--time-limit", "--report", "--val-every", "--tta-shift",
                 "--print-config", "--epochs", "--warmup-epochs", "--schedule", "--save-every", "--save-every-steps",
                 "--early-stop", "--min-delta", "--tensorboard", "--ema", "--res-start", "--res-ramp",
                 "--accum-steps", "--compile", "--sync-bn"}


def train_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Only the flags the user gave: they override the preset."""
    out: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "train": {}}
    for _, options in TRAIN_GROUPS:
        for o in options:
            value = getattr(args, o.flag[2:].replace("-", "_"), None)  # lr-find has a subset of the flags
            if o.section is not None and value is not None:
                out[o.section][o.field] = value
    return out


def train_config(args: argparse.Namespace) -> Any:
    """The preset, then --config FILE, then the flags given; validated (a bad value fails before any work)."""
    # lazy: per command (see the module doc)
    from .config import validate
    from .config_files import resolve_config

    return validate(resolve_config(args.preset, train_overrides(args), args.config))


def cmd_train(args: argparse.Namespace) -> None:
    # lazy: per command (see the module doc)
    from .data.prefetch import cache_warming

    if args.resume and (args.config or args.print_config):

        raise AlexnetError("--resume continues a run with its own config (RUN/config.json); drop --config and "
                           "--print-config")
    cfg = None if args.resume else train_config(args)
    if args.print_config:
        # lazy: per command (see the module doc)
        from .config_files import config_text

        print(config_text(cfg), end="")
        return
    # A cold image archive is decoded by a child while this process imports torch (data/prefetch.py).
    with cache_warming(cfg.data) if cfg is not None else contextlib.nullcontext():
        # lazy: per command (see the module doc)
        from .api import overrides_to_options, train
        from .engine.optim import preload_compiler_hooks

        preload_compiler_hooks()
    # --time-limit counts from the start of the process (interpreter start-up and imports included) when
    # this is the `alexnet` command; from main()'s call when main(argv) runs inside another program.
    # lazy: per command (see the module doc)
    import psutil

    started = args.started_at if args.started_at is not None else psutil.Process().create_time()
    if args.resume:  # the flags given: those that would change the run's results are refused (resume_options.py)
        run = train(resume=args.resume, out=args.out, preset=args.preset, stop_after_epoch=args.stop_after_epoch,
                    progress=not args.quiet, started_at=started, **overrides_to_options(train_overrides(args)))
    else:
        run = train(cfg, out=args.out, stop_after_epoch=args.stop_after_epoch, progress=not args.quiet,
                    started_at=started)
    # lazy: per command (see the module doc)
    from .runs import closing_lines

    lines = closing_lines(run)
    print("\n".join(lines if not args.quiet else lines[:1]))


def cmd_evaluate(args: argparse.Namespace) -> None:
    # lazy: per command (see the module doc)
    from .api import evaluate
    from .engine.checkpoint import write_json
    from .jsonio import json_text
    from .tables import format_metrics

    metrics = evaluate(args.checkpoint, data=args.data, split=args.split, device=args.device,
                       ten_crop=args.ten_crop, backend=args.backend, precision=args.precision, views=args.views)
    own = args.backend in (None, "torch") and args.precision == "fp32" and args.views == "all"
    if own:  # the run's own score
        record_score(args.checkpoint, metrics, "evaluate", args.split, args.data, args.ten_crop)
    if args.json == "-":
        print(json_text(metrics))
        return
    how = "" if own else (
        f" ({metrics['backend']} {metrics['precision']}, {metrics['views']['passes']} view"
        f"{'s' if metrics['views']['passes'] > 1 else ''})")
    print(format_metrics(metrics, f"{args.checkpoint} on the {args.split} split{how}"))
    if args.json:
        write_json(args.json, metrics)


def cmd_predict(args: argparse.Namespace) -> None:
    # lazy: per command (see the module doc)
    from .atomic import atomic_write
    from .jsonio import json_text
    from .predictions import predict_stream, write_csv
    from .runtime import load_classifier

    classifier = load_classifier(args.checkpoint, args.backend, args.device, precision=args.precision,
                                 views=args.views)
    results = predict_stream(classifier.predict_files, args.images, args.top_k, args.batch_size)
    if args.csv and args.csv != "-":
        count = 0

        def write(tmp: str) -> None:
            nonlocal count
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                count = write_csv(results, f)

        atomic_write(Path(args.csv), write)
        print(f"{count:,} predictions written to {args.csv}")
    elif args.csv:
        write_csv(results, sys.stdout)
    elif args.json:  # one JSON list, written as the results come (closed even when an image fails: exit 2)
        print("[", end="")
        try:
            for i, r in enumerate(results):
                print(("," if i else "") + "\n" + json_text(r), end="")
        finally:
            print("\n]")
    else:
        for r in results:
            top = "  ".join(f"{p['class']} {p['probability'] * 100:.1f}%" for p in r["predictions"])
            print(f"{r['image']}: {top}")


def cmd_explain(args: argparse.Namespace) -> None:
    # lazy: per command (see the module doc)
    from .explanations import explain_stream, load_explainer, write_explanations

    classifier = load_explainer(args.checkpoint, args.method, args.backend, args.device)
    results = explain_stream(classifier, args.images, args.method, args.target, args.top_k, args.layer, args.patch,
                             args.stride, args.batch_size)
    write_explanations(results, out=args.out, json_path=args.json, echo=lambda line: print(line, flush=True))


def cmd_serve(args: argparse.Namespace) -> None:
    # lazy: per command (see the module doc)
    from .runtime import load_classifier

    if args.max_wait_ms < 0:
        raise AlexnetError(f"--max-wait-ms must be >= 0, got {args.max_wait_ms:g}")
    for flag, value, zero_ok in (("--header-timeout", args.header_timeout, False),
                                 ("--body-timeout", args.body_timeout, False),
                                 ("--min-upload-rate", args.min_upload_rate, True)):
        if not 0 <= value < float("inf") or (value == 0 and not zero_ok):  # nan fails both comparisons
            raise AlexnetError(f"{flag} must be a finite number {'>= 0' if zero_ok else '> 0'}, got {value:g}")
    if args.max_buffered_bytes < max(args.max_request_bytes, args.max_image_bytes):
        larger = "--max-request-bytes" if args.max_request_bytes >= args.max_image_bytes else "--max-image-bytes"
        raise AlexnetError(f"--max-buffered-bytes ({args.max_buffered_bytes:,}) must be at least {larger} "
                           f"({max(args.max_request_bytes, args.max_image_bytes):,}), or that upload is never taken")
    # The model's threads sleep when idle: the event loop and the decoders share the cores with them.
    classifier = load_classifier(args.model, args.backend, args.device, spin=False, amp=args.amp,
                                 precision=args.precision, views=args.views)
    try:
        # lazy: per command (see the module doc)
        from .serve.app import Server, ServeSettings, create_app
    except ImportError as e:
        raise AlexnetError(f"alexnet serve needs {e.name or 'the web stack'}: pip install 'alexnet[serve]'") from None

    settings = ServeSettings(host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             top_k=args.top_k, max_image_bytes=args.max_image_bytes, max_pixels=args.max_pixels,
                             max_request_bytes=args.max_request_bytes, header_timeout=args.header_timeout,
                             body_timeout=args.body_timeout, min_upload_rate=args.min_upload_rate,
                             max_in_flight=args.max_in_flight, max_connections=args.max_connections,
                             max_buffered_bytes=args.max_buffered_bytes)
    server = Server(create_app(classifier, settings), settings)
    batching = f"batches of up to {args.max_batch}, {args.max_wait_ms:g} ms wait" if args.max_batch > 1 else "no batching"
    passes = classifier.views["passes"]
    print(f"serving {args.model} ({classifier.card['name']}, {classifier.backend} {classifier.precision}, "
          f"{passes} view{'s' if passes > 1 else ''}; {batching}) "
          f"on {server.url}  (Ctrl-C stops)", flush=True)
    server.run()
    print("alexnet serve: stopped", flush=True)


def cmd_report(args: argparse.Namespace) -> None:
    # lazy: per command (see the module doc)
    from .api import report

    out = report(args.run, data=args.data, split=args.split, out=args.out, device=args.device,
                 explain=args.explain)
    record_score(args.run, json.loads((out / "metrics.json").read_text()), "report", args.split, args.data)
    print(f"report: {out / 'report.html'}")


def record_score(checkpoint: str, metrics: dict[str, Any], by: str, split: str, data: str | None,
                 ten_crop: bool = False) -> None:
    """Keep the score in RUN/evaluations.json for `alexnet runs`; a read-only run folder only warns."""
    # lazy: per command (see the module doc)
    from .runs import record_evaluation

    try:
        record_evaluation(checkpoint, metrics, by=by, split=split, data=data, ten_crop=ten_crop)
    except OSError as e:
        print(f"alexnet {by}: warning: the score was not recorded in the run folder ({e})", file=sys.stderr)


def cmd_lr_find(args: argparse.Namespace) -> None:
    # lazy: per command (see the module doc)
    from .engine.lr_find import lr_find

    result = lr_find(train_config(args), args.out, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps,
                     progress=not args.quiet)
    print("\n".join(result.summary()))


def cmd_runs(args: argparse.Namespace) -> None:
    # lazy: per command (see the module doc)
    from .runs import find_runs, run_row, runs_table

    if not os.path.isdir(args.dir):
        raise AlexnetError(f"{args.dir}: no such folder (`alexnet train` writes runs under ./runs unless --out "
                           "says otherwise)")
    runs = find_runs(args.dir)
    if args.json:
        print(json.dumps([run_row(r) for r in runs], indent=2))
    elif not runs:
        print(f"no runs under {args.dir}")
    else:
        # lazy: per command (see the module doc)
        from rich.console import Console

        # Piped output keeps whole lines (rich would otherwise fold the table to 80 columns).
        Console(highlight=False, width=None if sys.stdout.isatty() else 240).print(
            runs_table(runs, f"{len(runs)} run{'s' * (len(runs) > 1)} under {args.dir}"))


def cmd_info(args: argparse.Namespace) -> None:
    # lazy: per command (see the module doc)
    from .models import create_model, default_image_size
    from .summary import format_summary, summarize

    name = args.model or "alexnet-cifar"
    size = args.image_size or default_image_size(name)
    options = {k: v for k, v in model_options(args).items() if v is not None}
    model = create_model(name, num_classes=args.num_classes, image_size=size, **options)
    extra = "".join(f", {k}={v}" for k, v in options.items())
    print(format_summary(summarize(model, (3, size, size)),
                         f"{name} ({args.num_classes} classes, {size}x{size} input{extra})"))


def cmd_export(args: argparse.Namespace) -> None:
    # lazy: per command (see the module doc)
    from .export import export_model

    result = export_model(args.checkpoint, args.out, formats=args.format, check=args.check,
                          check_limit=args.check_limit, quantize=args.quantize, calibrate=args.calibrate,
                          calibration_images=args.calibration_images, calibration_method=args.calibration_method,
                          max_accuracy_drop=args.max_accuracy_drop)
    if result.parity is not None:
        print(f"check: {result.parity.summary()}")
    int8 = result.config.get("int8")
    if int8:
        cal = int8["calibration"]
        print(f"int8: {int8['method']} calibration on {cal['images']:,} images of the {cal['split']} split of "
              f"{cal['data']}, per-channel weights{', reduce_range' if int8['reduce_range'] else ''} "
              f"({int8['cpu']['description']})")
        for line in result.int8.lines() if result.int8 else []:
            print(line)
        if not result.int8:
            sp = int8["speed"]
            print(f"int8 speed: {sp['fp32_images_s']:,.0f} images/s fp32, {sp['int8_images_s']:,.0f} int8 "
                  f"({sp['ratio']:.2f}x)")
        rec = int8["recommendation"]
        print(f"precision on this CPU: {rec['precision']} ({rec['why']})")
    files = ", ".join(f"{name} ({size / 1e6:.1f} MB)" if size >= 1e5 else name for name, size in result.files.items())
    print(f"{'replaced the previous export in' if result.replaced else 'exported to'} {result.out}: {files}")


def cmd_tune(args: argparse.Namespace) -> None:
    try:
        import optuna  # noqa: F401  (the tune extra)
    except ImportError:
        raise AlexnetError("alexnet tune needs optuna: pip install 'alexnet[tune]'") from None
    # lazy: per command (see the module doc)
    from .tune.space import read_space

    if args.space:
        read_space(args.space)  # a mistake in the file: one line, before torch is imported or anything written
    # lazy: per command (see the module doc)
    from .tune.study import TuneOptions, tune

    tune(TuneOptions(data=args.data, out=Path(args.out), trials=args.trials, preset=args.preset, space=args.space,
                     time_limit=args.time_limit_per_trial, storage=args.storage, study=args.study,
                     pruner=args.pruner, sampler=args.sampler, seed=args.seed, quiet=args.quiet))


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "explain": cmd_explain,
            "report": cmd_report, "info": cmd_info, "serve": cmd_serve, "export": cmd_export, "lr-find": cmd_lr_find,
            "runs": cmd_runs, "tune": cmd_tune}


def main(argv: Sequence[str] | None = None) -> int:
    called_at = None if argv is None else time.time()
    args = build_parser().parse_args(argv)
    args.started_at = called_at

    try:
        COMMANDS[args.command](args)
    except AlexnetError as e:
        print(f"alexnet {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except TrainingStopped as e:  # SIGTERM/SIGINT during training: the position is saved
        if e.show:
            print(f"alexnet {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted; a run's last.pt holds its last saved position "
              "(continue with --resume RUN)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `alexnet evaluate ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if argv is None:
        # The `alexnet` command is about to exit: the interpreter's last collection would walk the ~300,000
        # objects torch's modules hold (0.6 s on the 2-core box); frozen, it skips them. Files are closed.

        gc.freeze()
    return 0


if __name__ == "__main__":
    sys.exit(main())
