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
        yield {name: importlib.import_module(name) for name in ("matmul", "throughput", "time_to_accuracy", "serve", "tune", "peer_keras", "profile_train")}
    finally:
        sys.path.remove(str(BENCH))
        for name in ("matmul", "throughput", "time_to_accuracy", "serve", "tune", "peer_keras", "profile_train"):
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
    assert bench["throughput"].machine_tag({"cpu_isa": "AVX512"}, bf16=True) == "avx512bf16"
    assert bench["throughput"].machine_tag({"cpu_isa": "AVX2"}, bf16=False) == "avx2"
    assert bench["throughput"].machine_tag({"cpu_isa": "AVX512", "gpu": "NVIDIA H100 80GB HBM3"}, bf16=False) == "nvidia-h100-80gb-hbm3"


def test_peer_keras_times_the_steps_after_the_warm_up_and_projects_the_notebooks_ten_epochs(bench):
    pk = bench["peer_keras"]
    # Steps ending at 5 s (tracing), then every 2 s: after a warm-up of 1, 3 steps of 32 images in 6 s.
    rate = pk.timed_rate([5.0, 7.0, 9.0, 11.0], warmup=1, batch_size=32)
    assert rate["steps"] == 3 and rate["seconds"] == 6.0 and rate["images_per_s"] == 16.0
    assert rate["step_ms_median"] == 2000.0
    with pytest.raises(ValueError):
        pk.timed_rate([5.0], warmup=1, batch_size=32)
    # 10 epochs of 45,000 images at 18.75 images/s: 24,000 s (6 h 40 min).
    assert pk.projected_seconds(18.75) == 24_000.0
    run = {"curve": [{"epoch": 7, "seconds": 41.5, "val_acc": 0.7733}]}
    assert pk.time_to_notebook(run) is None  # 77.33% is below 77.34%
    run["curve"].append({"epoch": 8, "seconds": 44.0, "val_acc": 0.7911})
    assert pk.time_to_notebook(run) == 44.0 and pk.speedup(24_000.0, 44.0) == pytest.approx(545.45, abs=0.01)
    assert pk.speedup(24_000.0, None) is None
    # Of the time limits whose every seed reached 77.34%, the shortest mean time: 30 s had a seed short of it.
    runs = [{"time_limit": 40.0, "curve": [{"seconds": s, "val_acc": 0.79}]} for s in (42.0, 44.0)]
    runs += [{"time_limit": 30.0, "curve": [{"seconds": 32.0, "val_acc": 0.78}]},
             {"time_limit": 30.0, "curve": [{"seconds": 33.0, "val_acc": 0.77}]}]
    assert pk.fastest_reaching(runs) == {"time_limit": 40.0, "mean_s": 43.0, "runs": 2}
    runs[3]["curve"][0]["val_acc"] = 0.7734
    assert pk.fastest_reaching(runs)["time_limit"] == 30.0
    assert pk.fastest_reaching(runs[:1] + [{"time_limit": 40.0, "error": "exit 1"}]) is None


def test_peer_keras_reads_labelled_jpegs_from_the_archive(bench, tmp_path):
    import io
    import tarfile

    pk = bench["peer_keras"]
    archive = tmp_path / "c.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in (("train/cat/1.jpg", b"c1"), ("train/dog/2.jpg", b"d2"), ("train/cat/3.jpg", b"c3"),
                              ("test/cat/9.jpg", b"no"), ("README", b"no")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    data, labels = pk.read_cifar_jpegs(archive, 10, seed=0)
    assert sorted(zip(data, labels)) == [(b"c1", 0), (b"c3", 0), (b"d2", 1)]
    assert len(pk.read_cifar_jpegs(archive, 2, seed=0)[0]) == 2


def test_profile_splits_a_run_into_phases_that_add_up_to_its_wall_clock(bench):
    pt = bench["profile_train"]
    # Imports done at 2 s, data by 6 s; epoch 1 from 6 to 10 s with steps ending at 7, 8 and 9 s (3 s of
    # steps, 1 s of validation after them); epoch 2 from 10.5 to 12 s, one step ending at 11 s (0.5 s of
    # steps, 1 s after); 0.5 s between the epochs and 0.5 s after the last; the process gone at 13 s.
    stamps = {"imported": 2.0, "train_begin": 6.0, "epoch_begin": [6.0, 10.5], "epoch_end": [10.0, 12.0],
              "train_end": 12.5}
    rows = {r["phase"].split(":")[0].split(" (")[0]: r["seconds"] for r in pt.phases(stamps, [[7.0, 8.0, 9.0], [11.0]], 13.0)}
    assert rows == {"start-up": 2.0, "data and model set-up": 4.0, "training steps": 3.5,
                    "in the epochs between steps": 2.0, "between epochs and after the last": 1.0, "exit": 0.5}
    assert sum(rows.values()) == 13.0


def test_profile_layer_table_rates_each_convolution_from_its_shapes(bench):
    pt = bench["profile_train"]
    # Two steps; conv A: 3->16 channels, 3x3, 32x32 input and output, batch 8: 2*8*16*32*32*3*3*3 = 7,077,888
    # FLOPs forward. Conv B: 16->32, 3x3, 16x16 input, 16x16 output: 2*8*32*16*16*16*3*3 = 18,874,368.
    rows = [
        {"name": "aten::convolution", "shapes": [[8, 3, 32, 32], [16, 3, 3, 3], [16]], "total_us": 2000.0, "self_us": 0},
        {"name": "aten::convolution_backward", "shapes": [[8, 16, 32, 32], [8, 3, 32, 32], [16, 3, 3, 3]],
         "total_us": 2000.0, "self_us": 0},
        {"name": "aten::convolution", "shapes": [[8, 16, 16, 16], [32, 16, 3, 3], [32]], "total_us": 4000.0, "self_us": 0},
        {"name": "aten::convolution_backward", "shapes": [[8, 32, 16, 16], [8, 16, 16, 16], [32, 16, 3, 3]],
         "total_us": 8000.0, "self_us": 0},
        {"name": "aten::native_batch_norm", "shapes": [], "total_us": 900.0, "self_us": 600.0},
        {"name": "Optimizer.step#SGD.step", "shapes": [], "total_us": 1000.0, "self_us": 10.0},
    ]
    table = pt.layer_table({"steps": 2, "window": {"seconds": 0.02}, "rows": rows}, gflops_fp32=10.0, gflops_bf16=None)
    by = {t["part"].split(" (")[0]: t for t in table}
    # conv1 forward: 1 ms a step for 7.08 MFLOPs = 7.08 GFLOP/s; its backward has no input gradient, so the
    # same work in 1 ms. conv2: 18.87 MFLOPs in 2 ms = 9.44; backward twice the work in 4 ms = 9.44.
    assert by["conv1 forward"]["gflops"] == pytest.approx(7.077888)
    assert by["conv1 backward"]["gflops"] == pytest.approx(7.077888)
    assert by["conv2 forward"]["gflops"] == pytest.approx(9.437184) and by["conv2 forward"]["of_fp32"] == pytest.approx(0.9437184)
    assert by["conv2 backward"]["ms"] == 4.0 and by["conv2 backward"]["gflops"] == pytest.approx(9.437184)
    assert by["batch norm"]["ms"] == 0.3 and by["optimizer step"]["ms"] == 0.5
    # 10 ms a step in all: 1 + 1 + 2 + 4 + 0.3 + 0.5 counted, 1.2 ms left over.
    assert by["the rest"]["ms"] == pytest.approx(1.2) and sum(t["share"] for t in table) == pytest.approx(1.0)
