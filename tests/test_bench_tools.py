"""The benchmark scripts run end to end on a few points, so that they cannot rot (their numbers: BENCHMARKS.md)."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import small_cnn

import tf_ecqx

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def run_tool(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(TOOLS / script), *args], capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_bench_pareto_quick_path_writes_results_for_ours_and_tfmot(tmp_path):
    out = run_tool(
        "bench_pareto.py",
        *("--quick", "--models", "demo_cnn", "--lambdas", "0.2", "--steps", "20", "--test-samples", "300"),
        *("--out", str(tmp_path)),
    )
    results = json.loads((tmp_path / "pareto_demo_cnn.json").read_text())
    methods = {p["method"] for p in results["points"]}
    assert methods == {"tfmot PTQ int8", "tfmot QAT int8", "ECQ", "ECQx"}, out
    for point in results["points"]:
        assert 0.5 < point["accuracy"] <= 1.0 and point["entropy_bound"] > 0
        if point["method"] in ("ECQ", "ECQx"):
            assert point["bits"] == 4 and point["bitstream"] < min(point["sparse_tflite_gz"], point["micro"])
    assert (tmp_path / "pareto_demo_cnn.csv").read_text().count("\n") == len(results["points"]) + 1
    assert (tmp_path / "pareto_demo_cnn.png").read_bytes()[:4] == b"\x89PNG"
    summary = run_tool(
        "pareto_summary.py", str(tmp_path), "--loss-pp", "50", "--table", "--plot", str(tmp_path / "merged")
    )
    assert "## demo_cnn" in summary and "- 4 bit: min" in summary and "x smaller than the float32 .tflite" in summary
    assert summary.count("| demo_cnn | ") == len(results["points"])
    assert (tmp_path / "merged" / "pareto_demo_cnn.png").read_bytes()[:4] == b"\x89PNG"


def test_pareto_front_is_log_linear_between_pareto_points_and_flat_beyond(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))  # as when it runs as a script: it imports bench_pareto
    spec = importlib.util.spec_from_file_location("pareto_summary", TOOLS / "pareto_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    points = [
        {"bitstream": 1000, "accuracy": 0.80},
        {"bitstream": 4000, "accuracy": 0.70},  # dominated by the smaller, more accurate point
        {"bitstream": 10000, "accuracy": 0.90},
    ]
    assert summary.front(points, 999) is None
    assert summary.front(points, 1000) == 0.80
    assert abs(summary.front(points, 3162) - 0.85) < 1e-4  # half way in log size
    assert summary.front(points, 50000) == 0.90


def test_bench_overhead_prints_ratios_for_every_variant():
    out = run_tool("bench_overhead.py", "--models", "mlp", "--steps", "2", "--repeats", "1")
    for label in ("tfmot int8 QAT", "ECQ 4-bit", "ECQx 4-bit, relevance every step", "every 10 steps"):
        assert label in out and "ratio to float min" in out


def test_bench_lrp_agrees_with_innvestigate():
    out = run_tool("bench_lrp.py", "--models", "demo_cnn", "--rules", "lrp.epsilon", "--repeats", "1")
    row = next(line for line in out.splitlines() if line.startswith("| demo_cnn"))
    assert float(row.split("|")[6]) <= 1e-5, row


def test_ecqx_shift_reports_every_kernel_within_the_sparsity_interval():
    out = run_tool("ecqx_shift.py", "--model", "demo_cnn", "--steps", "20")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ") and "%" in line]
    assert [row[1].strip() for row in rows] == ["conv1", "conv2", "fc1", "logits"], out
    for row in rows:
        ecq, ecqx = float(row[3].strip(" %")), float(row[4].strip(" %"))
        assert ecq - 10.0 - 0.1 <= ecqx <= ecq + 0.1, row  # [s_ECQ - p, s_ECQ] with p = 0.1, printed to 0.1 %


def test_export_drift_prints_ours_beside_tfmot():
    out = run_tool("export_drift.py", "--model", "MobileNet", "--images", "64")
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith(("tfmot QAT |", "tf_ecqx ECQ 4 bit |"))]
    assert len(rows) == 2, out
    for _, accuracy, error, sensitivity, agreement in rows:
        assert 0 <= float(accuracy) <= 1 and float(error) >= 0 and float(sensitivity) >= 0 and agreement.endswith("%")


def test_bench_levers_prints_a_row_per_lever_and_length_and_a_summary_it_can_redo_from_its_output(tmp_path):
    out = run_tool("bench_levers.py", "--steps", "5", "10", "--baseline", "3-epochs", "--lambdas", "0.1")
    lines = out.splitlines()
    levers = ["ECQ", "ECQ + lambda ramp", "ECQ + distillation", "ECQx q=0 (reference)", "ECQx q=0.05"]
    levers += ["ECQ + rate allocation", "ECQ + cosine lr", "ECQ + cosine + rates", "ECQx + cosine + rates"]
    levers += ["ECQ + recipe + distill"]
    runs = [f"{lever}, {steps} steps" for steps in (5, 10) for lever in levers]
    rows = lines[3:23]
    assert [line[:34].strip() for line in rows] == runs, out
    for *_, lambda_, seed, accuracy, sparsity, bitstream, whole, _seconds in (line.split() for line in rows):
        assert lambda_ == "0.100" and seed == "0" and 0.1 < float(accuracy) <= 1, out
        assert 0 < float(sparsity.rstrip("%")) < 100 and 0 < int(bitstream) < int(whole), out
    summary = lines[lines.index("") + 1 :]
    assert "vs ECQ, 5 steps front" in summary[0] and [line[:34].strip() for line in summary[1:]] == runs, out
    (tmp_path / "out.txt").write_text(out)
    assert run_tool("bench_levers.py", "--summarize", str(tmp_path / "out.txt")).splitlines() == summary


def test_bench_levers_compares_fronts_at_matched_bytes_and_finds_the_smallest_file_within_half_a_point(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    spec = importlib.util.spec_from_file_location("bench_levers", TOOLS / "bench_levers.py")
    levers = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_levers", levers)  # its dataclass looks its module up there
    spec.loader.exec_module(levers)

    def point(name, seed, accuracy, size):
        return levers.Point(name, 0.1, seed, accuracy, 0.5, size - 100, size, 1.0)

    points = [point("ECQ, 938 steps", seed, a, b) for seed in (0, 1) for a, b in ((0.90, 10_000), (0.88, 1_000))]
    points += [point("other", 0, 0.90, 1_000), point("other", 1, 0.89, 100)]  # seed 1: outside ECQ's front, no gap
    assert levers.accuracy_at(points[:2], 10**3.5) == 0.89  # halfway in log bytes
    assert levers.accuracy_at(points[:2], 100) is None
    lines = levers.summary(points, float_accuracy=0.902, seeds=[0, 1])
    ecq, other = lines[1].split(), lines[2].split()  # compared with the first run, whatever its name
    assert ecq[3:] == ["10,000", "[10,000,", "10,000]", "none"]  # 0.90 is within 0.5 pp of 0.902, 0.88 is not
    assert other[1:] == ["1,000", "[1,000,", "1,000]", "+2.00", "[+2.00,", "+2.00]"]  # 0.90 vs ECQ's 0.88 at 1 kB


def test_bench_scale_prints_a_row_of_numbers_and_the_verdicts():
    out = run_tool("bench_scale.py", "--models", "mlp", "--steps", "2", "--repeats", "1", "--export", "mobile")
    row = next(line for line in out.splitlines() if line.startswith("| mlp |")).split(" | ")
    assert int(row[1].replace(",", "")) == 535_818, row  # 784-512-256-10 weights and biases
    quantize, tfmot_quantize = float(row[2].split()[0]), float(row[3].split()[0])
    ratio = float(row[2].split("(")[1].rstrip("×)"))  # of the unrounded seconds, which the cells round to 0.01
    low, high = (quantize - 0.005) / (tfmot_quantize + 0.005), (quantize + 0.005) / (tfmot_quantize - 0.005)
    assert quantize > 0 and tfmot_quantize > 0 and low - 0.005 <= ratio <= high + 0.005, row
    assert float(row[4].split()[0]) > 0 and all(row[i].endswith("×)") for i in (5, 6, 7)), row
    assert float(row[8].split()[0]) > 0 and float(row[9].strip(" |").replace(",", "")) > 100, row  # export s, RSS MB
    assert "- quantize_model ≤ 1.5× tfmot's: mlp " in out and "- ECQ step ≤ 1.3× float: mlp " in out


def test_bench_scale_profile_finds_the_assignment_in_the_train_step(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))  # as when it runs as a script: it imports bench_overhead
    spec = importlib.util.spec_from_file_location("bench_scale", TOOLS / "bench_scale.py")
    bench_scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_scale)
    import numpy as np

    import tf_ecqx
    from tf_ecqx.models import compile_for_classification, mlp

    x, y = np.random.default_rng(0).uniform(size=(8, 28, 28, 1)).astype(np.float32), np.arange(8)
    timed = bench_scale.Timed(compile_for_classification(tf_ecqx.quantize_model(mlp(), bits=4)))
    bench_scale.step_seconds({"ECQ": timed}, x, y, 1, 1)
    wall, totals = bench_scale.op_milliseconds(timed, x, y, 2)
    assert wall > 0 and totals.get(("train step, assignment", "XLA"), 0) > 0, totals  # the compiled assignment
    assert {part for part, _ in totals} <= {"train step", "train step, assignment", "other"}, totals


def test_bench_assignment_prints_op_by_op_and_xla_times_per_method():
    out = run_tool("bench_assignment.py", "--bits", "4", "--sizes", "20000", "--calls", "2")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ECQ")]
    assert [[cell.strip() for cell in r[:3]] for r in rows] == [["ECQ", "4", "20,000"], ["ECQx", "4", "20,000"]]
    for row in rows:
        op_by_op, xla, ratio = (float(cell.split()[0].rstrip("×")) for cell in row[3:6])
        assert op_by_op > 0 and xla > 0 and abs(ratio - op_by_op / xla) <= 0.05 + 0.01 * ratio, row
        assert int(row[6]) <= 200, row  # rounding-boundary weights only (1 % of 20,000 at most)


def test_bench_coder_prints_each_kernel_against_its_entropy_and_nncodec_where_installed(tmp_path):
    qmodel = tf_ecqx.quantize_model(small_cnn(), bits=4, lambda_=0.2)
    tf_ecqx.export.save(qmodel, tmp_path / "kernels.ecqx")
    out = run_tool("bench_coder.py", str(tmp_path / "kernels.ecqx"))
    names = [k.name for k in tf_ecqx.quantization.kernels.quantized_kernels(qmodel)]
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in names}
    assert sorted(rows) == sorted(names), out
    whole = next(line for line in out.splitlines() if line.startswith("whole file"))
    assert int(whole.split()[-3]) == (tmp_path / "kernels.ecqx").stat().st_size, out
    if importlib.util.find_spec("nncodec") is None:
        assert "NNCodec line skipped: nncodec is not importable" in out, out
    else:  # checked bit-exact inside the tool
        nncodec = re.search(r"NNCodec whole bitstream: (\d+) B .* v2 / NNCodec = ([\d.]+)", out)
        assert nncodec and int(nncodec[1]) > 0 and float(nncodec[2]) > 0, out
