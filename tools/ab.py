"""A/B timing of two built checkouts of convkit, run alternately on a noisy machine.

    python tools/ab.py OLD_CHECKOUT NEW_CHECKOUT SHAPES OP [--method M] [--reps N]

SHAPES is a comma-separated list of convkit.bench.CONV_SHAPES names, OP one of
fwd, bwd (float32) or fwd-f64, bwd-f64. Each rep runs every shape in a fresh
process per checkout (PYTHONPATH), old then new, and takes the median of 11
calls; the report gives each side's range over the reps and the ratios
old/new of the medians and of the minimums. Both checkouts must be built in
place (python setup.py build_ext --inplace).
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

CHILD = r"""
import json, sys, time
import numpy as np
import convkit
from convkit.bench import CONV_SHAPES
names, op, method = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
dtype = np.float64 if op.endswith("f64") else np.float32
rng = np.random.default_rng(0)
out = {}
for name in names:
    s = CONV_SHAPES[name]
    x = rng.standard_normal((s.N, s.C, s.H, s.W)).astype(dtype)
    w = rng.standard_normal((s.K, s.C // s.groups, s.R, s.S)).astype(dtype)
    b = rng.standard_normal(s.K).astype(dtype)
    kw = dict(stride=s.stride, padding=s.padding, groups=s.groups, method=method)
    gy = rng.standard_normal(convkit.conv2d(x, w, b, **kw).shape).astype(dtype)
    if op.startswith("fwd"):
        call = lambda: convkit.conv2d(x, w, b, **kw)
    else:
        call = lambda: convkit.conv2d_backward(gy, x, w, **kw)
    call()
    times = []
    for _ in range(11):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    out[name] = float(np.median(times)) * 1e3
print(json.dumps(out))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("shapes")
    parser.add_argument("op", choices=["fwd", "bwd", "fwd-f64", "bwd-f64"])
    parser.add_argument("--method", default="auto")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    trees = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    results = {side: [] for side in trees}
    for _ in range(args.reps):
        for side, path in trees.items():
            run = subprocess.run([sys.executable, "-c", CHILD, args.shapes, args.op, args.method],
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


if __name__ == "__main__":
    main()
