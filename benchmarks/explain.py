"""The explanations of `alexnet explain` checked and timed: Grad-CAM, Grad-CAM++ and occlusion.

1. Model randomisation (Adebayo et al. 2018): on held-out CIFAR-10 images of a trained run (--run; by default its
   own validation split), each method's map of the predicted class on the trained network against the map after
   re-initialising the layers from the classifier down, cumulatively (alexnet.saliency.sanity): Spearman's rank
   correlation per randomised layer, beside what the trained maps of two unrelated images share.
2. Localisation on a synthetic set whose answer is known (alexnet.saliency.synthetic: a coloured square on
   noise decides the class; a small alexnet-cifar fitted here): the pointing game and the share of the map's
   mass on the square, beside the square's share of the area (a map spread evenly).
3. Faithfulness on --images held-out CIFAR-10 images: deletion and insertion AUCs (the predicted class's
   probability as pixels are set to the mean colour, or put back onto a mean-colour image, in the map's order),
   against a random map's.
4. Cost: milliseconds per image of each method, beside a plain forward pass (`alexnet predict`'s, with the
   run's test-time views), on the run's network and on the 227 px notebook network (an untrained `alexnet` with
   batch norm, reading 32 px images resized on the device as the notebook recipe does); a dense fp32 matmul rate
   (benchmarks/matmul.py) is measured in the same run, before and after.

    python benchmarks/explain.py --run runs/c10 --json benchmarks/results/explain-cpu.json
    python benchmarks/explain.py --run runs/c10 --images 50 --randomisation-images 20   # a quick look
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from matmul import matmul_gflops  # noqa: E402
from throughput import MEAN, STD, git_commit, host_info, host_name, resolve_device, sync  # noqa: E402

from alexnet.config import preset_config  # noqa: E402
from alexnet.data.prepare import InputSpec  # noqa: E402
from alexnet.engine.evaluation import stacked_views  # noqa: E402
from alexnet.errors import AlexnetError  # noqa: E402
from alexnet.inference import LoadedModel, eval_data, load_model  # noqa: E402
from alexnet.models import create_model  # noqa: E402
from alexnet.saliency import sanity, synthetic  # noqa: E402
from alexnet.saliency.occlusion import fill_colour  # noqa: E402

METHODS = ("gradcam", "gradcam++", "occlusion")
# The default layer is the rectified conv5 maps, which Grad-CAM++'s closed form assumes; it is also measured on
# the convolution's own output, for comparison (alexnet-cifar).
LOCALISED = {"gradcam": None, "gradcam++": None, "gradcam++ @conv5": "features.conv5", "occlusion": None}


def log(message: str) -> None:
    print(message, flush=True)


def held_out(loaded: LoadedModel, data: str | None, split: str, count: int, seed: int
             ) -> tuple[np.ndarray, np.ndarray, str]:
    """`count` images (uint8, as predict prepares them) drawn with `seed` from a split the run did not train on,
    their labels, and the split's description."""
    ev = eval_data(loaded, data, split)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(ev.labels), size=min(count, len(ev.labels)), replace=False))
    return ev.fetch_images(idx), np.asarray(ev.labels)[idx], f"{ev.description}, split {split!r}"


def fresh_network(loaded: LoadedModel, seed: int) -> torch.nn.Module:
    """An untrained network of the run's architecture: what the cascade re-initialises layers from."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(loaded.config.model.name, num_classes=len(loaded.classes),
                             image_size=int(loaded.checkpoint["image_size"]), **loaded.config.model.options())
    return model.to(loaded.device)


def randomisation(loaded: LoadedModel, images: np.ndarray, targets: np.ndarray, seed: int) -> dict:
    out = {"images": len(images), "methods": {}}
    fresh = fresh_network(loaded, seed)
    for method in METHODS:
        start = time.perf_counter()

        def explain(network, method=method):
            return sanity.explain_model(loaded, images, targets, method, network)

        trained = explain(loaded.model)
        unrelated = sanity.rank_correlations(trained, np.roll(trained, 1, axis=0))
        rows = sanity.randomisation_test(loaded.model, fresh, explain)
        for row in rows:
            row.pop("per_image")
        out["methods"][method] = {"unrelated": float(np.nanmean(unrelated)), "layers": rows,
                                  "constant_trained": int(sum(m.max() == m.min() for m in trained))}
        log(f"  {method}: fully randomised {rows[-1]['spearman']:.3f}, unrelated images {np.nanmean(unrelated):.3f} "
            f"({time.perf_counter() - start:.0f} s)")
    return out


def localisation(train_images: int, held: int, epochs: int, seed: int) -> dict:
    images, labels, _ = synthetic.placed_squares(train_images, seed=seed)
    start = time.perf_counter()
    loaded = synthetic.fit_placed_squares(images, labels, epochs=epochs, seed=seed)
    fit_s = time.perf_counter() - start
    images, labels, masks = synthetic.placed_squares(held, seed=seed + 1)
    keep = masks.any(axis=(1, 2))  # images of class "none" have no square to point at
    images, labels, masks = images[keep], labels[keep], masks[keep]
    accuracy = float((sanity.model_probabilities(loaded)(images).argmax(1) == labels).mean())
    out = {"train_images": train_images, "epochs": epochs, "fit_seconds": fit_s, "images": len(images),
           "accuracy": accuracy, "area_share": float(masks.mean()), "methods": {}}
    for name, layer in LOCALISED.items():
        maps = sanity.explain_model(loaded, images, labels, name.split(" ")[0], layer=layer)
        out["methods"][name] = {"pointing": float(sanity.pointing_game(maps, masks).mean()),
                                "mass": float(sanity.mass_inside(maps, masks).mean())}
    return out


def faithfulness(loaded: LoadedModel, images: np.ndarray, targets: np.ndarray, steps: int, seed: int) -> dict:
    """Deletion and insertion AUCs of each method's maps and of two random baselines: pixels in random order, and
    random regions (a grid of an eighth of the side, resized), which perturb the image as a map's blobs do."""
    probabilities = sanity.model_probabilities(loaded)
    fill = fill_colour(loaded.spec.mean)
    side = images.shape[1]
    baselines = {"random pixels": sanity.random_maps(len(images), side, seed),
                 f"random {side // 8}x{side // 8}": sanity.random_maps(len(images), side, seed, grid=side // 8)}
    maps = {**baselines, **{method: sanity.explain_model(loaded, images, targets, method) for method in METHODS}}
    auc = {}
    for name, m in maps.items():
        start = time.perf_counter()
        auc[name] = {curve: sanity.curve_auc(run(probabilities, images, targets, m, fill, steps, seed))
                     for curve, run in (("deletion", sanity.deletion_curves), ("insertion", sanity.insertion_curves))}
        log(f"  {name}: deletion {auc[name]['deletion'].mean():.3f}, insertion {auc[name]['insertion'].mean():.3f} "
            f"({time.perf_counter() - start:.0f} s)")
    out = {"images": len(images), "steps": steps, "baselines": list(baselines), "methods": {}}
    for name, a in auc.items():
        row = {"deletion_auc": float(a["deletion"].mean()), "insertion_auc": float(a["insertion"].mean())}
        if name not in baselines:  # per image: does the map beat each random map on the same image?
            row["wins"] = {b: {"deletion": float((a["deletion"] < auc[b]["deletion"]).mean()),
                               "insertion": float((a["insertion"] > auc[b]["insertion"]).mean())} for b in baselines}
        out["methods"][name] = row
    return out


def ms_per_image(work, count: int, repeats: int, device: torch.device) -> float:
    """Median milliseconds per image of `work()` over `repeats` runs, after one untimed run."""
    work()
    runs = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        work()
        sync(device)
        runs.append((time.perf_counter() - start) * 1000 / count)
    return statistics.median(runs)


def timing(loaded: LoadedModel, images: np.ndarray, repeats: int) -> dict:
    targets = sanity.model_probabilities(loaded)(images).argmax(1)
    cases = {"forward": lambda: sanity.model_probabilities(loaded)(images)}
    for method in METHODS:
        cases[method] = lambda method=method: sanity.explain_model(loaded, images, targets, method)
    train = loaded.config.train
    _, views = stacked_views(torch.zeros(1, 1, 8, 8), train.tta, train.tta_shift)
    return {"model": loaded.config.model.name, "options": loaded.config.model.options(),
            "input_side": loaded.spec.input_side, "network_side": loaded.spec.image_size,
            "views": len(views), "images": len(images),
            "ms_per_image": {name: ms_per_image(work, len(images), repeats, loaded.device)
                             for name, work in cases.items()}}


def notebook_model(device: torch.device, seed: int) -> LoadedModel:
    """The notebook preset's network (`alexnet` with batch norm at 227 px), untrained, as a run of it on CIFAR-10
    is explained: 32 px images, normalised and resized to 227 on the device, flip test-time views."""
    cfg = preset_config("notebook")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(cfg.model.name, num_classes=10, image_size=227, **cfg.model.options())
    model = model.to(device).eval()
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    spec = InputSpec("memory", 227, store_size=32, mean=tuple(MEAN), std=tuple(STD))
    return LoadedModel(model, [str(i) for i in range(10)], cfg, spec, device, {"image_size": 227})


def format_tables(report: dict) -> str:
    lines = []
    host, mm = report["host"], report["matmul"]
    lines.append(f"device {host['device']} ({host_name(host)}), {host['torch_threads']} torch threads, torch "
                 f"{host['torch']}; fp32 matmul {mm['before']['n']}^2: {mm['before']['gflops']:.1f} GFLOP/s before, "
                 f"{mm['after']['gflops']:.1f} after")
    r = report["randomisation"]
    lines += ["", f"Model randomisation: Spearman rank correlation with the trained network's map, mean over "
                  f"{r['images']} held-out images ({report['run']['held_out']})",
              f"{'randomised down to':<20}" + "".join(f"{m:>12}" for m in METHODS)]
    layers = [row["layer"] for row in r["methods"][METHODS[0]]["layers"]]
    for i, layer in enumerate(layers):
        lines.append(f"{layer:<20}" + "".join(f"{r['methods'][m]['layers'][i]['spearman']:>12.3f}" for m in METHODS))
    lines.append(f"{'(unrelated images)':<20}" + "".join(f"{r['methods'][m]['unrelated']:>12.3f}" for m in METHODS))
    loc = report["localisation"]
    lines += ["", f"Localisation: {loc['images']} synthetic held-out images (a 10 px square on noise; net fitted on "
                  f"{loc['train_images']} images, {loc['epochs']} epochs, accuracy {100 * loc['accuracy']:.1f}%); "
                  f"the square is {100 * loc['area_share']:.1f}% of the area",
              f"{'method':<20}{'pointing':>10}{'mass in square':>16}"]
    for name, row in loc["methods"].items():
        lines.append(f"{name:<20}{100 * row['pointing']:>9.1f}%{100 * row['mass']:>15.1f}%")
    f = report["faithfulness"]
    short = [b.split(" ", 1)[1] for b in f["baselines"]]  # "pixels", "4x4"
    lines += ["", f"Faithfulness: {f['images']} held-out images, {f['steps']} steps; AUC of the predicted class's "
                  "probability (deletion: lower is better; insertion: higher); wins: the share of images where the "
                  "map beats that random map",
              f"{'map':<20}{'deletion':>10}" + "".join(f"{'wins ' + b:>13}" for b in short)
              + f"{'insertion':>11}" + "".join(f"{'wins ' + b:>13}" for b in short)]
    for name, row in f["methods"].items():
        wins = {curve: "".join(f"{100 * row['wins'][b][curve]:>12.1f}%" if "wins" in row else f"{'-':>13}"
                               for b in f["baselines"]) for curve in ("deletion", "insertion")}
        lines.append(f"{name:<20}{row['deletion_auc']:>10.3f}{wins['deletion']}{row['insertion_auc']:>11.3f}"
                     f"{wins['insertion']}")
    lines += ["", "Cost: milliseconds per image (median of runs)",
              f"{'network':<28}{'views':>6}" + "".join(f"{c:>11}" for c in ("forward", *METHODS))]
    for name, t in report["timing"].items():
        label = f"{'run' if name == 'run' else 'notebook'} {t['model']} {t['input_side']}->{t['network_side']} px"
        lines.append(f"{label:<28}{t['views']:>6}" + "".join(f"{t['ms_per_image'][c]:>11.2f}"
                                                             for c in ("forward", *METHODS)))
    lines.append("forward: predict's probabilities with the run's test-time views (views); each method as `alexnet "
                 "explain` computes it over the same views")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Sanity checks and cost of alexnet explain's maps.")
    p.add_argument("--run", required=True, help="a trained run folder (e.g. --preset cifar10 on CIFAR-10)")
    p.add_argument("--data", help="held-out images: the run's own data (default) or another source")
    p.add_argument("--split", default="val", help="the split of --data (default val: the run's validation split)")
    p.add_argument("--images", type=int, default=1000, help="held-out images for deletion/insertion (1,000)")
    p.add_argument("--randomisation-images", type=int, default=200,
                   help="held-out images for the randomisation test (200: each costs 7 occlusion maps)")
    p.add_argument("--steps", type=int, default=32, help="deletion/insertion steps (32: 32 px a step at 32 px)")
    p.add_argument("--squares", type=int, default=500, help="synthetic held-out images (a quarter have no square)")
    p.add_argument("--squares-train", type=int, default=1500, help="synthetic training images")
    p.add_argument("--squares-epochs", type=int, default=3)
    p.add_argument("--timing-images", type=int, default=64, help="images timed on the run's network")
    p.add_argument("--timing-images-227", type=int, default=8, help="images timed on the 227 px network")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the median is kept")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the run's and the 227 px network run (the synthetic net trains on the CPU)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    host = host_info(device)
    log(f"{host_name(host)}: {host['torch_threads']} threads, torch {host['torch']}")
    n = 4096 if device.type == "cuda" else 2048
    before = matmul_gflops(n, 7, device, "fp32")
    log(f"fp32 matmul {n}^2 before: {before['gflops']:.1f} GFLOP/s")

    try:
        loaded = load_model(args.run, str(device))
        count = max(args.images, args.randomisation_images)
        images, labels, description = held_out(loaded, args.data, args.split, count, args.seed)
    except AlexnetError as e:
        print(f"explain.py: error: {e}", file=sys.stderr)
        return 2
    probabilities = sanity.model_probabilities(loaded)(images)
    targets = probabilities.argmax(1)  # the class `alexnet explain` explains by default
    run = {"path": str(args.run), "model": loaded.config.model.name, "options": loaded.config.model.options(),
           "held_out": description, "images": len(images), "accuracy": float((targets == labels).mean())}
    log(f"{args.run}: {len(images)} held-out images ({description}), accuracy {100 * run['accuracy']:.1f}%")

    log("model randomisation ...")
    r_count = min(args.randomisation_images, len(images))
    report_r = randomisation(loaded, images[:r_count], targets[:r_count], args.seed + 1)
    log("localisation on placed squares ...")
    report_l = localisation(args.squares_train, args.squares, args.squares_epochs, args.seed)
    log("deletion and insertion ...")
    f_count = min(args.images, len(images))
    report_f = faithfulness(loaded, images[:f_count], targets[:f_count], args.steps, args.seed)
    log("timing ...")
    notebook = notebook_model(device, args.seed)
    report_t = {"run": timing(loaded, images[:args.timing_images], args.repeats),
                "notebook": timing(notebook, images[:args.timing_images_227], args.repeats)}

    after = matmul_gflops(n, 7, device, "fp32")
    log(f"fp32 matmul {n}^2 after: {after['gflops']:.1f} GFLOP/s")
    settings = {k: v for k, v in vars(args).items() if k not in ("json",)}
    report = {"benchmark": "explain", "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "git": git_commit(), "host": host, "settings": settings,
              "matmul": {"before": before, "after": after,
                         "mean_gflops": (before["gflops"] + after["gflops"]) / 2},
              "run": run, "randomisation": report_r, "localisation": report_l, "faithfulness": report_f,
              "timing": report_t}
    log("")
    log(format_tables(report))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        log(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
