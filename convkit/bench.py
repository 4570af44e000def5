"""Speed and accuracy of every convkit kernel against the NumPy reference and PyTorch.

Run ``python -m convkit.bench`` (or ``convkit-bench``); ``--help`` lists the
options. For each op, method and shape of :data:`CONV_SHAPES` and
:data:`POOL_SHAPES` it reports the median time, GFLOP/s (conv) or GB/s
(pooling), the speedup over :mod:`convkit.reference` and over PyTorch (when
``import torch`` works), and the largest error against the reference,
computed outside the timed calls. A result whose relative error exceeds
:data:`TOLERANCE` for its dtype is flagged and makes the command exit with
status 1.

The shape tables, :func:`make_case` and :func:`max_errors` are also what the
pytest-benchmark suite in ``benchmarks/`` is built on.
"""

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

import convkit
from convkit import _threads, functional, reference
from convkit._lib import _openmp
from convkit._validation import conv_geometry, output_size

CONV_OPS = ("conv2d", "conv2d_backward")
POOL_OPS = ("max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward")
OPS = CONV_OPS + POOL_OPS
CONV_METHODS = ("direct", "im2col", "auto")

# Largest accepted max|actual - reference| / max|reference| per dtype.
TOLERANCE = {np.dtype(np.float32): 5e-5, np.dtype(np.float64): 1e-10}


@dataclass(frozen=True)
class ConvShape:
    """x (N, C, H, W) convolved with weight (K, C // groups, R, S)."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: int = 1
    padding: int = 0
    groups: int = 1

    def geometry(self):
        """The checked :class:`~convkit._validation.ConvGeometry` of this shape."""
        return conv_geometry((self.N, self.C, self.H, self.W),
                             (self.K, self.C // self.groups, self.R, self.S),
                             self.stride, self.padding, 1, self.groups)

    def __str__(self):
        text = f"{self.N}x{self.C}x{self.H}x{self.W} -> {self.K} {self.R}x{self.S}"
        for name, default in (("stride", 1), ("padding", 0), ("groups", 1)):
            if getattr(self, name) != default:
                text += f" {name} {getattr(self, name)}"
        return text


@dataclass(frozen=True)
class PoolShape:
    """x (N, C, H, W) pooled with a square window; ``kinds`` names the pools it applies to."""

    N: int
    C: int
    H: int
    W: int
    kernel: int
    stride: int
    padding: int = 0
    kinds: tuple = ("max", "avg")

    @property
    def output_hw(self):
        return tuple(output_size(n, self.kernel, self.stride, self.padding, self.padding)
                     for n in (self.H, self.W))

    def __str__(self):
        text = f"{self.N}x{self.C}x{self.H}x{self.W} k{self.kernel} s{self.stride}"
        return text + (f" p{self.padding}" if self.padding else "")


CONV_SHAPES = {
    "mnist-conv1": ConvShape(64, 1, 28, 28, 32, 5, 5),
    "mnist-conv2": ConvShape(64, 32, 12, 12, 64, 5, 5),
    "mnist-3x3": ConvShape(64, 1, 28, 28, 64, 3, 3),
    "cifar-conv1": ConvShape(64, 3, 32, 32, 32, 3, 3, padding=1),
    "resnet-3x3": ConvShape(8, 64, 56, 56, 64, 3, 3, padding=1),
    "resnet-3x3-s2": ConvShape(8, 64, 56, 56, 128, 3, 3, stride=2, padding=1),
    "resnet-1x1": ConvShape(8, 256, 14, 14, 64, 1, 1),
    "resnet-3x3-c256": ConvShape(8, 256, 14, 14, 256, 3, 3, padding=1),
    "resnet-3x3-n1": ConvShape(1, 64, 56, 56, 64, 3, 3, padding=1),
    "depthwise-3x3": ConvShape(8, 128, 28, 28, 128, 3, 3, padding=1, groups=128),
}
POOL_SHAPES = {
    "pool-2x2": PoolShape(64, 32, 24, 24, kernel=2, stride=2),
    "pool-3x3-s2": PoolShape(8, 64, 112, 112, kernel=3, stride=2, padding=1),
    "global-avg-7x7": PoolShape(8, 512, 7, 7, kernel=7, stride=7, kinds=("avg",)),
}
SHAPES = {**CONV_SHAPES, **POOL_SHAPES}
# The shapes --quick runs unless --shapes names others: one of each kind of
# conv (5x5 on one channel, small 3x3, pointwise, latency, depthwise) and pooling.
QUICK_SHAPES = ("mnist-conv1", "cifar-conv1", "resnet-1x1", "resnet-3x3-n1",
                "depthwise-3x3", "pool-2x2", "global-avg-7x7")


def shapes_for(op):
    """Names of the shapes ``op`` runs on, in table order."""
    if op in CONV_OPS:
        return list(CONV_SHAPES)
    kind = op.split("_")[0][:3]
    return [name for name, shape in POOL_SHAPES.items() if kind in shape.kinds]


@dataclass(frozen=True)
class Timing:
    """Median of the timed calls, in seconds, and how many there were."""

    median_s: float
    repeats: int


def measure(fn, budget_s, min_repeats, warmup=True, max_repeats=1000, settle_s=0.0):
    """Time ``fn()``: an untimed warm-up call, then repeats until both ``min_repeats``
    and ``budget_s`` seconds are reached. Returns (Timing, result of the warm-up call
    or None).

    With ``settle_s`` the untimed warm-up goes on for that many seconds: after
    the multi-threaded GEMMs of a previous measurement (the im2col path, the
    NumPy reference), OpenBLAS's threads spin for about 0.2 s, and OpenMP
    kernels (convkit's, PyTorch's) timed meanwhile share the cores with them.
    """
    result = fn() if warmup else None
    if warmup and settle_s > 0:
        end = time.perf_counter() + settle_s
        while time.perf_counter() < end:
            fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_repeats or (time.perf_counter() - start < budget_s
                                       and len(times) < max_repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), len(times)), result


def max_errors(actual, expected):
    """(max abs error, max relative error) of a tuple of arrays against another.

    The relative error of each array is max|actual - expected| / max|expected|;
    the largest over the tuple is returned. A shape mismatch or a non-finite
    value counts as an infinite error.
    """
    max_abs = max_rel = 0.0
    for a, e in zip(actual, expected, strict=True):
        a = np.asarray(a)
        if a.shape != e.shape or not np.all(np.isfinite(a)):
            return float("inf"), float("inf")
        diff = float(np.max(np.abs(a.astype(np.float64) - e), initial=0.0))
        scale = float(np.max(np.abs(e), initial=0.0))
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale else (0.0 if diff == 0 else float("inf")))
    return max_abs, max_rel


def within_tolerance(max_rel, dtype):
    """True when a relative error from :func:`max_errors` is acceptable for ``dtype``."""
    return max_rel <= TOLERANCE[np.dtype(dtype)]


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


class Case:
    """One op on one shape and dtype, with inputs built from a fixed seed.

    ``convkit(method)``, ``reference()`` and ``torch()`` return zero-argument
    callables that run the op once and return its outputs as a tuple (torch
    returns tensors: convert with :func:`to_numpy`). ``work`` is the FLOP
    count (conv) or the bytes read plus written (pooling).
    """

    def __init__(self, op, shape_name, dtype=np.float32, seed=0):
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; choose from {', '.join(OPS)}")
        if shape_name not in shapes_for(op):
            raise ValueError(f"{op} does not run on shape {shape_name!r}; its shapes are "
                             f"{', '.join(shapes_for(op))}")
        self.op, self.shape_name, self.shape = op, shape_name, SHAPES[shape_name]
        self.dtype = np.dtype(dtype)
        self.is_conv = op in CONV_OPS
        self.backward = op.endswith("_backward")
        self.methods = CONV_METHODS if self.is_conv else (None,)
        self.unit = "GFLOP/s" if self.is_conv else "GB/s"
        rng = np.random.default_rng(seed)
        s = self.shape
        if self.is_conv:
            g = s.geometry()
            self.x = rng.standard_normal(g.input_shape).astype(self.dtype)
            self.weight = rng.standard_normal(g.weight_shape).astype(self.dtype)
            self.grad_output = rng.standard_normal(g.output_shape).astype(self.dtype)
            self.work = g.flops * (2 if self.backward else 1)
            return
        # Distinct values, so that max pooling has no ties to break differently.
        size = s.N * s.C * s.H * s.W
        self.x = (rng.permutation(size) / size - 0.5).astype(self.dtype).reshape(
            s.N, s.C, s.H, s.W)
        out_shape = (s.N, s.C) + s.output_hw
        self.grad_output = rng.standard_normal(out_shape).astype(self.dtype)
        output_bytes = self.grad_output.nbytes
        if op == "max_pool2d_backward":
            _, self.indices = functional.max_pool2d(self.x, s.kernel, s.stride, s.padding,
                                                    return_indices=True)
            self.work = output_bytes + self.indices.nbytes + self.x.nbytes
        else:
            self.work = output_bytes + self.x.nbytes

    @property
    def label(self):
        return f"{self.op} {self.shape_name}"

    def _pool_args(self):
        return self.shape.kernel, self.shape.stride, self.shape.padding

    def _conv_kwargs(self):
        return {"stride": self.shape.stride, "padding": self.shape.padding,
                "groups": self.shape.groups}

    def convkit(self, method=None):
        """Callable running convkit's op (``method`` for conv ops only)."""
        return self._numpy_call(functional, method or "auto")

    def reference(self):
        """Callable running the NumPy reference."""
        return self._numpy_call(reference, "auto")

    def _numpy_call(self, module, method):
        x, grad_output = self.x, self.grad_output
        if self.op == "conv2d":
            kwargs = {**self._conv_kwargs(), "method": method}
            return lambda: (module.conv2d(x, self.weight, **kwargs),)
        if self.op == "conv2d_backward":
            kwargs = {**self._conv_kwargs(), "method": method,
                      "output_mask": (True, True, False)}
            return lambda: module.conv2d_backward(grad_output, x, self.weight, **kwargs)[:2]
        args = self._pool_args()
        if self.op == "max_pool2d":
            return lambda: (module.max_pool2d(x, *args),)
        if self.op == "avg_pool2d":
            return lambda: (module.avg_pool2d(x, *args),)
        if self.op == "avg_pool2d_backward":
            return lambda: (module.avg_pool2d_backward(grad_output, x.shape, *args),)
        if module is functional:
            indices = self.indices
        else:
            _, indices = module.max_pool2d(x, *args, return_indices=True)
        return lambda: (module.max_pool2d_backward(grad_output, indices, x.shape),)

    def torch(self):
        """Callable running PyTorch's op on the same data, or None without torch."""
        torch = _import_torch()
        if torch is None:
            return None
        F = torch.nn.functional
        aten = torch.ops.aten
        x, grad_output = torch.from_numpy(self.x), torch.from_numpy(self.grad_output)
        s = self.shape
        if self.is_conv:
            weight = torch.from_numpy(self.weight)
            stride, padding = [s.stride] * 2, [s.padding] * 2
            if self.op == "conv2d":
                return lambda: (F.conv2d(x, weight, None, stride, padding, 1, s.groups),)
            return lambda: aten.convolution_backward(
                grad_output, x, weight, None, stride, padding, [1, 1], False, [0, 0],
                s.groups, [True, True, False])[:2]
        k, st, p = [s.kernel] * 2, [s.stride] * 2, [s.padding] * 2
        if self.op == "max_pool2d":
            return lambda: (F.max_pool2d(x, k, st, p),)
        if self.op == "avg_pool2d":
            return lambda: (F.avg_pool2d(x, k, st, p),)
        if self.op == "avg_pool2d_backward":
            return lambda: (aten.avg_pool2d_backward(grad_output, x, k, st, p, False, True,
                                                     None),)
        _, indices = F.max_pool2d(x, k, st, p, return_indices=True)
        return lambda: (aten.max_pool2d_with_indices_backward(grad_output, x, k, st, p,
                                                              [1, 1], False, indices),)


def to_numpy(outputs):
    """Tuple of NumPy arrays from a tuple of arrays or torch tensors."""
    return tuple(o.detach().numpy() if hasattr(o, "detach") else o for o in outputs)


@dataclass(frozen=True)
class Settings:
    budget_s: float
    min_repeats: int
    reference_budget_s: float
    reference_min_repeats: int
    # The reference is not timed when one call takes longer than this (None: always timed).
    reference_skip_s: float | None
    # Untimed warm-up of convkit's and PyTorch's calls (see measure).
    settle_s: float = 0.0
    # Rounds in which PyTorch and convkit's methods take turns (see measure_interleaved).
    rounds: int = 1


FULL = Settings(budget_s=0.5, min_repeats=5, reference_budget_s=0.3, reference_min_repeats=2,
                reference_skip_s=None, settle_s=0.3, rounds=3)
QUICK = Settings(budget_s=0.0, min_repeats=2, reference_budget_s=0.0, reference_min_repeats=1,
                 reference_skip_s=0.25)
GEMM_SIZE = 1024
# Fewest paired rounds behind a scaling figure (see measure_scaling).
SCALING_MIN_PAIRS = 9


class _TorchThreads:
    """Set torch's intra-op thread count inside a ``with`` block (no-op without torch)."""

    def __init__(self, torch, n):
        self.torch, self.n, self.previous = torch, n, None

    def __enter__(self):
        if self.torch is not None:
            self.previous = self.torch.get_num_threads()
            self.torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.torch is not None:
            self.torch.set_num_threads(self.previous)


def measure_interleaved(fns, budget_s, min_repeats, settle_s=0.0, rounds=1):
    """Time calls that are to be compared: ``rounds`` rounds in which each takes its turn.

    Each call first runs once, untimed (its result is returned). Each round
    then gives every call ``budget_s / rounds`` seconds and a share of
    ``min_repeats`` (see measure, with ``settle_s``), starting one call
    further along than the round before, so that whatever a call leaves
    behind (OpenBLAS's threads spinning, a cold cache) falls on a different
    neighbour each round. A call's median is the median of its rounds'
    medians: one disturbed round does not move it. Returns (Timing, result)
    per call, in order.
    """
    results = [fn() for fn in fns]
    medians = [[] for _ in fns]
    repeats = [0] * len(fns)
    share = max(1, -(-min_repeats // rounds))
    for i in range(rounds):
        for j in range(len(fns)):
            k = (i + j) % len(fns)
            timing, _ = measure(fns[k], budget_s / rounds, share, warmup=settle_s > 0,
                                settle_s=settle_s)
            medians[k].append(timing.median_s)
            repeats[k] += timing.repeats
    return [(Timing(statistics.median(m), r), result)
            for m, r, result in zip(medians, repeats, results)]


def measure_scaling(fn, counts, budget_s, min_pairs):
    """Speedup of ``fn()`` on each thread count over ``counts[0]``, from paired calls.

    The counts take turns (in reverse order every other round), and each
    speedup is the median over rounds of that round's time on ``counts[0]``
    over its time on the count: both calls of a pair see the same state of
    a noisy machine, which medians taken apart, seconds apart, do not. A
    turn makes one untimed call before the timed one, so that the timed
    call finds the caches and threads as a run of calls on that count
    leaves them (the previous turn's count left its data in other cores'
    caches). Returns {count: (speedup, best-call speedup)}, (1.0, 1.0) for
    ``counts[0]``; the second is the ratio of the fastest calls on the two
    counts. Other tenants' load only slows calls down, and on a small VM it
    slows calls on all cores more than calls on one (a neighbour busy on one
    core stalls one of two threads), so a burst of it biases the median
    speedup downwards even when paired; the fastest calls are the least
    disturbed.
    """
    def timed(n):
        with convkit.num_threads(n), _threads.blas_threads(n):
            fn()
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

    times = {n: [] for n in counts}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_pairs or (time.perf_counter() - start < budget_s and rounds < 1000):
        for n in counts if rounds % 2 == 0 else counts[::-1]:
            times[n].append(timed(n))
        rounds += 1
    base = np.array(times[counts[0]])
    return {n: (float(np.median(base / np.array(times[n]))), float(base.min() / min(times[n])))
            for n in counts}


def measure_gemm(dtype, n_threads, settings, size=GEMM_SIZE):
    """GFLOP/s of NumPy's matmul of two (size, size) matrices on ``n_threads`` BLAS threads."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    out = np.empty((size, size), dtype=dtype)
    with _threads.blas_threads(n_threads):
        timing, _ = measure(lambda: np.matmul(a, b, out=out), max(settings.budget_s, 0.2),
                            max(settings.min_repeats, 3))
    return 2 * size**3 / timing.median_s / 1e9


def copy_call(x):
    """A call of NumPy copying ``x`` into a preallocated array (np.copyto, one thread).

    The ceiling a memory-bound pooling pass is held to: the same bytes
    (2 * x.nbytes, read plus written), the same cache regime. The benchmark
    times it in turns with the pooling calls, so that both rates come from
    the same stretch of the machine.
    """
    out = np.empty_like(x)
    return lambda: np.copyto(out, x)


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(torch):
    """dict naming the CPU, cores, OpenMP, BLAS and library versions of this run."""
    blas = _threads.blas_info()
    blas_text = "; ".join(f"{lib.get('internal_api')} {lib.get('version')} "
                          f"({lib.get('threading_layer')}, {lib.get('architecture')})"
                          for lib in blas) or "unknown (install threadpoolctl to see it)"
    return {
        "cpu": cpu_model(),
        "cores": _threads._cpu_count(),
        "openmp": _openmp.openmp_enabled(),
        "blas": blas_text,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "convkit": convkit.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _progress(total, enabled):
    if not enabled:
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainProgress(total)
    return tqdm(total=total, file=sys.stderr, unit="case", leave=False)


class _NoProgress:
    def set_description(self, text):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass


class _PlainProgress(_NoProgress):
    def __init__(self, total):
        self.total, self.done, self.text = total, 0, ""

    def set_description(self, text):
        self.text = text

    def update(self, n=1):
        self.done += n
        print(f"[{self.done}/{self.total}] {self.text}", file=sys.stderr, flush=True)


def run(ops, shape_names, dtype=np.float32, threads=(1,), settings=FULL, seed=0,
        progress=False):
    """Benchmark every (op, method, shape, thread count) and return the report dict."""
    torch = _import_torch()
    dtype = np.dtype(dtype)
    cases = [(op, name) for op in ops for name in shapes_for(op) if name in shape_names]
    gemm = {n: measure_gemm(dtype, n, settings) for n in threads}
    rows = []
    bar = _progress(len(cases) * len(threads), progress)
    try:
        for op, name in cases:
            case = Case(op, name, dtype, seed)
            bar.set_description(case.label)
            reference_fn = case.reference()
            t0 = time.perf_counter()
            expected = reference_fn()
            time_reference = (settings.reference_skip_s is None
                              or time.perf_counter() - t0 <= settings.reference_skip_s)
            torch_fn = case.torch()
            case_rows = []
            for n in threads:
                with convkit.num_threads(n), _threads.blas_threads(n), _TorchThreads(torch, n):
                    case_rows.extend(_run_case(case, n, expected, reference_fn,
                                               time_reference, torch_fn, gemm[n], settings))
                bar.update()
            if len(threads) > 1:
                for method in case.methods:
                    scaling = measure_scaling(case.convkit(method), sorted(threads),
                                              settings.budget_s,
                                              max(settings.min_repeats, SCALING_MIN_PAIRS))
                    for row in case_rows:
                        if row["method"] == method:
                            row["scaling"], row["scaling_best"] = scaling[row["threads"]]
            rows.extend(case_rows)
    finally:
        bar.close()
    return {
        "machine": machine_info(torch),
        "config": {"ops": list(ops), "shapes": list(shape_names), "dtype": dtype.name,
                   "threads": list(threads), "quick": settings is QUICK, "seed": seed,
                   "tolerance": TOLERANCE[dtype]},
        "gemm": [{"threads": n, "size": GEMM_SIZE, "gflops": gemm[n]}
                 for n in threads],
        "results": rows,
        "failures": sum(not row["ok"] for row in rows),
    }


def _run_case(case, n, expected, reference_fn, time_reference, torch_fn, gemm_gflops,
              settings):
    reference_time = torch_time = torch_rel = None
    if time_reference:
        reference_time = measure(reference_fn, settings.reference_budget_s,
                                 settings.reference_min_repeats, warmup=False)[0].median_s
    # PyTorch and every method of convkit take turns, so that the ratios
    # between them come from the same stretch of a noisy machine.
    # A pooling case's copy (its ceiling, see copy_call) takes turns too.
    fns = [case.convkit(method) for method in case.methods]
    if not case.is_conv:
        fns.append(copy_call(case.x))
    if torch_fn is not None:
        fns.append(torch_fn)
    timings = measure_interleaved(fns, settings.budget_s, settings.min_repeats,
                                  settings.settle_s, settings.rounds)
    if torch_fn is not None:
        timing, outputs = timings.pop()
        torch_time = timing.median_s
        torch_rel = max_errors(to_numpy(outputs), expected)[1]
    copy_rate = None if case.is_conv else 2 * case.x.nbytes / timings.pop()[0].median_s / 1e9
    rows = []
    for method, (timing, outputs) in zip(case.methods, timings):
        max_abs, max_rel = max_errors(outputs, expected)
        rate = case.work / timing.median_s / 1e9
        rows.append({
            "op": case.op, "method": method, "shape": case.shape_name,
            "shape_desc": str(case.shape), "threads": n,
            "time_s": timing.median_s, "repeats": timing.repeats,
            "rate": rate, "rate_unit": case.unit,
            "gemm_fraction": rate / gemm_gflops if case.is_conv else None,
            "copy_gbs": copy_rate,
            "copy_fraction": None if case.is_conv else rate / copy_rate,
            "reference_time_s": reference_time,
            "speedup_reference": reference_time / timing.median_s if reference_time else None,
            "torch_time_s": torch_time,
            "speedup_torch": torch_time / timing.median_s if torch_time else None,
            "torch_max_rel_err": torch_rel,
            "max_abs_err": max_abs, "max_rel_err": max_rel,
            "ok": within_tolerance(max_rel, case.dtype),
        })
    return rows


def _fmt_time(seconds):
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _fmt_speedup(value, missing="-"):
    return missing if value is None else f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def _fmt_fraction(value):
    return "-" if value is None else f"{100 * value:.0f}%"


def _fmt_err(value):
    return f"{value:.1e}"


def format_report(report, markdown=False):
    """The report as text: a header naming the machine, then one table row per result."""
    machine, config = report["machine"], report["config"]
    threads = config["threads"]
    gemm_name = "sgemm" if config["dtype"] == "float32" else "dgemm"
    size = report["gemm"][0]["size"] if report["gemm"] else 0
    gemm_text = ", ".join(f"{g['gflops']:.1f} GFLOP/s on {g['threads']} thread"
                          f"{'s' if g['threads'] > 1 else ''}" for g in report["gemm"])
    header = [
        f"CPU: {machine['cpu']}, {machine['cores']} cores",
        f"OpenMP: {'on' if machine['openmp'] else 'off (kernels run serially)'}",
        f"BLAS: {machine['blas']}",
        f"{gemm_name} ({size}x{size}x{size}, np.matmul): {gemm_text}",
        (f"convkit {machine['convkit']}, numpy {machine['numpy']}, "
         f"torch {machine['torch'] or 'not installed'}, python {machine['python']}"),
        (f"dtype {config['dtype']}, threads {','.join(map(str, threads))}, "
         f"{'--quick' if config['quick'] else 'full'} run, {machine['date']}"),
        (f"speedups > 1 mean convkit is faster; rel err = max|convkit - reference| / "
         f"max|reference|, tolerance {config['tolerance']:g}"),
        (f"% {gemm_name} or copy: a conv row's rate against {gemm_name}'s, a pooling row's "
         f"against NumPy copying its input (np.copyto, bytes read + written)"),
    ]
    columns = ["op", "method", "shape"]
    multi = len(threads) > 1
    if multi:
        columns += ["threads"]
    columns += ["time ms"] + (["scaling", "best-call scaling"] if multi else []) + [
        "rate", f"% {gemm_name} or copy", "vs reference", "vs torch", "abs err", "rel err",
        "check"]
    skipped = False
    body = []
    for row in report["results"]:
        if row["speedup_reference"] is None:
            skipped = True
        cells = [row["op"], row["method"] or "", row["shape"]]
        if multi:
            cells.append(str(row["threads"]))
        cells.append(_fmt_time(row["time_s"]))
        if multi:
            cells += [_fmt_speedup(row.get("scaling")), _fmt_speedup(row.get("scaling_best"))]
        cells += [
            f"{row['rate']:.3g} {row['rate_unit']}",
            _fmt_fraction(row["gemm_fraction"] if row["copy_fraction"] is None
                          else row["copy_fraction"]),
            _fmt_speedup(row["speedup_reference"], missing="not timed*"),
            _fmt_speedup(row["speedup_torch"]),
            _fmt_err(row["max_abs_err"]), _fmt_err(row["max_rel_err"]),
            "ok" if row["ok"] else "FAIL",
        ]
        body.append(cells)
    footer = []
    if multi:
        footer.append(f"scaling: speedup over {min(threads)} thread"
                      f"{'s' if min(threads) > 1 else ''}, the median over rounds of calls on "
                      "each count taken in turn (paired, unlike the times, which are medians "
                      "measured apart); best-call scaling: the ratio of the fastest calls of "
                      "those rounds, the least disturbed by other tenants")
    if skipped:
        footer.append("* --quick: the reference took over "
                      f"{QUICK.reference_skip_s:g} s per call, so it was run once for the "
                      "error check but not timed.")
    shapes = {}
    for row in report["results"]:
        shapes.setdefault(row["shape"], row["shape_desc"])
    footer.append("shapes: " + "; ".join(f"{name} = {desc}" for name, desc in shapes.items()))
    failures = report["failures"]
    footer.append(f"FAILED: {failures} result(s) beyond tolerance" if failures
                  else "all results within tolerance")
    if markdown:
        lines = [f"- {line}" for line in header] + [""]
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "|".join("---" if i < 3 else "---:" for i in range(len(columns)))
                     + "|")
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        lines += [""] + footer
        return "\n".join(lines)
    widths = [max(len(c), *(len(cells[i]) for cells in body)) if body else len(c)
              for i, c in enumerate(columns)]
    lines = header + [""]
    lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(columns, widths))))
    lines += ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(cells, widths))) for cells in body]
    lines += [""] + footer
    return "\n".join(lines)


def plot_report(report, path, pyplot):
    """Horizontal bars of the speedups over the reference and torch, log scale."""
    rows = report["results"]
    labels = [f"{r['op']} {r['method'] or ''} {r['shape']} t{r['threads']}".replace("  ", " ")
              for r in rows]
    positions = np.arange(len(rows))
    fig, ax = pyplot.subplots(figsize=(9, 0.28 * len(rows) + 1.5))
    for offset, key, name in ((-0.2, "speedup_reference", "vs reference"),
                              (0.2, "speedup_torch", "vs torch")):
        values = [r[key] if r[key] is not None else np.nan for r in rows]
        ax.barh(positions + offset, values, height=0.4, label=name)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(positions, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speedup of convkit (> 1: convkit faster)")
    ax.legend()
    ax.set_title(f"convkit {report['config']['dtype']} on {report['machine']['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot.close(fig)


def _comma_list(choices, what):
    def parse(text):
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(unknown) or repr(text)}; choose from "
                f"{', '.join(choices)}")
        return items
    return parse


def _thread_list(text):
    try:
        counts = [int(item) for item in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(
            f"threads must be a comma list of positive ints like 1,2, got {text!r}")
    return counts


def build_parser():
    """The command-line parser of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog="python -m convkit.bench",
        description="Time convkit's conv and pooling kernels against the NumPy reference "
                    "and PyTorch, and check their results against the reference. Exits "
                    "with status 1 when a result is beyond tolerance.")
    parser.add_argument("--quick", action="store_true",
                        help=f"fewer repeats and the shapes {', '.join(QUICK_SHAPES)} "
                             "(under a minute on 2 cores)")
    parser.add_argument("--threads", type=_thread_list, default=None,
                        help="comma list of thread counts, e.g. 1,2 (default: convkit's "
                             "current count)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--ops", type=_comma_list(OPS, "op"), default=list(OPS),
                        help=f"comma list from {', '.join(OPS)} (default: all)")
    parser.add_argument("--shapes", type=_comma_list(list(SHAPES), "shape"), default=None,
                        help=f"comma list from {', '.join(SHAPES)} (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="save speedup bars (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None):
    """Entry point of ``python -m convkit.bench`` / ``convkit-bench``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.shapes is not None:
        shapes = args.shapes
    else:
        shapes = list(QUICK_SHAPES if args.quick else SHAPES)
    if not any(name in shapes for op in args.ops for name in shapes_for(op)):
        parser.error(f"none of the shapes {', '.join(shapes)} applies to the ops "
                     f"{', '.join(args.ops)}")
    pyplot = None
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            from matplotlib import pyplot
        except ImportError:
            parser.error("--plot needs matplotlib: pip install matplotlib (or "
                         "pip install 'convkit[plot]')")
    threads = args.threads or [convkit.get_num_threads()]
    report = run(args.ops, shapes, np.dtype(args.dtype), threads,
                 QUICK if args.quick else FULL, args.seed,
                 progress=not args.no_progress)
    report["config"]["command"] = " ".join(["python -m convkit.bench"] + list(
        sys.argv[1:] if argv is None else argv))
    print(format_report(report, markdown=args.markdown))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if pyplot is not None:
        plot_report(report, args.plot, pyplot)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
