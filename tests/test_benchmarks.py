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
        yield {name: importlib.import_module(name) for name in ("matmul", "throughput", "time_to_accuracy")}
    finally:
        sys.path.remove(str(BENCH))
        for name in ("matmul", "throughput", "time_to_accuracy"):
            sys.modules.pop(name, None)


def test_matmul_rate_is_positive(bench):
    r = bench["matmul"].matmul_gflops(n=64, repeats=2)
    assert r["gflops"] > 0 and len(r["runs"]) == 2 and r["dtype"] == "fp32"


def test_throughput_case_runs_and_counts_flops(bench):
    tp = bench["throughput"]
    import torch

    case = tp.run_case("alexnet-cifar-16w@32", device=torch.device("cpu"), batch=2, runs=1, warmup=0, iters=1,
                       channels_last=True, amp="off")
    assert case["train_img_s"] > 0 and case["infer_img_s"] > 0 and case["peak_rss_mb"] > 0
    assert case["optimizer"] == "SGD" and case["amp"] == "fp32"
    tp.add_rates(case, ref_gflops=100.0, fp32_gflops=40.0)
    assert case["train_gflops"] == pytest.approx(3 * 2 * case["macs_per_image"] * case["train_img_s"] / 1e9)
    assert case["train_frac_of_matmul"] == pytest.approx(case["train_gflops"] / 100.0)
    assert case["train_frac_of_fp32_matmul"] == pytest.approx(case["train_gflops"] / 40.0)


def test_throughput_runs_under_the_autocast_it_records(bench):
    # --amp bf16 is what `--amp auto` picks on a CPU with bf16 instructions; the case says which it ran.
    import torch

    case = bench["throughput"].run_case("alexnet-cifar-16w@32", device=torch.device("cpu"), batch=2, runs=1,
                                        warmup=0, iters=1, channels_last=True, amp="bf16")
    assert case["amp"] == "bf16" and case["train_img_s"] > 0
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
    # to goes into the result files and onto the plots.
    import torch

    host = bench["throughput"].host_info(torch.device("cpu"))
    assert host["cpu_isa"] == torch.backends.cpu.get_cpu_capability() != ""
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
    assert "cifar10" in tta.format_table(summary, matmul, [60.0])
    png = tmp_path / "tta.png"
    tta.plot(runs, ["cifar10"], [60.0], png, "test")
    assert png.stat().st_size > 1000


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
    assert png.stat().st_size > 1000
    # The same seed twice is refused, and so is a file this script did not write.
    with pytest.raises(SystemExit, match="seed 0 is in both"):
        tta.main(["--merge", str(files[0]), str(files[0]), "--json", str(out), "--png", str(png)])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"benchmark": "throughput", "cases": []}))
    with pytest.raises(SystemExit):
        tta.main(["--merge", str(other), "--json", str(out), "--png", str(png)])
    assert f"--merge {other}: not a time_to_accuracy.py result file" in capsys.readouterr().err
