"""The benchmark report behind ``python -m convkit.bench``."""

import json

import numpy as np
import pytest

from convkit import bench, functional

# Small shapes keep each run to a second or two; one thread so that the run
# checks the report, not the kernels' thread safety (tested elsewhere).
SMALL = ["--quick", "--threads", "1", "--no-progress"]
SMALL_CONV = SMALL + ["--ops", "conv2d,conv2d_backward", "--shapes", "depthwise-3x3"]


def run_main(capsys, argv):
    status = bench.main(argv)
    out = capsys.readouterr().out
    return status, out


def test_quick_run_writes_table_and_json(capsys, tmp_path):
    path = tmp_path / "bench.json"
    argv = SMALL + ["--ops", "conv2d,conv2d_backward,max_pool2d_backward,avg_pool2d",
                    "--shapes", "depthwise-3x3,pool-2x2,global-avg-7x7", "--json", str(path)]
    status, out = run_main(capsys, argv)
    assert status == 0, out
    report = json.loads(path.read_text())
    assert set(report) == {"machine", "config", "gemm", "results", "failures"}
    assert {"cpu", "cores", "openmp", "blas", "numpy", "torch", "date"} <= set(report["machine"])
    assert report["config"]["quick"] is True and report["config"]["threads"] == [1]
    assert report["gemm"][0]["gflops"] > 0
    expected_rows = {("conv2d", m, "depthwise-3x3") for m in bench.CONV_METHODS}
    expected_rows |= {("conv2d_backward", m, "depthwise-3x3") for m in bench.CONV_METHODS}
    expected_rows |= {("max_pool2d_backward", None, "pool-2x2"),
                      ("avg_pool2d", None, "pool-2x2"), ("avg_pool2d", None, "global-avg-7x7")}
    rows = report["results"]
    assert {(r["op"], r["method"], r["shape"]) for r in rows} == expected_rows
    assert len(rows) == len(expected_rows)
    for row in rows:
        assert row["time_s"] > 0 and row["repeats"] >= bench.QUICK.min_repeats
        assert row["rate"] > 0
        assert row["rate_unit"] == ("GFLOP/s" if row["op"].startswith("conv") else "GB/s")
        assert (row["gemm_fraction"] is None) == (not row["op"].startswith("conv"))
        if row["op"].startswith("conv"):
            assert row["copy_gbs"] is None and row["copy_fraction"] is None
        else:  # pooling is held to NumPy copying the same input, timed in the same run
            assert row["copy_gbs"] > 0
            assert row["copy_fraction"] == pytest.approx(row["rate"] / row["copy_gbs"])
        assert row["ok"] and 0 <= row["max_rel_err"] <= bench.TOLERANCE[np.dtype("float32")]
        if row["speedup_reference"] is not None:
            assert row["speedup_reference"] == pytest.approx(
                row["reference_time_s"] / row["time_s"])
        if report["machine"]["torch"] is not None:
            assert row["torch_time_s"] > 0
            # The torch call computes the same thing as the reference.
            assert row["torch_max_rel_err"] <= bench.TOLERANCE[np.dtype("float32")]
    assert report["failures"] == 0

    lines = out.splitlines()
    assert lines[0].startswith("CPU: ")
    assert any(line.startswith("sgemm (1024x1024x1024") for line in lines)
    header = next(i for i, line in enumerate(lines) if line.startswith("op "))
    table = lines[header + 1: header + 1 + len(rows)]
    assert all(line.split()[-1] == "ok" for line in table)
    assert "all results within tolerance" in out


def test_markdown_table_is_well_formed(capsys):
    status, out = run_main(capsys, SMALL_CONV + ["--ops", "conv2d", "--markdown"])
    assert status == 0, out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(bench.CONV_METHODS)
    widths = {line.count("|") for line in table}
    assert len(widths) == 1
    assert table[0].startswith("| op | method | shape | time ms |")
    assert all(line.rstrip().endswith("| ok |") for line in table[2:])
    assert out.startswith("- CPU: ")


def test_several_thread_counts_add_rows_and_scaling(capsys, tmp_path):
    path = tmp_path / "bench.json"
    argv = ["--quick", "--no-progress", "--threads", "1,2", "--ops", "avg_pool2d",
            "--shapes", "global-avg-7x7", "--json", str(path)]
    status, out = run_main(capsys, argv)
    report = json.loads(path.read_text())
    assert [row["threads"] for row in report["results"]] == [1, 2]
    assert [g["threads"] for g in report["gemm"]] == [1, 2]
    assert "scaling" in out and "threads" in out
    assert [row["scaling"] for row in report["results"]][0] == 1.0
    assert report["results"][0]["scaling_best"] == 1.0
    assert report["results"][1]["scaling"] > 0 and report["results"][1]["scaling_best"] > 0
    assert status == (1 if report["failures"] else 0)


def test_measure_scaling_pairs_thread_counts():
    """A call that takes 1/n of the time on n threads scales by about n."""
    import time

    import convkit
    from convkit.bench import measure_scaling

    calls = []

    def work():
        n = convkit.get_num_threads()
        calls.append(n)
        time.sleep(0.004 / n)

    scaling = measure_scaling(work, [1, 2], budget_s=0.0, min_pairs=5)
    assert scaling[1] == (1.0, 1.0)
    assert 1.5 < scaling[2][0] < 2.5 and 1.5 < scaling[2][1] < 2.5
    # Rounds that alternate the order, an untimed call before each timed one.
    assert calls == [1, 1, 2, 2, 2, 2, 1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 1, 1, 2, 2]


def test_float64_uses_dgemm_and_its_tolerance(capsys, tmp_path):
    path = tmp_path / "bench.json"
    status, out = run_main(capsys, SMALL + ["--dtype", "float64", "--ops", "avg_pool2d",
                                            "--shapes", "pool-2x2", "--json", str(path)])
    assert status == 0, out
    assert "dgemm (1024" in out
    assert json.loads(path.read_text())["config"]["tolerance"] == bench.TOLERANCE[
        np.dtype("float64")]


def test_wrong_result_is_flagged_and_fails(capsys, monkeypatch, tmp_path):
    real_conv2d = functional.conv2d

    def off_by_a_little(*args, **kwargs):
        y = real_conv2d(*args, **kwargs)
        y.flat[7] += 1e-3 * np.abs(y).max()
        return y

    monkeypatch.setattr(functional, "conv2d", off_by_a_little)
    path = tmp_path / "bench.json"
    status, out = run_main(capsys, SMALL_CONV + ["--json", str(path)])
    assert status == 1
    report = json.loads(path.read_text())
    flagged = {(r["op"], r["method"]) for r in report["results"] if not r["ok"]}
    assert flagged == {("conv2d", m) for m in bench.CONV_METHODS}
    assert report["failures"] == 3
    assert out.count("FAIL") == 4  # three rows and the summary line
    assert "FAILED: 3 result(s) beyond tolerance" in out


def test_nan_in_a_pooling_result_is_flagged(capsys, monkeypatch):
    def nan_pool(x, *args, **kwargs):
        return np.full((x.shape[0], x.shape[1], 1, 1), np.nan, dtype=x.dtype)

    monkeypatch.setattr(functional, "avg_pool2d", nan_pool)
    status, out = run_main(capsys, SMALL + ["--ops", "avg_pool2d", "--shapes", "global-avg-7x7"])
    assert status == 1
    assert "inf" in out and "FAIL" in out


def test_runs_without_torch(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "_import_torch", lambda: None)
    path = tmp_path / "bench.json"
    status, out = run_main(capsys, SMALL + ["--ops", "max_pool2d", "--shapes", "pool-2x2",
                                            "--json", str(path)])
    assert status == 0, out
    report = json.loads(path.read_text())
    assert report["machine"]["torch"] is None
    assert all(r["torch_time_s"] is None and r["speedup_torch"] is None
               for r in report["results"])
    assert "torch not installed" in out


def test_plain_progress_without_tqdm(capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tqdm", None)
    status = bench.main(SMALL[:-1] + ["--ops", "avg_pool2d", "--shapes", "pool-2x2"])
    assert status == 0
    assert "[1/1] avg_pool2d pool-2x2" in capsys.readouterr().err


def test_plot_writes_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "speedups.png"
    status = bench.main(SMALL + ["--ops", "avg_pool2d", "--shapes", "pool-2x2",
                                 "--plot", str(path)])
    assert status == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exc:
        bench.main(SMALL + ["--plot", "out.png"])
    assert exc.value.code == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "positive ints"),
    (["--threads", "two"], "positive ints"),
    (["--threads", ""], "positive ints"),
    (["--dtype", "float16"], "invalid choice"),
    (["--ops", "conv3d"], "unknown op conv3d"),
    (["--ops", ","], "unknown op"),
    (["--shapes", "resnet-3x3,imagenet"], "unknown shape imagenet"),
    (["--ops", "max_pool2d", "--shapes", "resnet-1x1"], "none of the shapes"),
    (["--ops", "max_pool2d", "--shapes", "global-avg-7x7"], "none of the shapes"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_option_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_work_counts_follow_the_formulas():
    depthwise = bench.Case("conv2d", "depthwise-3x3")
    assert depthwise.work == 2 * 8 * 128 * 28 * 28 * (128 // 128) * 3 * 3
    assert bench.Case("conv2d_backward", "depthwise-3x3").work == 2 * depthwise.work
    strided = bench.Case("conv2d", "resnet-3x3-s2")
    assert strided.work == 2 * 8 * 128 * 28 * 28 * 64 * 3 * 3
    pool = bench.Case("avg_pool2d", "pool-3x3-s2", dtype=np.float64)
    assert pool.work == 8 * 64 * (112 * 112 + 56 * 56) * 8
    max_backward = bench.Case("max_pool2d_backward", "pool-2x2")
    out_elements = 64 * 32 * 12 * 12
    assert max_backward.work == (64 * 32 * 24 * 24 + out_elements) * 4 + \
        out_elements * max_backward.indices.itemsize


def test_case_rejects_unknown_op_and_shape():
    with pytest.raises(ValueError, match="unknown op"):
        bench.Case("conv1d", "resnet-1x1")
    with pytest.raises(ValueError, match="does not run on shape"):
        bench.Case("max_pool2d", "global-avg-7x7")


def test_max_errors():
    expected = (np.array([1.0, -4.0], np.float32), np.array([2.0], np.float32))
    assert bench.max_errors(expected, expected) == (0.0, 0.0)
    actual = (np.array([1.5, -4.0], np.float32), np.array([2.0], np.float32))
    assert bench.max_errors(actual, expected) == (0.5, 0.125)
    assert bench.max_errors((np.zeros(3, np.float32), expected[1]), expected) == (
        float("inf"), float("inf"))
    assert bench.max_errors((np.array([np.nan, -4.0]), expected[1]), expected)[1] == float("inf")


def test_measure_repeats_until_budget_and_minimum():
    calls = []
    timing, result = bench.measure(lambda: calls.append(1) or len(calls), budget_s=0.0,
                                   min_repeats=3)
    assert result == 1 and timing.repeats == 3 and len(calls) == 4 and timing.median_s >= 0
    calls.clear()
    timing, result = bench.measure(lambda: calls.append(1), budget_s=0.0, min_repeats=1,
                                   warmup=False)
    assert result is None and timing.repeats == 1 and len(calls) == 1


def test_measure_settles_before_timing():
    """The untimed warm-up runs for settle_s seconds; the timed calls come after it."""
    import time

    stamps = []
    timing, _ = bench.measure(lambda: stamps.append(time.perf_counter()), budget_s=0.0,
                              min_repeats=2, settle_s=0.05)
    assert timing.repeats == 2
    # The last warm-up call may start just inside the window; the first timed
    # call (stamps[-2]) starts after it.
    assert stamps[-2] - stamps[0] >= 0.05 and len(stamps) >= 4


def test_measure_interleaved_takes_turns():
    """Each round starts one call further along; a call's median is its rounds' median."""
    import time

    log = []

    def call(name, seconds):
        def fn():
            log.append(name)
            # b's second round (its 3rd call, after the untimed one) is disturbed.
            disturbed = name == "b" and log.count("b") == 3
            time.sleep(0.05 if disturbed else seconds)
            return name
        return fn

    fns = [call("a", 0.001), call("b", 0.001), call("c", 0.003)]
    timings = bench.measure_interleaved(fns, budget_s=0.0, min_repeats=3, rounds=3)
    assert [result for _, result in timings] == ["a", "b", "c"]
    assert [t.repeats for t, _ in timings] == [3, 3, 3]
    # Untimed first calls, then rounds starting at a, b, c in turn.
    assert log == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    # b's disturbed round does not move its median.
    assert timings[1][0].median_s < 0.01
    assert timings[0][0].median_s < timings[2][0].median_s


def test_ab_tool_spelled_shapes():
    """tools/ab.py takes a benchmark shape's name or a spelled-out shape."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "tools" / "ab.py"
    spec = importlib.util.spec_from_file_location("ab_tool", path)
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    shapes = bench.CONV_SHAPES
    assert ab.shape_of(shapes, "mnist-conv2") is shapes["mnist-conv2"]
    assert ab.shape_of(shapes, "8x64x56x56-128x3x3-s2-p1") == shapes["resnet-3x3-s2"]
    assert ab.shape_of(shapes, "64x32x13x13-64x3x3") == bench.ConvShape(64, 32, 13, 13, 64, 3, 3)
    with pytest.raises(SystemExit, match="unknown shape"):
        ab.shape_of(shapes, "64x32x13-64x3x3")
