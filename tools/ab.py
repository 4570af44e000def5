"""A/B timing of two built checkouts of convkit on a noisy machine.

    python tools/ab.py OLD_CHECKOUT NEW_CHECKOUT SHAPES OP [--method M] [--reps N]
                       [--interleave]

SHAPES is a comma-separated list of convkit.bench.CONV_SHAPES names or of
shapes spelled NxCxHxW-KxRxS, optionally with -sSTRIDE, -pPADDING and -gGROUPS
(64x32x13x13-64x3x3 is Keras's second MNIST convolution; 8x64x56x56-64x3x3-p1
resnet-3x3), OP one of fwd, bwd, gi (grad_input alone), gw (grad_weight
alone), float32, or the same with -f64. The pooling ops maxpool, maxpool-idx
(with indices), maxpool-bwd, avgpool and avgpool-bwd (also with -f64) take
bench.POOL_SHAPES names or shapes spelled NxCxHxW-kKERNEL[-sSTRIDE][-pPADDING]
(pool-2x2 is 64x32x24x24-k2). Both checkouts must be built in place
(python setup.py build_ext --inplace).

By default each rep runs every shape in a fresh process per checkout
(PYTHONPATH), old then new, and takes the median of 11 calls; the report
gives each side's range over the reps and the ratios old/new of the medians
and of the minimums.

With --interleave both checkouts are loaded into one process (copied to a
temporary folder as packages convkit_old and convkit_new) and their calls
alternate one by one, N calls each (default 41), so that both sides see the
same stretch of the machine: the report gives the median over pairs of
old/new, the ratio of the fastest calls, and whether the two give the same
bits. Two copies of one build read 0.98x-1.03x this way on a noisy 2-core VM,
where separate processes spread by 2x.

--method direct,im2col gives each side its own conv method: with one
checkout on both sides (python tools/ab.py . . resnet-1x1 gw --interleave
--method direct,im2col) it measures the "auto" rule's choices.
"""

import argparse
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

OUTPUT_MASKS = {"bwd": (True, True, True), "gi": (True, False, False),
                "gw": (False, True, False)}


_SPELLED = re.compile(r"(\d+)x(\d+)x(\d+)x(\d+)-(\d+)x(\d+)x(\d+)((?:-[spg]\d+)*)$")
_SPELLED_POOL = re.compile(r"(\d+)x(\d+)x(\d+)x(\d+)-k(\d+)((?:-[sp]\d+)*)$")
POOL_OPS = ("maxpool", "maxpool-idx", "maxpool-bwd", "avgpool", "avgpool-bwd")


def pool_shape_of(shapes, name):
    """The POOL_SHAPES entry ``name``, or the pooling shape it spells."""
    if name in shapes:
        return shapes[name]
    match = _SPELLED_POOL.match(name)
    if match is None:
        raise SystemExit(f"unknown pooling shape {name!r}: neither a POOL_SHAPES name nor "
                         "NxCxHxW-kKERNEL[-sSTRIDE][-pPADDING]")
    sizes = [int(v) for v in match.groups()[:5]]
    options = dict(re.findall(r"-([sp])(\d+)", match.group(6)))
    shape_type = type(next(iter(shapes.values())))
    return shape_type(*sizes, stride=int(options.get("s", sizes[4])),
                      padding=int(options.get("p", 0)))


def make_pool_call(convkit, shapes, name, op):
    """A no-argument callable running pooling ``op`` of ``convkit`` on shape ``name``."""
    dtype = np.float64 if op.endswith("-f64") else np.float32
    kind = op.removesuffix("-f64")
    s = pool_shape_of(shapes, name)
    x = np.random.default_rng(0).standard_normal((s.N, s.C, s.H, s.W)).astype(dtype)
    args = (s.kernel, s.stride, s.padding)
    if kind == "maxpool":
        return lambda: convkit.max_pool2d(x, *args)
    if kind == "maxpool-idx":
        return lambda: convkit.max_pool2d(x, *args, return_indices=True)
    if kind == "avgpool":
        return lambda: convkit.avg_pool2d(x, *args)
    if kind == "maxpool-bwd":
        y, indices = convkit.max_pool2d(x, *args, return_indices=True)
        gy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
        return lambda: convkit.max_pool2d_backward(gy, indices, x.shape)
    gy = np.random.default_rng(1).standard_normal(convkit.avg_pool2d(x, *args).shape)
    gy = gy.astype(dtype)
    return lambda: convkit.avg_pool2d_backward(gy, x.shape, *args)


def shape_of(shapes, name):
    """The CONV_SHAPES entry ``name``, or the shape it spells (see the module docstring)."""
    if name in shapes:
        return shapes[name]
    match = _SPELLED.match(name)
    if match is None:
        raise SystemExit(f"unknown shape {name!r}: neither a CONV_SHAPES name nor "
                         "NxCxHxW-KxRxS[-sSTRIDE][-pPADDING][-gGROUPS]")
    sizes = [int(v) for v in match.groups()[:7]]
    options = dict(re.findall(r"-([spg])(\d+)", match.group(8)))
    shape_type = type(next(iter(shapes.values())))
    return shape_type(*sizes, stride=int(options.get("s", 1)), padding=int(options.get("p", 0)),
                      groups=int(options.get("g", 1)))


def make_call(convkit, shapes, name, op, method):
    """A no-argument callable running ``op`` of ``convkit`` on shape ``name`` (seed 0)."""
    if op.removesuffix("-f64") in POOL_OPS:
        return make_pool_call(convkit, _pool_shapes(convkit), name, op)
    dtype = np.float64 if op.endswith("-f64") else np.float32
    kind = op.split("-")[0]
    s = shape_of(shapes, name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((s.N, s.C, s.H, s.W)).astype(dtype)
    w = rng.standard_normal((s.K, s.C // s.groups, s.R, s.S)).astype(dtype)
    b = rng.standard_normal(s.K).astype(dtype)
    kw = dict(stride=s.stride, padding=s.padding, groups=s.groups, method=method)
    if kind == "fwd":
        return lambda: convkit.conv2d(x, w, b, **kw)
    gy = rng.standard_normal(convkit.conv2d(x, w, b, **kw).shape).astype(dtype)
    return lambda: convkit.conv2d_backward(gy, x, w, output_mask=OUTPUT_MASKS[kind], **kw)


def _pool_shapes(convkit):
    """POOL_SHAPES of ``convkit``'s bench module (the renamed copy's, with --interleave)."""
    return importlib.import_module(convkit.__name__ + ".bench").POOL_SHAPES


def child(shapes, op, method):
    """Subprocess mode: median ms of 11 calls per shape, as JSON on stdout."""
    import convkit
    from convkit.bench import CONV_SHAPES

    out = {}
    for name in shapes.split(","):
        call = make_call(convkit, CONV_SHAPES, name, op, method)
        call()
        times = []
        for _ in range(11):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        out[name] = float(np.median(times)) * 1e3
    print(json.dumps(out))


def separate_processes(args):
    trees = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    results = {side: [] for side in trees}
    for _ in range(args.reps or 3):
        for side, path in trees.items():
            run = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                                  args.shapes, args.op, args.methods[side]],
                                 cwd="/", env={**os.environ, "PYTHONPATH": path},
                                 capture_output=True, text=True, check=True)
            results[side].append(json.loads(run.stdout))
    for name in args.shapes.split(","):
        old = [r[name] for r in results["old"]]
        new = [r[name] for r in results["new"]]
        print(f"{args.op} {name:16s} old {min(old):8.3f}-{max(old):8.3f} ms  "
              f"new {min(new):8.3f}-{max(new):8.3f} ms  "
              f"median ratio {np.median(old) / np.median(new):.2f}x  "
              f"min ratio {min(old) / min(new):.2f}x")


def _load_renamed(checkout, package, folder):
    """Import checkout's built convkit/ as ``package`` (its imports rewritten)."""
    target = os.path.join(folder, package)
    shutil.copytree(os.path.join(checkout, "convkit"), target)
    for root, _, files in os.walk(target):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(root, file)
                with open(path) as f:
                    text = re.sub(r"\bconvkit\b(?=[.\s])", package, f.read())
                with open(path, "w") as f:
                    f.write(text)
    return importlib.import_module(package)


def _same_bits(a, b):
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return all((x is None and y is None) or np.array_equal(x, y) for x, y in zip(a, b))


def interleaved(args):
    folder = tempfile.mkdtemp(prefix="convkit-ab-")
    sys.path.insert(0, folder)
    try:
        old = _load_renamed(os.path.abspath(args.old), "convkit_old", folder)
        new = _load_renamed(os.path.abspath(args.new), "convkit_new", folder)
        shapes = importlib.import_module("convkit_new.bench").CONV_SHAPES
        for name in args.shapes.split(","):
            calls = {side: make_call(package, shapes, name, args.op, args.methods[side])
                     for side, package in (("old", old), ("new", new))}
            same = _same_bits(calls["old"](), calls["new"]())
            times = {"old": [], "new": []}
            for i in range(args.reps or 41):
                for side in ("old", "new") if i % 2 == 0 else ("new", "old"):
                    t = time.perf_counter()
                    calls[side]()
                    times[side].append(time.perf_counter() - t)
            pairs = [o / n for o, n in zip(times["old"], times["new"])]
            print(f"{args.op} {name:16s} old median {statistics.median(times['old']) * 1e3:8.3f}"
                  f" ms  new median {statistics.median(times['new']) * 1e3:8.3f} ms  "
                  f"old/new: median of pairs {statistics.median(pairs):.3f}x  "
                  f"fastest calls {min(times['old']) / min(times['new']):.3f}x  "
                  f"same bits {same}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main():
    if sys.argv[1:2] == ["--child"]:
        return child(*sys.argv[2:5])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("shapes")
    ops = ["fwd", "bwd", "gi", "gw", *POOL_OPS]
    parser.add_argument("op", choices=ops + [op + "-f64" for op in ops])
    parser.add_argument("--method", default="auto",
                        help="conv method of both sides, or OLD_METHOD,NEW_METHOD")
    parser.add_argument("--reps", type=int, default=None,
                        help="processes per side (default 3), or calls per side with "
                             "--interleave (default 41)")
    parser.add_argument("--interleave", action="store_true",
                        help="both checkouts in one process, calls alternating")
    args = parser.parse_args()
    methods = args.method.split(",")
    if len(methods) not in (1, 2):
        parser.error("--method takes METHOD or OLD_METHOD,NEW_METHOD")
    args.methods = dict(zip(("old", "new"), methods * (3 - len(methods))))
    (interleaved if args.interleave else separate_processes)(args)


if __name__ == "__main__":
    main()
