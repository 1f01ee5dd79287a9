"""The benchmark harness: statistics, stopping rule, table rendering (golden text), JSON schema,
the correctness gate against deliberately wrong implementations, the CLI and bench.compare."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlkern  # noqa: F401
from bench import compare, impls, layers, machine, report, runner, timing, workloads
from bench.progress import Progress
from bench.runner import Result
from bench.timing import Budget, Stats
from dlkern import registry
from dlkern.registry import Case

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = Budget(warmup_s=0.002, min_sample_s=2e-4, min_samples=3, max_samples=6,
               target_spread=0.5, budget_s=0.02)


# ---- statistics and the stopping rule ----------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 5, 10, 101])
def test_quantile_matches_numpy(n):
    xs = list(np.random.default_rng(n).random(n))
    for q in (0.0, 0.2, 0.5, 0.8, 1.0):
        assert timing.quantile(xs, q) == pytest.approx(float(np.quantile(xs, q)))


def test_stats_spread_and_noisy():
    s = timing.summarize([1.0, 1.0, 1.0, 1.0, 2.0], 7)
    assert (s.median, s.samples, s.calls_per_sample) == (1.0, 5, 7)
    assert s.p80 == pytest.approx(1.2) and s.spread == pytest.approx(0.2) and s.noisy
    assert not timing.summarize([1.0, 1.01, 1.02]).noisy
    with pytest.raises(ValueError):
        timing.quantile([], 0.5)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_stopping_rule_quiet_stops_at_min_samples():
    clock = FakeClock()
    calls = []

    def make(name, dt):
        def fn():
            calls.append(name)
            clock.t += dt
        return fn
    b = Budget(warmup_s=0.01, min_sample_s=0.004, min_samples=7, max_samples=100,
               target_spread=0.01, budget_s=100)
    st = timing.time_interleaved({"a": make("a", 1e-3), "b": make("b", 2e-3)}, budget=b,
                                 clock=clock)
    assert st["a"].samples == st["b"].samples == 7          # quiet: stops at min_samples
    assert st["a"].median == pytest.approx(1e-3) and st["b"].median == pytest.approx(2e-3)
    assert st["a"].calls_per_sample == 4 and st["b"].calls_per_sample == 2
    # interleaved, order flipped every round: after warm-up, a-block b-block b-block a-block ...,
    # each block one untimed call and then its timed calls
    timed = "".join(calls)[-(7 * 5 + 7 * 3):]
    assert timed[:16] == "aaaaabbb" + "bbbaaaaa" and timed[16:24] == "aaaaabbb"
    calls.clear()
    b.rewarm_calls = 0                       # bench.models: no untimed call per block
    timing.time_interleaved({"a": make("a", 1e-3), "b": make("b", 2e-3)}, budget=b, clock=clock)
    timed = "".join(calls)[-(7 * 4 + 7 * 2):]
    assert timed[:12] == "aaaabb" + "bbaaaa"


def test_stopping_rule_noisy_stops_at_budget():
    clock = FakeClock()
    n = [0]

    def noisy():
        n[0] += 1
        clock.t += 1e-3 if n[0] % 3 else 5e-3    # a third of the calls are 5x slower
    b = Budget(warmup_s=0.0, min_sample_s=0.0, min_samples=5, max_samples=1000,
               target_spread=0.01, budget_s=0.5)
    st = timing.time_interleaved({"x": noisy}, budget=b, clock=clock)
    assert 5 < st["x"].samples < 1000 and st["x"].noisy
    # the budget bounds the sampling time: samples x 2 calls (one untimed) x mean(2.33 ms) ~ 0.5 s
    assert st["x"].samples == pytest.approx(0.5 / (2 * 7e-3 / 3), rel=0.05)


@pytest.mark.parametrize("n", [1, 5, 6, 7, 15, 33, 100, 400])
def test_median_interval_is_the_exact_binomial_order_statistics(n):
    from math import comb
    xs = list(np.random.default_rng(n).random(n))
    med, lo, hi = timing.median_interval(xs)
    assert med == pytest.approx(float(np.median(xs)))
    if n < 6:                      # 2 / 2^n > 5%: no 95% interval exists
        assert lo is None and hi is None
        return
    s = sorted(xs)
    j = s.index(lo) + 1
    assert hi == s[n - j]
    cover = lambda j: 1 - 2 * sum(comb(n, i) for i in range(j)) / 2 ** n  # noqa: E731
    assert cover(j) >= 0.95 and (j + 1 > n // 2 or cover(j + 1) < 0.95)


def test_median_interval_covers_the_true_median_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(2000):
        xs = rng.lognormal(0.0, 0.3, 25)        # true median exp(0) = 1
        _, lo, hi = timing.median_interval(xs)
        hits += lo <= 1.0 <= hi
    assert 0.94 <= hits / 2000 <= 0.99          # exact binomial coverage of n=25 is 95.7%


def test_paired_ratio_cancels_drift_and_stops_on_its_interval():
    """Both sides slow down together (a drifting machine): each side's spread is huge, the
    paired ratio is exact, so the ratio rule stops at min_samples where the spread rule would
    run to the budget."""
    clock = FakeClock()
    speed = [1.0]

    def make(dt):
        def fn():
            clock.t += dt * speed[0]
            speed[0] *= 1.01                     # every call 1% slower than the last
        return fn
    b = Budget(warmup_s=0.0, min_sample_s=0.0, min_samples=9, max_samples=500,
               target_spread=0.01, target_ratio=0.02, budget_s=100)
    st = timing.time_interleaved({"a": make(2e-3), "b": make(1e-3)}, budget=b, clock=clock,
                                 baseline="b")
    r = st["a"].ratio
    assert st["b"].ratio is None and 9 <= st["a"].samples <= 12 and st["a"].noisy
    assert r.rounds == st["a"].samples and r.contains(2.0) \
        and r.median == pytest.approx(2.0, rel=0.03)
    assert not r.wide and r.half_width <= 0.02
    alone = timing.time_interleaved({"a": make(2e-3), "b": make(1e-3)}, budget=b, clock=clock)
    assert alone["a"].ratio is None and alone["a"].samples > 100   # spread rule: to the budget


def test_contexts_wrap_each_block_outside_the_timed_call():
    entered = []

    @contextlib.contextmanager
    def ctx():
        entered.append("in")
        yield
        entered.append("out")
    seen = []
    st = timing.time_interleaved({"a": lambda: seen.append(len(entered) % 2)},
                                 budget=QUICK, contexts={"a": ctx})
    assert all(x == 1 for x in seen)          # every call ran inside the context
    assert entered.count("in") >= st["a"].samples + 1


# ---- report rendering (golden text) ------------------------------------------------------

SOFTMAX = registry.get("softmax")


def _row(name, suites, shape=(4, 8), group="", sweep=None):
    return workloads.Row(SOFTMAX, Case(name, {"shape": shape, "dim": -1}, suites, group, sweep),
                         suites)


def _res(row, impl, label, pass_, median, status="ok", detail="", p20=None, p80=None):
    st = Stats(median, p20 or median, p80 or median, 10, 3) if status == "ok" else None
    f, b = runner.work(SOFTMAX, row.case.params, pass_)
    return Result(row, "cpu", impl, label, pass_, status, st, f, b, detail)


IMPLS2 = [("custom", "dlkern avx2"), ("torch", "PyTorch 2.13.0")]


def _sample_results():
    a, b = _row("Conv3x3/1", ("layers",)), _row("Dense", ("layers",), shape=(1, 1024))
    out = []
    for row, times in ((a, {"custom": (2e-4, 5e-4), "torch": (2.5e-4, 4e-4)}),
                       (b, {"custom": (1.5, 3.0), "torch": (2.0, 2.5)})):
        for impl, label in IMPLS2:
            fwd, bwd = times[impl]
            out += [_res(row, impl, label, "forward", fwd), _res(row, impl, label, "backward", bwd),
                    _res(row, impl, label, "total", fwd + bwd,
                         p20=(fwd + bwd) * (0.9 if impl == "torch" else 0.99),
                         p80=(fwd + bwd) * (1.1 if impl == "torch" else 1.01))]
    return out


def test_layers_table_golden():
    text = report.layers_table(_sample_results(), "cpu", "layers", IMPLS2,
                               ["forward", "backward", "total"])
    assert text == (
        "|Layer|Framework|Forward Pass|Backward Pass|Total Time|\n"
        "|:---:|:---:|:---:|:---:|:---:|\n"
        "|Conv3x3/1|dlkern avx2|__0.2 ms__|0.5 ms|0.7 ms|\n"
        "||PyTorch 2.13.0|0.25 ms|__0.4 ms__|__0.65 ms†__|\n"
        "|Dense|dlkern avx2|__1.5 s__|3 s|__4.5 s__|\n"
        "||PyTorch 2.13.0|2 s|__2.5 s__|__4.5 s†__|")


def test_layers_table_failed_and_skipped_cells():
    row = _row("r", ("layers",))
    res = [_res(row, "custom", "dlkern avx2", "forward", 0, status="failed", detail="bad"),
           _res(row, "torch", "PyTorch", "forward", 1e-3),
           _res(row, "torch-compile", "torch.compile", "forward", 0, status="skipped")]
    text = report.layers_table(res, "cpu", "layers",
                               IMPLS2 + [("torch-compile", "torch.compile")], ["forward"])
    assert text.splitlines()[2:] == ["|r|dlkern avx2|FAILED|", "||PyTorch 2.13.0|1 ms|",
                                     "||torch.compile|-|"]


def test_tensorgrad_tables_golden():
    rows = [_row(f"{n}x64", ("tensorgrad",), shape=(n, 64)) for n in (128, 512, 1024)]
    res = []
    for row, (t, c) in zip(rows, ((1e-5, 2e-5), (4e-5, 3e-5), (1e-4, 1.5e-4))):
        res += [_res(row, "custom", "dlkern avx2", "forward", c),
                _res(row, "torch", "PyTorch", "forward", t)]
    text = report.tensorgrad_tables(res, "cpu", "tensorgrad", IMPLS2, ["forward"])
    assert text == (
        "#### nn.Softmax\n"
        "##### Forward\n"
        "| inputs | torch cpu, s. | dlkern avx2, s. | dlkern avx2 is slower by |\n"
        "|---|---:|---:|---:|\n"
        "| 128x64 | 1e-05 | 2e-05 | 2 |\n"
        "| 512x64 | 4e-05 | 3e-05 | 0.75 |\n"
        "| 1024x64 | 0.0001 | 0.00015 | 1.5 |\n"
        "| overall | 4e-05 | 3e-05 | 1.5 |")


def test_dense_raw_lines_golden():
    rows = [_row(f"bias b{b}", ("linear-sweep",), shape=(b, 784), group="Dense 784 => 1024 with bias",
                 sweep=("Batch Size", b)) for b in (1, 4)]
    res = []
    for row, t in zip(rows, (1.25e-4, 2.5e-4)):
        res += [_res(row, "custom", "dlkern avx2", "forward", t),
                _res(row, "custom", "dlkern avx2", "total", 3 * t)]
    text = report.linear_sweep_raw_lines(res, "cpu", "linear-sweep", [("custom", "dlkern avx2")],
                                  ["forward", "total"])
    assert text == (
        "```text\n"
        "dlkern avx2 Dense 784 => 1024 with bias\n"
        "    Forward Pass CPU | Batch Size = 1: 0.000125s\n"
        "    Forward Pass + Backward Pass CPU | Batch Size = 1: 0.000375s\n"
        "    Forward Pass CPU | Batch Size = 4: 0.00025s\n"
        "    Forward Pass + Backward Pass CPU | Batch Size = 4: 0.00075s\n"
        "\n"
        "```")


def _meta(peaks=None):
    devices = {"cpu": {"device": "cpu", "name": "Test CPU", "threads": 2,
                       "peaks": peaks or {"peak_gflops": 100.0, "peak_gbps": 10.0,
                                          "fma_gflops_avx2": 100.0, "copy_gbps": 10.0}}}
    return report.make_meta(["--quick"], devices, {"torch_intraop": 2, "consistent": True},
                            Budget(), ["custom", "torch"], ["forward", "backward", "total"])


def test_records_roofline_and_ratio():
    recs = report.records(_sample_results(), _meta())
    r = next(x for x in recs if x["impl"] == "custom" and x["case"] == "Dense"
             and x["pass"] == "forward")
    flops, nbytes = SOFTMAX.flops({"shape": (1, 1024)})["forward"], 8 * 1024
    assert r["flops"] == flops and r["bytes"] == nbytes
    assert r["gflops"] == pytest.approx(flops / 1.5e9)
    assert r["pct_peak_flops"] == pytest.approx(100 * flops / 1.5e9 / 100.0)
    assert r["pct_peak_bw"] == pytest.approx(100 * nbytes / 1.5e9 / 10.0)
    assert r["ratio"] == pytest.approx(1.5 / 2.0)
    assert next(x for x in recs if x["impl"] == "torch")["ratio"] is None


def test_json_schema_roundtrip_and_rejects_broken_documents():
    doc = json.loads(json.dumps(report.to_json(_sample_results(), _meta())))
    assert report.validate(doc) == []
    assert {"date", "git_commit", "torch", "dlkern", "command", "threads", "devices"} <= set(doc["meta"])
    bad = json.loads(json.dumps(doc))
    del bad["results"][0]["median_s"]
    bad["results"][1]["status"] = "great"
    bad["results"][2]["samples"] = "ten"
    errs = report.validate(bad)
    assert any("missing 'median_s'" in e for e in errs)
    assert any("status" in e for e in errs) and any("samples" in e for e in errs)
    assert report.validate({"schema": "other"})
    csv_text = report.to_csv(_sample_results(), _meta())
    head, first = csv_text.splitlines()[:2]
    assert head.startswith("suites,op,case,params,dtype,device,device_id,host,rank,impl,label,pass,"
                           "status,median_s")
    assert "date" in head and "git_commit" in head and "command" in head
    assert "python -m bench.layers --quick" in first


def test_markdown_has_device_header_peaks_and_failures():
    res = _sample_results()
    row = _row("broken", ("layers",))
    res += [_res(row, "custom", "dlkern avx2", p, 0, status="failed",
                 detail="seed 1: forward: FAILED err 0.01 at [2, 3]") for p in ("forward", "total")]
    md = report.markdown(res, _meta(), ["forward", "backward", "total"])
    assert "## CPU USED --- Test CPU, 2 threads" in md
    assert "FMA 100 GFLOP/s with AVX2" in md and "copy bandwidth 10.0 GB/s" in md
    assert "### Suite `layers`" in md and "### Ratio dlkern avx2 / torch" in md
    assert md.count("**FAILED** softmax broken (float32) [dlkern avx2]: seed 1: forward: FAILED err 0.01 "
                    "at [2, 3]") == 1


# ---- the gate refuses wrong implementations ----------------------------------------------

def _factory(fn):
    return lambda spec, device, arg: impls.Impl("wrong", "wrong", fn)


def _off_by_1pct(input, dim):
    return F.softmax(input, dim) * 1.01


def _zeros(input, dim):
    return torch.zeros_like(input) + 0 * input


def _mutates(input, dim):
    out = F.softmax(input, dim)
    input.detach().mul_(0.5)
    return out


def _wrong_backward(input, dim):
    # exact forward value, gradient off by 1% of the upstream gradient
    return F.softmax(input, dim) + (input - input.detach()) * 0.01


def _raises(input, dim):
    raise RuntimeError("kernel exploded")


def _right_then_wrong():
    n = [0]

    def fn(input, dim):
        n[0] += 1
        out = F.softmax(input, dim)
        return out if n[0] <= 3 else out * 1.01   # right for the gate's 3 seeds, then wrong
    return fn


WRONG = {"off-by-1pct": (_off_by_1pct, "forward: FAILED"),
         "all-zeros": (_zeros, "mostly zeros"),
         "mutates-input": (_mutates, "the op wrote its input"),
         "wrong-backward": (_wrong_backward, "grad[input]: FAILED"),
         "raises": (_raises, "kernel exploded")}


@pytest.fixture
def wrong_impls():
    names = []
    for name, (fn, _) in WRONG.items():
        impls.register(f"test-{name}", _factory(fn))
        names.append(f"test-{name}")
    impls.register("test-right-then-wrong", lambda s, d, a: impls.Impl(
        "test-right-then-wrong", "later", _right_then_wrong()))
    yield
    for n in names + ["test-right-then-wrong"]:
        impls.unregister(n)


# long rows: where an all-zeros softmax sits within 1e-3 of the truth (KernelBench issue 165)
GATE_ROW = workloads.Row(SOFTMAX, Case("3x2000", {"shape": (3, 2000), "dim": -1}), ("user",))


@pytest.mark.parametrize("name", list(WRONG))
def test_gate_refuses_wrong_implementation(wrong_impls, name):
    cfg = runner.Config(impls=[f"test-{name}", "torch"], budget=QUICK)
    res = runner.run_row(GATE_ROW, "cpu", cfg)
    mine = [r for r in res if r.impl == f"test-{name}"]
    assert mine and all(r.status == "failed" and r.stats is None for r in mine)
    assert WRONG[name][1] in mine[0].detail
    assert "seed" in mine[0].detail
    # torch is still timed, and the failing implementation was never timed
    assert all(r.status == "ok" for r in res if r.impl == "torch")


def test_gate_reports_error_location(wrong_impls):
    res = runner.run_row(GATE_ROW, "cpu", runner.Config(impls=["test-off-by-1pct"], budget=QUICK))
    assert " at [" in res[0].detail and "max rel" in res[0].detail


def test_gate_catches_right_once_wrong_later(wrong_impls):
    cfg = runner.Config(impls=["test-right-then-wrong", "torch"], passes=["forward"], budget=QUICK)
    res = runner.run_row(GATE_ROW, "cpu", cfg)
    mine = next(r for r in res if r.impl == "test-right-then-wrong")
    assert mine.status == "failed" and mine.detail.startswith("after timing: ")


def test_gate_passes_the_real_kernel():
    cfg = runner.Config(impls=["custom", "custom:reference", "torch"], budget=QUICK,
                        passes=list(runner.PASSES))
    res = runner.run_row(GATE_ROW, "cpu", cfg)
    assert len(res) == 3 * 4 and all(r.status == "ok" for r in res), [r.detail for r in res]
    # every pass of every implementation timed, with positive medians
    assert all(r.stats.median > 0 for r in res)


def test_cli_exit_code_on_failure_and_keep_going(wrong_impls, tmp_path, capsys):
    shapes = tmp_path / "s.csv"
    shapes.write_text("op,name,shape,params\nsoftmax,a,3x2000,dim=-1\nsoftmax,b,5x7,dim=0\n")
    rc = layers.main(["--shapes", str(shapes), "--impl", "test-off-by-1pct,torch", "--quick",
                      "--no-peaks", "--pass", "forward"])
    out, err = capsys.readouterr()
    assert rc == 1 and "FAILED the correctness check" in err
    assert "stopped at the first FAILED row" in err and "|b|" not in out   # stopped after row a
    rc = layers.main(["--shapes", str(shapes), "--impl", "test-off-by-1pct,torch", "--quick",
                      "--no-peaks", "--pass", "forward", "--keep-going"])
    out, err = capsys.readouterr()
    assert rc == 1 and "|b|" in out and "**FAILED** softmax a" in out
    assert "**FAILED** softmax b" in out


# ---- CLI ---------------------------------------------------------------------------------

def test_cli_run_writes_every_format(tmp_path, capsys):
    shapes = tmp_path / "s.toml"
    shapes.write_text('[[row]]\nop = "softmax"\nname = "tiny"\nshape = [4, 9]\ndim = -1\n\n'
                      '[[row]]\nop = "softmax"\nshape = "6x5"\ndim = 0\nkind = "hard"\n')
    out_dir = tmp_path / "out"
    argv = ["--shapes", str(shapes), "--impl", "custom,custom:reference,torch", "--quick",
            "--pass", "forward,backward,total,inference", "--threads", "1", "--out", str(out_dir)]
    try:
        rc = layers.main(argv)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "## CPU USED ---" in out and f"|tiny|dlkern {dlkern.capabilities()['cpu_isa']}|" in out
    assert "|6x5 dim=0 kind=hard|" in out
    doc = json.loads((out_dir / "results.json").read_text())
    assert report.validate(doc) == []
    assert doc["meta"]["threads"]["torch_intraop"] == 1 and doc["meta"]["threads"]["consistent"]
    assert len(doc["results"]) == 2 * 3 * 4
    assert all(r["status"] == "ok" and r["samples"] >= 3 for r in doc["results"])
    assert doc["meta"]["devices"]["cpu"]["peaks"]["peak_gflops"] > 0
    assert (out_dir / "results.csv").read_text().count("\n") == 1 + 24
    assert (out_dir / "report.md").read_text().strip() == out.strip()


@pytest.mark.parametrize("argv, message", [
    (["--dtype", "float8"], "--dtype: expected some of float32, float16, bfloat16, float64"),
    (["--dtype", "float32,float32"], "--dtype: a dtype is listed twice"),
    (["--dtype", ""], "--dtype: expected some of"),
    (["--impl", "bogus,torch"], "unknown implementation 'bogus'"),
    (["--suite", "nosuch"], "unknown suite nosuch"),
    (["--ops", "nosuch"], "no op named 'nosuch'"),
    (["--pass", "sideways"], "--pass: expected some of forward"),
    (["--device", "tpu"], "--device: expected cpu and/or cuda"),
    (["--seeds", "1"], "--seeds must be >= 3"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--format", "xml"], "--format"),
    (["--plot"], "--plot writes PNG files: give --out DIR"),
    (["--shapes", "/nonexistent.csv"], "no such file"),
])
def test_cli_refuses_bad_arguments(argv, message, capsys):
    assert layers.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cli_cuda_without_gpu_is_one_line(capsys):
    assert layers.main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no CUDA GPU is visible" in err and len(err.splitlines()) == 1


def test_shape_files_validate_against_the_registry(tmp_path):
    bad = tmp_path / "b.csv"
    bad.write_text("op,name,shape,params\nsoftmax,x,4x4,dim=1;colour=red\n")
    with pytest.raises(ValueError, match=r"b.csv: line 2: dlkern.softmax: parameters unknown colour"):
        workloads.load_shapes(str(bad))
    bad.write_text("op,name,shape,params\nsoftmax,x,4x4,\n")
    with pytest.raises(ValueError, match="missing dim"):
        workloads.load_shapes(str(bad))
    bad.write_text("op,name,shape,params\nnosuch,x,4x4,dim=1\n")
    with pytest.raises(ValueError, match="no op named 'nosuch'"):
        workloads.load_shapes(str(bad))
    bad.write_text("op,name,shape,params\nsoftmax,x,4xq,dim=1\n")
    with pytest.raises(ValueError, match="shape must be like"):
        workloads.load_shapes(str(bad))
    toml = tmp_path / "b.toml"
    toml.write_text("[[row]]\nshape = [1]\n")
    with pytest.raises(ValueError, match="row 1: missing 'op'"):
        workloads.load_shapes(str(toml))
    assert workloads.parse_value("3x3") == (3, 3) and workloads.parse_value("true") is True
    assert workloads.parse_value("-1") == -1 and workloads.parse_value("1e-5") == 1e-5


def test_suites_come_from_the_registry():
    rows = workloads.select(["tensorgrad"])
    assert [r.case.name for r in rows if r.op == "softmax"] == [
        "128x64 dim=-1", "512x256 dim=-1", "1024x512 dim=-1"]
    both = workloads.select(["tensorgrad", "softmax"], ["softmax"])
    assert len({r.key for r in both}) == len(both)               # each case once
    assert next(r for r in both if r.case.name == "128x64 dim=-1").suites == ("tensorgrad", "softmax")
    assert "softmax" in workloads.known_suites() and "layers" in workloads.known_suites()


def test_torch_compile_impl_is_checked_and_timed(tmp_path):
    # batch_norm with weight and bias: its compiled backward donates buffers, and the Backward
    # pass re-runs backward over a retained graph (needs donated buffers off)
    row = workloads.Row(registry.get("batch_norm"), Case("4x3x5x5", {"shape": (4, 3, 5, 5)}),
                        ("user",))
    res = runner.run_row(row, "cpu", runner.Config(impls=["torch-compile", "torch"],
                                                   passes=["forward", "backward", "total"],
                                                   budget=QUICK))
    assert all(r.status == "ok" for r in res), [r.detail for r in res]
    assert {r.label for r in res} == {"torch.compile", f"PyTorch {torch.__version__.split('+')[0]}"}


def test_custom_avx512_refused_with_the_reason_where_the_cpu_lacks_it(monkeypatch):
    monkeypatch.setattr(impls, "cpu_isa_best", lambda: "avx2")  # a CPU without AVX-512
    with pytest.raises(impls.Unavailable, match=r"this CPU cannot run dlkern's avx512 path \(its "
                                                r"best is avx2; avx512 needs AVX-512 F, BW, DQ"):
        impls.resolve("custom:avx512", SOFTMAX, "cpu")
    res = runner.run_row(GATE_ROW, "cpu", runner.Config(impls=["custom:avx512", "torch"],
                                                        passes=["forward"], budget=QUICK))
    skipped = next(r for r in res if r.impl == "custom:avx512")
    assert skipped.status == "skipped" and "avx512 path" in skipped.detail


def test_custom_variant_unavailable_on_unknown_variant():
    with pytest.raises(impls.Unavailable, match="no kernel variant 'avx9'"):
        impls.resolve("custom:avx9", SOFTMAX, "cpu")
    res = runner.run_row(GATE_ROW, "cpu", runner.Config(impls=["custom:avx9", "torch"],
                                                        passes=["forward"], budget=QUICK))
    assert next(r for r in res if r.impl == "custom:avx9").status == "skipped"


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the [plot] extra)")
    from bench import plot
    paths = plot.plot(report.records(_sample_results(), _meta()), str(tmp_path))
    assert paths and all(os.path.getsize(p) > 10_000 for p in paths)


def test_progress_plain_lines_and_terminal_bar():
    buf = io.StringIO()
    p = Progress(4, 10.0, stream=buf)
    row = _row("r", ("layers",))
    for _ in range(2):
        p.advance("x")
    p.note_row("cpu softmax r", [_res(row, "custom", "c", "forward", 1e-3)], 0.5)
    assert buf.getvalue() == "[2/4] cpu softmax r: ok in 0.5s, ~" + buf.getvalue().split("~")[1]
    assert "left\n" in buf.getvalue()

    class Tty(io.StringIO):
        def isatty(self):
            return True
    t = Tty()
    p = Progress(4, 10.0, stream=t)
    p.advance("cpu softmax r: forward")
    assert t.getvalue().startswith("\r[######..................] 1/4 ~")
    p.close()


def test_machine_probes_and_thread_info():
    pk = machine.cpu_peaks(1, seconds=0.02)
    assert pk["peak_gflops"] > 1 and pk["copy_gbps"] > 0.1
    th = machine.threads_info()
    assert th["torch_intraop"] == torch.get_num_threads() and "consistent" in th


# ---- bench.compare -------------------------------------------------------------------------

def _doc(scale_custom=1.0, fail=False):
    res = _sample_results()
    for r in res:
        if r.impl == "custom" and r.stats:
            r.stats = Stats(r.stats.median * scale_custom, r.stats.p20, r.stats.p80, 10, 3)
    if fail:
        r = res[0]
        res[0] = Result(r.row, r.device, r.impl, r.label, r.pass_, "failed", None, r.flops,
                        r.bytes, "broken")
    return report.to_json(res, _meta())


def test_compare_flags_regressions(tmp_path, capsys):
    old, same, slow, broken = (tmp_path / f"{n}.json" for n in ("old", "same", "slow", "broken"))
    old.write_text(json.dumps(_doc()))
    same.write_text(json.dumps(_doc(1.05)))
    slow.write_text(json.dumps(_doc(1.25)))
    broken.write_text(json.dumps(_doc(fail=True)))
    # these records have no intervals (no paired timing): the medians decide
    assert compare.main([str(old), str(same)]) == 0
    assert "0 regression(s)" in capsys.readouterr().out
    assert compare.main([str(old), str(slow)]) == 1
    out = capsys.readouterr().out
    assert out.count("**REGRESSION** (medians)") == 6 and "| 1.250 |" in out
    assert compare.main([str(old), str(slow), "--threshold", "0.3"]) == 0
    capsys.readouterr()
    assert compare.main([str(old), str(broken)]) == 1
    assert "now FAILED" in capsys.readouterr().out
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    assert compare.main([str(old), str(junk)]) == 2
    assert "is not a dlkern.bench/2 result" in capsys.readouterr().err


def _with_interval(doc, ratio, half, impl="custom"):
    for r in doc["results"]:
        if r["impl"] == impl and r["status"] == "ok":
            r.update(ratio=ratio, ratio_lo=ratio * (1 - half), ratio_hi=ratio * (1 + half),
                     ratio_rounds=40, ratio_wide=False)
    return doc


def _compare_files(tmp_path, capsys, old_doc, new_doc, *extra):
    files = []
    for name, doc in (("old", old_doc), ("new", new_doc)):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
        files.append(str(tmp_path / f"{name}.json"))
    code = compare.main(files + list(extra))
    return code, capsys.readouterr().out


def test_compare_decides_by_intervals_where_there_are_some(tmp_path, capsys):
    """With intervals in both runs, a row regressed only when the new interval lies wholly above
    the old and the ratio moved by more than --min-change: medians 25% apart with overlapping
    intervals are not one, 4.4% apart with disjoint ones are, 2.2% apart with disjoint ones not."""
    def run(old_doc, new_doc, *extra):
        return _compare_files(tmp_path, capsys, old_doc, new_doc, *extra)
    base = _with_interval(_doc(), 0.90, 0.01)
    code, out = run(base, _with_interval(_doc(1.25), 0.92, 0.03))     # overlapping
    assert code == 0 and "REGRESSION" not in out and "0.900 (0.891 - 0.909)" in out
    code, out = run(base, _with_interval(_doc(), 0.94, 0.01))         # apart, 4.4% slower
    assert code == 1 and out.count("**REGRESSION** (intervals)") == 6
    code, out = run(base, _with_interval(_doc(), 0.92, 0.001))        # apart, 2.2% slower
    assert code == 0 and "REGRESSION" not in out and "| 1.022 |" in out
    code, out = run(base, _with_interval(_doc(), 0.92, 0.001), "--min-change", "0.01")
    assert code == 1 and out.count("**REGRESSION** (intervals)") == 6
    code, out = run(base, _with_interval(_doc(), 0.85, 0.01))         # apart, faster
    assert code == 0 and out.count("faster (intervals)") == 6
    # touching intervals are no change
    code, out = run(base, _with_interval(_doc(), 0.909 / 0.99, 0.01))
    assert code == 0 and "REGRESSION" not in out
    # torch's own rows have no ratio, nor has a run without intervals: the medians decide
    slow_torch = _with_interval(_doc(), 0.90, 0.01)
    for r in slow_torch["results"]:
        if r["impl"] == "torch":
            r["median_s"] *= 1.25
    code, out = run(base, slow_torch)
    assert code == 1 and out.count("**REGRESSION** (medians)") == 6
    code, out = run(base, _doc(1.25))
    assert code == 1 and out.count("**REGRESSION** (medians)") == 6
    code, out = run(base, _doc(fail=True))
    assert code == 1 and out.count("**REGRESSION** (now FAILED)") == 1
    code, out = run(base, {**base, "results": []})
    assert code == 0 and "no row is in both runs" in out
    for bad in (["--min-change", "nan"], ["--threshold", "-1"]):
        assert compare.main([str(tmp_path / "old.json"), str(tmp_path / "new.json")] + bad) == 2
    assert compare.main([str(tmp_path / "old.json")]) == 2
    assert "expected OLD.json NEW.json, got 1 file(s)" in capsys.readouterr().err


@pytest.mark.parametrize("n", [1, 3, 6, 12, 20, 60])
def test_sign_bounds_are_the_binomial_tails(n):
    from math import comb
    lo, hi = compare.sign_bounds(n)
    p_out = lambda lo: 2 * sum(comb(n, i) for i in range(lo)) / 2 ** n  # noqa: E731
    assert hi == n - lo and p_out(lo) < 0.01 and p_out(lo + 1) >= 0.01


def _aa_doc(ratios, half=0.02, wide=False):
    return {"results": [dict(impl=impls.TORCH_AGAIN, status="ok", ratio=q, ratio_lo=q * (1 - half),
                             ratio_hi=q * (1 + half), ratio_wide=wide, device="cpu", op="softmax",
                             case=f"c{i}", detail="", **{"pass": "forward"})
                        for i, q in enumerate(ratios)]}


def _aa_flags(lines):
    return [line.rsplit("|", 2)[1].strip() for line in lines if line.startswith("| cpu")]


def test_compare_aa_judges_bias():
    ok_run = [1.0, 0.99, 1.01, 1.005, 0.995, 1.0, 0.998, 1.002]
    lines, ok = compare.judge_aa(_aa_doc(ok_run), 0.03)
    assert ok and lines[-1].endswith("unbiased") and not any(_aa_flags(lines))
    # intervals that exclude 1 are counted, not judged
    lines, ok = compare.judge_aa(_aa_doc([1.025, 0.975, 1.025, 0.975, 1.0, 1.0]), 0.03)
    assert ok and "4 of 6 intervals exclude 1" in lines[-1]
    assert _aa_flags(lines)[:4] == ["interval excludes 1"] * 4
    # an interval wholly 3% off, on a row whose interval reached the target: biased; on a wide
    # one: not judged; a median 3.4% off whose interval reaches back within 3%: noise (CI's
    # 1.034 [1.018, 1.054] of 2026-12-03)
    lines, ok = compare.judge_aa(_aa_doc([1.05, 1.0, 1.0, 0.99], half=0.01), 0.03)
    assert not ok and _aa_flags(lines)[0] == "off by more than 3%, interval excludes 1"
    assert "; 1 off by" in lines[-1]
    lines, ok = compare.judge_aa(_aa_doc([1.05, 1.0, 1.0, 0.99], half=0.01, wide=True), 0.03)
    assert ok and "; 0 off by" in lines[-1] and "‡" in lines[2]
    lines, ok = compare.judge_aa(_aa_doc([1.034, 1.0, 1.0, 0.99], half=0.02), 0.03)
    assert ok and "; 0 off by" in lines[-1]
    # a row without an interval is not judged on the tolerance either
    doc = _aa_doc([1.05, 1.0, 1.0, 0.99])
    doc["results"][0].update(ratio_lo=None, ratio_hi=None)
    lines, ok = compare.judge_aa(doc, 0.03)
    assert ok and "| none |" in lines[2]
    # a FAILED torch-again row fails the judge
    doc = _aa_doc(ok_run)
    doc["results"][0].update(status="failed", ratio=None, detail="seed 0: forward off\nmore")
    lines, ok = compare.judge_aa(doc, 0.03)
    assert not ok and "1 FAILED" in lines[-1] and "| FAILED | - | seed 0: forward off |" in lines[2]


def test_compare_aa_sign_test_catches_a_one_sided_advantage():
    """Every A/A ratio 1% below 1 (each within tolerance, as an order effect would give):
    12 of 12 on one side of 1 is not chance; 4 of 12 above is. Ties with 1 are left out."""
    lines, ok = compare.judge_aa(_aa_doc([0.99] * 12), 0.03)
    assert not ok and "0 of 12 above 1" in lines[-1] and "no bias: 2 to 10" in lines[-1]
    assert compare.judge_aa(_aa_doc([1.01] * 4 + [0.99] * 8), 0.03)[1]
    lines, ok = compare.judge_aa(_aa_doc([1.0] * 10 + [1.01, 0.99]), 0.03)
    assert ok and "1 of 2 above 1" in lines[-1]


def test_compare_aa_command_line(tmp_path, capsys):
    (tmp_path / "aa.json").write_text(json.dumps(_with_interval(_doc(), 0.99, 0.02)))
    # _doc's records are "custom": relabel them as the A/A implementation
    doc = json.loads((tmp_path / "aa.json").read_text())
    for r in doc["results"]:
        if r["impl"] == "custom":
            r["impl"] = impls.TORCH_AGAIN
    (tmp_path / "aa.json").write_text(json.dumps(doc))
    assert compare.main(["--aa", str(tmp_path / "aa.json")]) == 0
    assert "unbiased" in capsys.readouterr().out
    (tmp_path / "plain.json").write_text(json.dumps(_doc()))
    assert compare.main(["--aa", str(tmp_path / "plain.json")]) == 1
    assert "no timed torch-again rows" in capsys.readouterr().out
    assert compare.main(["--aa", str(tmp_path / "plain.json"), str(tmp_path / "plain.json")]) == 2
    assert "expected RUN.json, got 2 file(s)" in capsys.readouterr().err


def test_cli_smoke_subprocess(tmp_path):
    """The README's command, as a user runs it, on the default suites with --quick."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "bench.layers", "--impl", "custom,torch",
                           "--quick", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "CPU USED ---" in proc.stdout and "nn.Softmax" in proc.stdout
    assert "about" in proc.stderr and "left" in proc.stderr      # estimate and progress lines
    assert report.validate(json.loads((tmp_path / "results.json").read_text())) == []


@pytest.mark.parametrize("module", ["bench.layers", "bench.models"])
def test_a_closed_pipe_ends_the_command_line_quietly(module):
    """`python -m bench.layers --list | head -1`: when the reader goes away first, the command
    stops with exit 141 (128 + SIGPIPE) and no traceback."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", module, "--list"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child has imported torch, so its first write finds no reader
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err, err


def test_gpu_device_header_renders_peaks_and_clocks():
    text = report.device_header({"device": "cuda", "name": "NVIDIA H100", "peaks": {
        "matmul_fp32_gflops": 51000.0, "copy_gbps": 3000.0},
        "clocks": {"sm_mhz": 1980, "sm_max_mhz": 1980, "mem_mhz": 2619}})
    assert text == ("## GPU USED --- NVIDIA H100 (torch's cuBLAS/cuDNN in float32, TF32 off)"
                    "\n\nPeaks measured this run (the % peak columns): "
                    "fp32 matmul 51.0 TFLOP/s (TF32 off); device copy 3000 GB/s; clocks SM 1980 "
                    "/ max 1980 MHz, memory 2619 MHz.")


def test_cupy_without_cupy_is_refused_in_one_line(capsys):
    from bench import cupy_impl
    if cupy_impl.available() is None:
        pytest.skip("CuPy is installed here: the refusal cannot be observed")
    assert layers.main(["--impl", "cupy,torch", "--ops", "softmax", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--impl cupy: CuPy is not installed: pip install -e .[cupy]" in err[0]


def test_cupy_refuses_cpu_rows_and_ops_it_lacks():
    from bench import impls
    from dlkern import registry
    with pytest.raises(impls.Unavailable, match="GPU implementation"):
        impls.resolve("cupy", registry.get("softmax"), "cpu")
    if torch.cuda.is_available():
        from bench import cupy_impl
        if cupy_impl.available() is None:
            with pytest.raises(impls.Unavailable, match="CuPy has no conv2d implementation"):
                impls.resolve("cupy", registry.get("conv2d"), "cuda")


def test_torch_again_is_gated_timed_and_paired_against_torch():
    """The A/A check: torch under another name goes through the gate and the paired estimate;
    its record carries the ratio, its interval and the rounds."""
    row = workloads.select(["tensorgrad"], ["softmax"])[0]
    b = Budget(warmup_s=0.002, min_sample_s=2e-4, min_samples=8, max_samples=30, budget_s=0.3)
    cfg = runner.Config(impls=["torch-again", "torch"], passes=["forward"], budget=b, seeds=(0,))
    res = runner.run_row(row, "cpu", cfg)
    again = next(r for r in res if r.impl == "torch-again")
    assert again.status == "ok" and again.stats.ratio.rounds == again.stats.samples >= 8
    rec = next(r for r in report.records(res, _meta()) if r["impl"] == "torch-again")
    assert rec["ratio_lo"] <= rec["ratio"] <= rec["ratio_hi"] and 0.5 < rec["ratio"] < 2
    table = report.ratio_table(report.records(res, _meta()), "cpu", "torch-again")
    assert f"{rec['ratio_lo']:.3f} - {rec['ratio_hi']:.3f}" in table


# ---- implementations from outside the repository (bench/plugins.py) --------------------------

EXAMPLE = os.path.join(ROOT, "examples", "plain_torch_impl.py")
PLUGIN_RUN = ["--suite", "tensorgrad", "--quick", "--pass", "forward", "--no-peaks", "--format",
              "json"]


def _layers(capsys, tmp_path, impl, ops="softmax"):
    code = layers.main(["--impl", impl, "--ops", ops, "--out", str(tmp_path)] + PLUGIN_RUN)
    out = capsys.readouterr()
    recs = (json.loads((tmp_path / "results.json").read_text())["results"]
            if code in (0, 1) and (tmp_path / "results.json").exists() else [])
    return code, out, recs


@pytest.fixture
def clean_impls():
    before = set(impls._FACTORIES)
    yield
    for n in set(impls._FACTORIES) - before:
        impls.unregister(n)


def test_external_impl_from_a_file_is_gated_timed_and_labelled(tmp_path, capsys, clean_impls):
    code, out, recs = _layers(capsys, tmp_path, f"mine={EXAMPLE}:softmax,torch")
    assert code == 0, out.err
    mine = [r for r in recs if r["impl"] == f"mine={EXAMPLE}:softmax"]
    assert len(mine) == 3 and all(r["status"] == "ok" and r["label"] == "mine" for r in mine)
    assert all(r["ratio"] > 0 for r in mine)
    # a mapping covers softmax and linear; the default label is file:name
    code, out, recs = _layers(capsys, tmp_path, f"{EXAMPLE}:IMPLS,torch", "softmax,linear")
    assert code == 0, out.err
    ours = [r for r in recs if r["impl"] != "torch"]
    assert {r["op"] for r in ours} == {"softmax", "linear"}
    assert {r["label"] for r in ours} == {"plain_torch_impl:IMPLS"}


def test_external_impl_from_a_module_and_a_factory(tmp_path, capsys, monkeypatch, clean_impls):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "kern.py").write_text(open(EXAMPLE).read())
    monkeypatch.syspath_prepend(str(tmp_path))
    out_dir = tmp_path / "out"
    code, out, recs = _layers(capsys, out_dir, "mypkg.kern:factory,torch", "softmax,conv2d")
    assert code == 0, out.err
    conv = [r for r in recs if r["op"] == "conv2d" and r["impl"] == "mypkg.kern:factory"]
    assert conv and all(r["status"] == "skipped" and "has no conv2d" in r["detail"]
                        for r in conv)
    assert any(r["op"] == "softmax" and r["status"] == "ok" for r in recs
               if r["impl"] == "mypkg.kern:factory")


def test_external_impl_from_an_installed_entry_point(tmp_path, capsys, monkeypatch, clean_impls):
    """An installed plugin: a distribution whose entry point in group dlkern.impls names the
    object; --list shows it with where it comes from."""
    (tmp_path / "plainkern.py").write_text(open(EXAMPLE).read())
    dist = tmp_path / "plainkern-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plainkern\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dlkern.impls]\nplain = plainkern:IMPLS\n"
                                           "broken = nosuchmod_xyz:IMPLS\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert layers.main(["--list"]) == 0           # --list names plugins, loads none of them
    out = capsys.readouterr().out
    assert "plain (plainkern:IMPLS, from plainkern)" in out
    assert "broken (nosuchmod_xyz:IMPLS, from plainkern)" in out
    code, out, recs = _layers(capsys, tmp_path / "out", "plain,torch")
    assert code == 0, out.err
    assert any(r["impl"] == "plain" and r["status"] == "ok" for r in recs)
    # a plugin that cannot be loaded: one line, exit 2, before anything runs
    code, out, recs = _layers(capsys, tmp_path / "out2", "broken,torch")
    err = out.err.strip()
    assert code == 2 and not recs and len(err.splitlines()) == 1, err
    assert ("--impl broken: loading plugin 'nosuchmod_xyz:IMPLS' raised ModuleNotFoundError"
            in err)


def test_a_wrong_external_kernel_is_refused_by_the_gate(tmp_path, capsys, clean_impls):
    code, out, recs = _layers(capsys, tmp_path, f"{EXAMPLE}:wrong_softmax,torch")
    assert code == 1
    bad = [r for r in recs if r["impl"].endswith("wrong_softmax")]
    assert bad and bad[0]["status"] == "failed" and "seed" in bad[0]["detail"]


@pytest.mark.parametrize("value, message", [
    ("nosuchpkg_xyz.mod:fn", "cannot import 'nosuchpkg_xyz.mod': ModuleNotFoundError"),
    ("examples/nosuch.py:fn", "no such file 'examples/nosuch.py'"),
    (f"{EXAMPLE}:nosuch", "has no attribute 'nosuch'"),
    (f"{EXAMPLE}:NOT_CALLABLE", "int object is not callable"),
    (f"{EXAMPLE}:not_a_kernel", "covers none of this run's ops"),
    ("mine=", "nothing after '='"),
    ("nosuchplugin", "unknown implementation 'nosuchplugin'"),
    ("x=nosuchplugin", "no implementation or installed plugin"),
    (f"{EXAMPLE}:linear", "covers none of this run's ops"),
])
def test_external_impl_mistakes_are_one_line_and_exit_2(tmp_path, capsys, clean_impls, value,
                                                        message):
    code, out, _ = _layers(capsys, tmp_path, f"{value},torch")
    assert code == 2
    err = out.err.strip()
    assert len(err.splitlines()) == 1 and message in err and value.split("=")[-1][:8] in err, err


# ---- the Python API (bench/api.py) ---------------------------------------------------------

def test_api_run_returns_the_records_as_a_dataframe(clean_impls):
    import bench as bench_pkg
    sys.path.insert(0, os.path.dirname(EXAMPLE))
    try:
        from plain_torch_impl import softmax, wrong_softmax
    finally:
        sys.path.pop(0)
    df = bench_pkg.run(ops="softmax", suites=["tensorgrad"], impls=["custom", softmax, "torch"],
                       passes="forward", quick=True)
    assert list(df.columns) == list(report.RECORD_TYPES)
    assert len(df) == 3 * 3 and set(df["status"]) == {"ok"}
    assert set(df["impl"]) == {"custom", "softmax", "torch"}
    r = bench_pkg.ratios(df)
    assert r.shape == (3, 1) and (r["forward"] > 0).all()
    assert bench_pkg.ratios(df, "softmax").shape == (3, 1)
    cmp = bench_pkg.compare_frames(df, df)
    assert len(cmp) == 9 and not cmp["regressed"].any()
    # a wrong kernel passed directly: FAILED rows, the run carries on
    bad = bench_pkg.run(ops="softmax", suites="tensorgrad", impls=[wrong_softmax, "torch"],
                        passes="forward", quick=True)
    assert set(bad[bad["impl"] == "wrong_softmax"]["status"]) == {"failed"}
    with pytest.raises(ValueError, match="bench.run: ops: no op named 'nosuch'"):
        bench_pkg.run(ops="nosuch")
    with pytest.raises(ValueError, match="hold no implementation besides torch"):
        bench_pkg.ratios(df[df["impl"] == "torch"])


def test_examples_run_as_scripts(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "api_example.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "forward" in proc.stdout and "softmax" in proc.stdout


def test_profile_writes_a_loadable_trace_per_row_impl_and_pass(tmp_path, capsys):
    prof = tmp_path / "prof"
    code = layers.main(["--impl", "custom,torch", "--ops", "softmax", "--suite", "tensorgrad",
                        "--quick", "--pass", "forward,backward", "--no-peaks", "--profile",
                        str(prof), "--out", str(tmp_path), "--format", "json"])
    assert code == 0, capsys.readouterr().err
    files = sorted(p.name for p in prof.iterdir())
    assert len(files) == 3 * 2 * 2             # rows x implementations x passes
    label = impls._custom_label("cpu", None)           # dlkern <the CPU's ISA>
    trace = json.loads((prof / f"cpu_softmax_128x64_dim=-1_float32_{label.replace(' ', '_')}_backward.json")
                       .read_text())
    names = [e.get("name", "") for e in trace["traceEvents"]]
    assert f"cpu softmax 128x64 dim=-1 float32 {label} backward" in names


def test_profile_call_comes_after_each_pass_timing():
    """runner.time_passes calls profile once per implementation and pass, after that pass's
    timing has finished: the traced call cannot be among the samples."""
    events = []

    def make(n, p):
        return (lambda: events.append(("call", n, p))), contextlib.nullcontext

    def profile(n, p, fn, ctx):
        events.append(("profile", n, p))
        fn()
    timed, failed = runner.time_passes(["a", "torch"], ["forward", "backward"], make, "cpu",
                                       QUICK, lambda p: None, profile=profile)
    assert not failed and set(timed) == {(n, p) for n in ("a", "torch")
                                         for p in ("forward", "backward")}
    for p in ("forward", "backward"):
        mine = [e[0] for e in events if e[2] == p]
        first = mine.index("profile")
        assert mine[first:] == ["profile", "call", "profile", "call"]   # nothing timed after


# ---- the dtype axis ----------------------------------------------------------------------------

def test_dtype_axis_gives_each_dtype_its_rows_and_skips_what_cannot_run_it(tmp_path, capsys):
    rc = layers.main(["--impl", "custom,torch-again,torch", "--ops", "softmax", "--suite",
                      "tensorgrad", "--dtype", "float32,bfloat16", "--quick", "--no-peaks",
                      "--pass", "forward", "--out", str(tmp_path)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    doc = json.loads((tmp_path / "results.json").read_text())
    assert report.validate(doc) == [] and doc["meta"]["dtypes"] == ["float32", "bfloat16"]
    keys = [(r["case"], r["dtype"], r["impl"]) for r in doc["results"]]
    assert len(keys) == len(set(keys)) == 3 * 2 * 3            # cases x dtypes x impls
    by = {(r["dtype"], r["impl"]): set() for r in doc["results"]}
    for r in doc["results"]:
        by[(r["dtype"], r["impl"])].add(r["status"])
    assert by[("float32", "custom")] == {"ok"} and by[("bfloat16", "custom")] == {"skipped"}
    assert by[("bfloat16", "torch-again")] == {"ok"} and by[("bfloat16", "torch")] == {"ok"}
    skip = next(r for r in doc["results"] if r["dtype"] == "bfloat16" and r["impl"] == "custom")
    assert "softmax" in skip["detail"] and "float32 only, not bfloat16" in skip["detail"]
    md = cap.out
    assert "### Suite `tensorgrad` · float32" in md and "### Suite `tensorgrad` · bfloat16" in md
    # at bfloat16 the ratio table compares the first implementation that ran there
    assert "### Ratio PyTorch" in md.split("· bfloat16")[1]
    assert "### Roofline · bfloat16" in md
    assert "float32 only, not bfloat16 (3 rows)" in md
    head = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert "dtype" in head


def _plugin(tmp_path, body: str) -> str:
    path = tmp_path / "plug.py"
    path.write_text("import torch\nimport torch.nn.functional as F\n\n" + body)
    return str(path)


@pytest.mark.parametrize("dtype", ["float64", "bfloat16", "float16"])
def test_each_dtype_is_judged_at_its_own_precision(tmp_path, capsys, dtype):
    """A softmax less precise than its dtype fails the check at that dtype: float64 computed in
    float32, float16 in bfloat16, bfloat16 off by 8 units in the last place."""
    body = {"float64": "F.softmax(input.float(), dim).double()",
            "float16": "F.softmax(input.bfloat16(), dim).half()",
            "bfloat16": "F.softmax(input, dim) * (1 + 8 * 2 ** -7)"}[dtype]
    plug = _plugin(tmp_path, f"def softmax(input, dim):\n    return {body}\n")
    rc = layers.main(["--impl", f"{plug}:softmax,torch", "--ops", "softmax", "--suite",
                      "tensorgrad", "--dtype", dtype, "--quick", "--no-peaks", "--pass",
                      "forward", "--keep-going"])
    cap = capsys.readouterr()
    assert rc == 1 and f"({dtype}) [{plug}:softmax]" in cap.err


def test_a_plugin_declares_its_dtypes_and_is_skipped_at_others(tmp_path, capsys):
    plug = _plugin(tmp_path, "def softmax(input, dim):\n    return F.softmax(input, dim)\n\n"
                             "softmax.dtypes = ('float32', 'float64')\n")
    rc = layers.main(["--impl", f"mine={plug}:softmax,torch", "--ops", "softmax", "--suite",
                      "tensorgrad", "--dtype", "float64,float16", "--quick", "--no-peaks",
                      "--pass", "forward", "--format", "json", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    recs = json.loads((tmp_path / "results.json").read_text())["results"]
    mine = {r["dtype"]: r for r in recs if r["impl"] == f"mine={plug}:softmax"}
    assert mine["float64"]["status"] == "ok"
    assert mine["float16"]["status"] == "skipped"
    assert "float32, float64 only, not float16" in mine["float16"]["detail"]


def test_rows_torch_cannot_run_are_skipped_for_every_implementation(monkeypatch):
    def ref(input, dim):
        if input.dtype == torch.float16:
            raise RuntimeError("no half kernel here")
        return F.softmax(input, dim)
    spec = __import__("dataclasses").replace(SOFTMAX, ref=ref)
    row = workloads.Row(spec, Case("4x8", {"shape": (4, 8), "dim": -1}), ("user",), "float16")
    cfg = runner.Config(impls=["torch-again", "torch"], passes=["forward"],
                        budget=Budget.quick())
    res = runner.run_row(row, "cpu", cfg)
    assert [r.status for r in res] == ["skipped", "skipped"]
    assert all("torch cannot run softmax in float16 on cpu: RuntimeError: no half kernel here"
               in r.detail for r in res)


def test_compare_matches_records_from_before_the_dtype_axis_as_float32():
    old = report.to_json(_sample_results(), _meta())
    new = json.loads(json.dumps(old))
    for r in old["results"]:
        del r["dtype"]
    assert report.validate(old) == []
    lines, regressions = compare.compare(old, new, 0.10)
    assert regressions == 0 and not any("only in" in x for x in lines)
    assert len(list(compare.matched(old["results"], new["results"]))) == len(new["results"])


def test_api_run_takes_torch_dtypes():
    import bench as bench_pkg
    df = bench_pkg.run(ops="softmax", suites="tensorgrad", impls=["torch-again", "torch"],
                       passes="forward", quick=True, dtype=[torch.float64])
    assert set(df["dtype"]) == {"float64"} and set(df["status"]) == {"ok"}
    assert bench_pkg.ratios(df).index.names == ["device", "op", "case", "dtype"]


# ---- torchrun: shares, gathering, a rank that raises or dies ------------------------------------

from bench import dist  # noqa: E402


def test_shard_is_disjoint_complete_and_balanced():
    costs = [9.0, 1.0, 1.0, 1.0, 5.0, 4.0, 2.0, 0.5]
    shares = dist.shard(costs, 3)
    assert sorted(i for s in shares for i in s) == list(range(len(costs)))
    assert all(s == sorted(s) for s in shares)
    loads = [sum(costs[i] for i in s) for s in shares]
    assert max(loads) == 9.0 and min(loads) >= 6.0      # the 9 alone; the rest split 8.5 / 6
    assert dist.shard([1.0], 4) == [[0], [], [], []]


def test_own_cores_split_a_hosts_cores_without_overlap():
    ranks = [dist.Rank(r, 3, r, 3, "h") for r in range(3)]
    blocks = [dist.own_cores(r, list(range(8)), "bench.layers") for r in ranks]
    assert blocks == [[0, 1], [2, 3, 4], [5, 6, 7]]
    with pytest.raises(Exception, match="3 ranks on h share 2 CPU core"):
        dist.own_cores(ranks[0], [0, 1], "bench.layers")


def _measure_then(fail_after: int | None):
    """A rank's run: one result per row of its share, raising after `fail_after` rows."""
    def run(share, out):
        for i, r in enumerate(share):
            if i == fail_after:
                raise ZeroDivisionError("rank broke")
            out.append(_res(r, "torch", "PyTorch", "forward", 1e-3))
        return False
    return run


RANKS2 = [{"rank": 0, "host": "a", "cores": [0], "threads": 1},
          {"rank": 1, "host": "b", "cores": [1], "threads": 1}]


def test_a_rank_that_raises_is_reported_by_rank_0_with_what_it_measured():
    rows = [_row(f"r{i}", ("layers",)) for i in range(6)]
    shares = dist.shard([1.0] * 6, 2)
    ok = dist.run_share(rows, shares[0], ["cpu"], _measure_then(None))
    bad = dist.run_share(rows, shares[1], ["cpu"], _measure_then(1))
    assert bad["error"] and "ZeroDivisionError: rank broke" in bad["error"]
    results, stopped, errors = dist.merge([ok, bad], rows, ["cpu"], RANKS2)
    # rank 0 had rows 0, 2, 4; rank 1 rows 1, 3, 5 and raised after the first
    assert [r.row.case.name for r in results] == ["r0", "r1", "r2", "r4"] and not stopped
    assert [r.rank for r in results] == [0, 1, 0, 0]
    assert len(errors) == 1 and errors[0].startswith("rank 1 (b) raised")
    meta = {**_meta(), "ranks": RANKS2, "rank_errors": errors}
    md = report.markdown(results, meta, ["forward"])
    assert "2 torchrun ranks shared the rows" in md and "**FAILED**: rank 1 (b) raised" in md
    assert "ZeroDivisionError: rank broke" in md


def test_a_rank_that_built_other_rows_is_left_out_with_a_message():
    rows = [_row(f"r{i}", ("layers",)) for i in range(4)]
    ok = dist.run_share(rows, dist.shard([1.0] * 4, 2)[0], ["cpu"], _measure_then(None))
    other = dist.run_share(rows[:3], dist.shard([1.0] * 3, 2)[1], ["cpu"], _measure_then(None))
    results, _, errors = dist.merge([ok, other], rows, ["cpu"], RANKS2)
    assert {r.rank for r in results} == {0}
    assert len(errors) == 1 and "rank 1 (b) built other rows or devices than rank 0" in errors[0]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
TINY = "op,name,shape,params\n" + "".join(f"softmax,s{i},{4 + i}x{8 + i},dim=-1\n"
                                          for i in range(5))


def _torchrun(tmp_path, args, timeout=300):
    shapes = tmp_path / "tiny.csv"
    shapes.write_text(TINY)
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(TORCHRUN + ["-m", "bench.layers", "--shapes", str(shapes), "--quick",
                                      "--no-peaks", "--pass", "forward", "--threads", "1"] + args,
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env)


def test_torchrun_two_ranks_merge_into_one_report(tmp_path):
    p = _torchrun(tmp_path, ["--impl", "custom,torch", "--out", str(tmp_path / "r")])
    assert p.returncode == 0, p.stderr
    doc = json.loads((tmp_path / "r" / "results.json").read_text())
    assert report.validate(doc) == []
    keys = [(r["case"], r["impl"], r["pass"]) for r in doc["results"]]
    assert sorted(keys) == sorted((f"s{i}", impl, "forward") for i in range(5)
                                  for impl in ("custom", "torch"))
    assert {r["rank"] for r in doc["results"]} == {0, 1}
    assert all(r["host"] and r["device_id"] == "cpu" for r in doc["results"])
    ranks = doc["meta"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["threads"] == 1 for r in ranks)
    assert not set(ranks[0]["cores"]) & set(ranks[1]["cores"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert "2 torchrun ranks shared the rows" in md and p.stdout.count("# dlkern layer") == 1


def test_torchrun_a_rank_that_dies_fails_the_run_without_hanging(tmp_path):
    plug = _plugin(tmp_path, "import os\n\ndef softmax(input, dim):\n"
                             "    if os.environ.get('RANK') == '1':\n        os._exit(7)\n"
                             "    return F.softmax(input, dim)\n")
    p = _torchrun(tmp_path, ["--impl", f"{plug}:softmax,torch"], timeout=240)
    assert p.returncode != 0 and "exitcode" in p.stderr and ": 7" in p.stderr
