"""Plain NumPy implementations of every convkit op, with the same signatures.

The oracle that tests and benchmarks compare the compiled kernels against.
It imports no compiled code.
"""

from convkit.reference._conv import col2im, conv2d, conv2d_backward, im2col
from convkit.reference._pool import (
    avg_pool2d,
    avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
)

__all__ = [
    "conv2d",
    "conv2d_backward",
    "im2col",
    "col2im",
    "max_pool2d",
    "max_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
]
