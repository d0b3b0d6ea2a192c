"""Fast checks of the benchmark scripts' pieces (no real benchmark, no training run)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        yield {name: importlib.import_module(name) for name in ("matmul", "throughput", "time_to_accuracy", "serve", "tune")}
    finally:
        sys.path.remove(str(BENCH))
        for name in ("matmul", "throughput", "time_to_accuracy", "serve", "tune"):
            sys.modules.pop(name, None)


def test_matmul_rate_is_the_median_of_2n3_flops_over_each_runs_time(bench, monkeypatch):
    # A clock that says each of three products of 64 x 64 matrices took 0.1, 0.2 and 0.4 ms: 2 * 64**3 =
    # 524,288 FLOPs each, so 5.24, 2.62 and 1.31 GFLOP/s, and the median is the middle one.
    import types

    ticks = iter([0.0, 0.0001, 1.0, 1.0002, 2.0, 2.0004])
    monkeypatch.setattr(bench["matmul"], "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    r = bench["matmul"].matmul_gflops(n=64, repeats=3)
    assert r["runs"] == [5.24, 2.62, 1.31] and r["gflops"] == pytest.approx(2.62144)
    assert r["dtype"] == "fp32" and r["n"] == 64


def test_throughput_case_reports_the_median_run_and_counts_flops(bench, monkeypatch):
    tp = bench["throughput"]
    import math

    import torch

    # Seconds per batch of 2 from three timed runs, training then inference: rates are 2 / median.
    timings = iter([[0.5, 0.25, 1.0], [0.1, 0.2, 0.05]])
    monkeypatch.setattr(tp, "time_loop", lambda step, *args: (step(), next(timings))[1])
    case = tp.run_case("alexnet-cifar-16w@32", device=torch.device("cpu"), batch=2, runs=3, warmup=0, iters=1,
                       channels_last=True, amp="off")
    assert case["train_img_s"] == 4.0 and case["train_img_s_runs"] == [4.0, 8.0, 2.0]
    assert case["infer_img_s"] == 20.0 and case["infer_img_s_runs"] == [20.0, 10.0, 40.0]
    assert case["optimizer"] == "SGD" and case["amp"] == "fp32"
    assert math.isfinite(case["final_train_loss"])  # the training step really ran
    # FLOPs from MACs: 2 per MAC to infer, 3 x 2 to train. 1e6 MACs at 2,000 and 500 images/s: 4 and 3 GFLOP/s.
    rates = {"macs_per_image": 1_000_000, "train_img_s": 500.0, "infer_img_s": 2000.0}
    tp.add_rates(rates, ref_gflops=100.0, fp32_gflops=40.0)
    assert rates["infer_gflops"] == pytest.approx(4.0) and rates["train_gflops"] == pytest.approx(3.0)
    assert rates["infer_frac_of_matmul"] == pytest.approx(0.04)
    assert rates["train_frac_of_matmul"] == pytest.approx(0.03)
    assert rates["train_frac_of_fp32_matmul"] == pytest.approx(0.075)


def test_throughput_runs_under_the_autocast_it_records(bench, monkeypatch):
    # --amp bf16 is what `--amp auto` picks on a CPU with bf16 instructions; the case says which it ran, and
    # every timed step really runs inside a bf16 autocast region.
    import contextlib

    import torch

    tp = bench["throughput"]
    inside, real = [], tp.autocast

    @contextlib.contextmanager
    def spy(device, amp):
        with real(device, amp):
            inside.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            yield

    monkeypatch.setattr(tp, "autocast", spy)
    case = tp.run_case("alexnet-cifar-16w@32", device=torch.device("cpu"), batch=2, runs=1, warmup=0, iters=1,
                       channels_last=True, amp="bf16")
    assert case["amp"] == "bf16" and len(inside) == 2  # one training step, one inference step
    assert set(inside) == {(True, torch.bfloat16)}
    assert torch.isfinite(torch.tensor(case["final_train_loss"]))


def test_throughput_steps_a_preset_network_with_the_presets_optimizer(bench):
    tp = bench["throughput"]
    import torch

    from alexnet.config import PRESETS

    case = tp.run_case("cifar10-fast@32", device=torch.device("cpu"), batch=2, runs=1, warmup=0, iters=1,
                       channels_last=True)
    assert PRESETS["cifar10-fast"]["train"]["optimizer"] == "muon" and case["optimizer"] == "MuonSGD"
    assert case["train_img_s"] > 0


def test_results_name_the_cpu_isa(bench):
    # Boxes that report the same CPU model ran the same networks 1.3-1.6x apart: the ISA torch dispatches
    # to goes into the result files and onto the plots. Told to dispatch to its plain kernels
    # (ATEN_CPU_CAPABILITY=default), torch runs as on a CPU without vector extensions, and the host says so.
    import os
    import subprocess
    import sys

    import torch

    code = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); import torch, throughput; "
            "print(throughput.host_info(torch.device('cpu'))['cpu_isa'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "ATEN_CPU_CAPABILITY": "default"})
    assert out.stdout.strip() == "DEFAULT"
    host = bench["throughput"].host_info(torch.device("cpu"))
    title = bench["time_to_accuracy"].plot_title(["cifar10"], "d/train.tar.gz", host, 150.0)
    assert f"train.tar.gz: {host['cpu_model']} ({host['cpu_isa']}), {host['torch_threads']} threads" in title
    # Result files written before the field existed still plot (merge reads them).
    old = bench["time_to_accuracy"].plot_title(["cifar10"], "d.tar.gz", {"cpu_model": "cpu", "torch_threads": 2}, 150.0)
    assert "d.tar.gz: cpu, 2 threads, fp32 matmul 150 GFLOP/s" in old


def test_throughput_rejects_unknown_case(bench):
    with pytest.raises(SystemExit):
        bench["throughput"].parse_args(["--cases", "nope"])


def test_parse_time_v(bench):
    text = ("\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03.50\n"
            "\tMaximum resident set size (kbytes): 204800\n")
    assert bench["time_to_accuracy"].parse_time_v(text) == {"elapsed_s": 3723.5, "max_rss_kb": 204800}


def test_curve_summary_and_plot(bench, tmp_path):
    tta = bench["time_to_accuracy"]
    startup, points = tta.curve([{"epoch": 1, "seconds": 10.0, "val_acc": 0.5},
                                 {"epoch": 2, "seconds": 10.0, "val_acc": 0.8}], wall_s=25.0)
    assert startup == pytest.approx(5.0)
    assert [p["seconds"] for p in points] == pytest.approx([15.0, 25.0])
    assert tta.time_to_target(points, 60) == pytest.approx(25.0) and tta.time_to_target(points, 90) is None

    runs = []
    for seed, wall, final in ((0, 25.0, 0.8), (1, 27.0, 0.7)):
        runs.append({"preset": "cifar10", "seed": seed, "wall_s": wall, "startup_s": 5.0, "final_val_acc": final,
                     "best_val_acc": final, "peak_rss_mb": 500.0, "peak_tree_rss_mb": 520.0, "curve": points,
                     "time_to_target_s": {"60": 25.0}})
    runs.append({"preset": "cifar10", "seed": 2, "error": "boom", "returncode": 1})
    summary = tta.summarize(runs, ["cifar10"], [60.0])
    s = summary[0]
    assert s["seeds"] == [0, 1] and s["failed_seeds"] == [2]
    assert s["wall_s"]["mean"] == pytest.approx(26.0) and s["final_val_acc_pct"]["max"] == pytest.approx(80.0)
    assert s["time_to_target_s"]["60"]["reached"] == 2
    matmul = {"before": {"n": 64, "gflops": 1.0}, "after": {"gflops": 2.0}, "mean_gflops": 1.5}
    row = next(line for line in tta.format_table(summary, matmul, [60.0]).splitlines() if line.startswith("cifar10"))
    # walls 25 and 27 s: mean 26.0, sample std 1.4; accuracies 80 and 70 %: 75.00 +- 7.07; both reached 60% at 25 s
    assert "0,1 (1 failed)" in row and "26.0 ± 1.4" in row and "75.00 ± 7.07" in row and row.endswith("25 (2/2)")
    png = tmp_path / "tta.png"
    tta.plot(runs, ["cifar10"], [60.0], png, "test")
    from PIL import Image

    with Image.open(png) as im:
        assert im.format == "PNG" and im.width >= 400 and im.height >= 200


def test_extra_passthrough_is_split_off(bench):
    own, extra = bench["time_to_accuracy"].split_extra(["--seeds", "0", "--extra", "--epochs", "1", "--seeds", "x"])
    assert own == ["--seeds", "0"] and extra == ["--epochs", "1", "--seeds", "x"]


def test_merge_combines_seeds_from_separate_result_files(bench, tmp_path, capsys):
    # A 45-minute preset is run one seed at a time; --merge gives the table and plot of all of them.
    tta = bench["time_to_accuracy"]
    files = []
    for seed, final, rate in ((0, 0.88, 190.0), (1, 0.90, 210.0)):
        points = [{"epoch": 1, "seconds": 100.0, "val_acc": final - 0.1},
                  {"epoch": 2, "seconds": 200.0, "val_acc": final}]
        run = {"preset": "cifar10-best", "seed": seed, "wall_s": 200.0 + seed, "startup_s": 5.0,
               "final_val_acc": final, "best_val_acc": final, "peak_rss_mb": 900.0, "peak_tree_rss_mb": 900.0,
               "curve": points, "time_to_target_s": {"85": 200.0}}
        matmul = {"before": {"n": 2048, "gflops": rate}, "after": {"n": 2048, "gflops": rate}, "mean_gflops": rate}
        doc = {"benchmark": "time_to_accuracy", "git": "abc", "host": {"cpu_model": "cpu", "torch_threads": 2},
               "data": "d.tar.gz", "cold_cache": True, "targets_pct": [85.0], "matmul": matmul, "runs": [run]}
        files.append(tmp_path / f"seed{seed}.json")
        files[-1].write_text(json.dumps(doc))
    out, png = tmp_path / "merged.json", tmp_path / "merged.png"
    argv = ["--merge", *map(str, files), "--targets", "80", "89", "--json", str(out), "--png", str(png)]
    assert tta.main(argv) == 0
    merged = json.loads(out.read_text())
    s = merged["summary"][0]
    assert s["seeds"] == [0, 1] and s["final_val_acc_pct"]["mean"] == pytest.approx(89.0)
    assert s["wall_s"]["mean"] == pytest.approx(200.5)
    # Targets the runs were not started with are read off their curves: 80% after 200 s (seed 0) and
    # 100 s (seed 1), 89% by seed 1 only.
    assert s["time_to_target_s"]["80"]["reached"] == 2 and s["time_to_target_s"]["80"]["mean"] == pytest.approx(150)
    assert s["time_to_target_s"]["89"]["reached"] == 1
    assert [m["mean_gflops"] for m in merged["matmul"]] == [190.0, 210.0]
    table = capsys.readouterr().out
    assert "190.0 GFLOP/s before" in table and "210.0 GFLOP/s before" in table
    from PIL import Image

    with Image.open(png) as im:
        assert im.format == "PNG" and im.width >= 400 and im.height >= 200
    # The same seed twice is refused, and so is a file this script did not write.
    with pytest.raises(SystemExit, match="seed 0 is in both"):
        tta.main(["--merge", str(files[0]), str(files[0]), "--json", str(out), "--png", str(png)])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"benchmark": "throughput", "cases": []}))
    with pytest.raises(SystemExit):
        tta.main(["--merge", str(other), "--json", str(out), "--png", str(png)])
    assert f"--merge {other}: not a time_to_accuracy.py result file" in capsys.readouterr().err


def test_serve_targets_hold_full_views_to_1000_and_int8_or_fewer_views_to_2000(bench):
    def case(precision, views, rate, p99=50.0, errors=0, batching=True):
        return {"network": "cifar10", "backend": "onnx", "precision": precision, "views": views, "passes": 6,
                "batching": batching, "predictions_s": rate, "p99_ms": p99, "errors": errors, "accuracy": 0.857}

    lines = bench["serve"].target_lines([
        case("fp32", "all", 990.0), case("int8", "all", 1240.0), case("int8", "all", 400.0, batching=False),
        case("fp32", "1", 2100.0, p99=120.0), case("int8", "2", 2008.0), case("fp32", "2", 2500.0, errors=1)])
    assert len(lines) == 5  # batching off is the divisor of the gain, not a target of its own
    assert ">= 1,000/s: missed (990/s" in lines[0]
    assert ">= 1,000/s: met, >= 2,000/s: missed (1,240/s" in lines[1] and "batching on / off = 3.1x" in lines[1]
    assert ">= 2,000/s: missed (2,100/s, p99 120 ms" in lines[2]  # fast enough, but not within 100 ms
    assert ">= 2,000/s: met (2,008/s" in lines[3] and "accuracy 85.70%" in lines[3]
    assert ">= 2,000/s: missed (2,500/s, p99 50 ms, 1 errors" in lines[4]


def test_tune_trials_per_hour_is_finished_trials_over_wall_hours(bench):
    tune = bench["tune"]
    # 24 trials in 1,800 s (half an hour): 48 an hour; 7 in 2,520 s (42 minutes): 10 an hour.
    assert tune.trials_per_hour(24, 1800.0) == pytest.approx(48.0)
    assert tune.trials_per_hour(7, 2520.0) == pytest.approx(10.0)
    assert tune.trials_per_hour(0, 600.0) == 0.0


def test_tune_launches_a_trial_only_when_it_would_end_inside_the_budget(bench):
    tune = bench["tune"]
    # Trials ended at 70, 130 and 190 s: gaps of 60 s (the first end also holds the start-up, so it is no gap).
    durations = tune.trial_durations([70.0, 130.0, 190.0], [58.5, 58.9, 59.0])
    assert durations == [60.0, 60.0]
    # 190 + 60 = 250: inside a 250 s budget, not inside 249 s.
    assert tune.launch_next(190.0, durations, 250.0, fallback_s=58.0)
    assert not tune.launch_next(190.0, durations, 249.0, fallback_s=58.0)
    # One end so far: the trial's own reported 58.5 s stands in; none yet: the time limit per trial.
    assert tune.trial_durations([70.0], [58.5]) == [58.5]
    assert tune.launch_next(70.0, [58.5], 128.5, fallback_s=58.0)
    assert not tune.launch_next(70.0, [58.5], 128.4, fallback_s=58.0)
    assert tune.launch_next(0.0, [], 58.0, fallback_s=58.0) and not tune.launch_next(0.5, [], 58.0, fallback_s=58.0)
    # The lines `alexnet tune --quiet` ends a trial with, and the seconds they end with.
    complete = "trial 3: 71.25% best validation accuracy in 4 epochs (59.1s)"
    pruned = "trial 4: pruned after epoch 1 (40.10% validation accuracy; 15.2s)"
    assert tune.TRIAL_END.match(complete) and tune.TRIAL_END.match(pruned)
    assert not tune.TRIAL_END.match("trial 5: lr 0.2207, muon_lr 0.09659, weight_decay 0.0001168")
    assert float(tune.TRIAL_SECONDS.search(complete).group(1)) == 59.1
    assert float(tune.TRIAL_SECONDS.search(pruned).group(1)) == 15.2


def test_tune_mean_std_and_the_beats_the_spread_verdict(bench):
    tune = bench["tune"]
    # Preset 0.70, 0.72, 0.74: mean 0.72, sample std sqrt((0.02^2 + 0 + 0.02^2) / 2) = 0.02.
    preset = tune.mean_std([0.70, 0.72, 0.74])
    assert preset["n"] == 3 and preset["mean"] == pytest.approx(0.72) and preset["std"] == pytest.approx(0.02)
    assert tune.mean_std([0.5]) == {"n": 1, "mean": 0.5, "std": 0.0} and tune.mean_std([]) == {"n": 0}
    # Tuned 0.75, 0.76, 0.77: mean 0.76, std 0.01; 0.04 ahead, more than the larger std (0.02): it beats.
    v = tune.verdict([0.75, 0.76, 0.77], [0.70, 0.72, 0.74])
    assert v["difference"] == pytest.approx(0.04) and v["spread"] == pytest.approx(0.02) and v["beats"] is True
    # Tuned 0.70, 0.74, 0.78: mean 0.74, std 0.04; 0.02 ahead is inside the spread (0.04): it does not.
    v = tune.verdict([0.70, 0.74, 0.78], [0.70, 0.72, 0.74])
    assert v["difference"] == pytest.approx(0.02) and v["spread"] == pytest.approx(0.04) and v["beats"] is False
    assert tune.verdict([], [0.7, 0.72]) == {"difference": None, "spread": None, "beats": None}


def test_tune_reads_the_best_trial_and_the_best_validated_epoch(bench):
    tune = bench["tune"]
    rows = [{"number": 0, "state": "COMPLETE", "best_val_acc": 0.70},
            {"number": 1, "state": "PRUNED", "best_val_acc": 0.90},  # pruned: not best.toml's trial
            {"number": 2, "state": "COMPLETE", "best_val_acc": 0.74},
            {"number": 3, "state": "COMPLETE", "best_val_acc": 0.74},  # a tie goes to the earlier trial
            {"number": 4, "state": "FAIL", "best_val_acc": None}]
    assert tune.best_finished(rows)["number"] == 2
    assert tune.best_finished([rows[1], rows[4]]) is None
    # history.json: an epoch that was not validated has null (or NaN) for val_acc.
    history = [{"epoch": 1, "val_acc": None}, {"epoch": 2, "val_acc": float("nan")}, {"epoch": 3, "val_acc": 0.61},
               {"epoch": 4, "val_acc": 0.66}, {"epoch": 5, "val_acc": 0.64}]
    assert tune.best_val_acc(history) == 0.66 and tune.best_val_acc(history[:2]) is None
    assert tune.machine_tag({"cpu_isa": "AVX512"}, bf16=True) == "avx512bf16"
    assert tune.machine_tag({"cpu_isa": "AVX2"}, bf16=False) == "avx2"
    assert tune.machine_tag({"cpu_isa": "AVX512", "gpu": "NVIDIA H100 80GB HBM3"}, bf16=False) == "nvidia-h100-80gb-hbm3"
