"""convkit against PyTorch, op by op: forward, grad_input, grad_weight, backward.

    python tools/vs_torch.py SHAPES [--reps N] [--dtype float32|float64]

SHAPES is a comma-separated list of convkit.bench.CONV_SHAPES names or shapes
spelled as tools/ab.py takes them (64x32x13x13-64x3x3). For each op the two
libraries' calls alternate, N each (default 31), on 2 threads (PyTorch's
set_num_threads, convkit's default), and the line gives both medians and
PyTorch's over convkit's (> 1: convkit is faster). The benchmark report
times the backward whole; this splits it, to see which half a gap is in.
PyTorch's grad_input and grad_weight alone are aten.convolution_backward
with one output asked for; its backward asks for all three, as convkit's.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ab  # noqa: E402  (tools/ab.py: shape names and spelled shapes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes")
    parser.add_argument("--reps", type=int, default=31)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    import torch

    import convkit
    from convkit.bench import CONV_SHAPES

    torch.set_num_threads(2)
    dtype = np.dtype(args.dtype)
    for name in args.shapes.split(","):
        s = ab.shape_of(CONV_SHAPES, name)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((s.N, s.C, s.H, s.W)).astype(dtype)
        w = rng.standard_normal((s.K, s.C // s.groups, s.R, s.S)).astype(dtype)
        kw = dict(stride=s.stride, padding=s.padding, groups=s.groups)
        gy = rng.standard_normal(convkit.conv2d(x, w, **kw).shape).astype(dtype)
        tx, tw, tgy = map(torch.from_numpy, (x, w, gy))
        args_t = ([s.stride] * 2, [s.padding] * 2, [1, 1], False, [0, 0], s.groups)

        def ck(mask):
            return lambda: convkit.conv2d_backward(gy, x, w, output_mask=mask, **kw)

        def th(mask, bias=None):
            return lambda: torch.ops.aten.convolution_backward(tgy, tx, tw, bias, *args_t, mask)

        ops = {
            "fwd": (lambda: convkit.conv2d(x, w, **kw),
                    lambda: torch.nn.functional.conv2d(tx, tw, None, **kw)),
            "gi": (ck((True, False, False)), th([True, False, False])),
            "gw": (ck((False, True, False)), th([False, True, False])),
            "bwd": (ck((True, True, True)), th([True, True, True], [s.K])),
        }
        cells = []
        for op, (a, b) in ops.items():
            a(), b(), a(), b()
            times = ([], [])
            for i in range(args.reps):
                for side, f in enumerate((a, b) if i % 2 == 0 else (b, a)):
                    t = time.perf_counter()
                    f()
                    times[side if i % 2 == 0 else 1 - side].append(time.perf_counter() - t)
            ms = [statistics.median(t) * 1e3 for t in times]
            cells.append(f"{op}: convkit {ms[0]:.3f} torch {ms[1]:.3f} ms ({ms[1] / ms[0]:.2f}x)")
        print(f"{name}  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
