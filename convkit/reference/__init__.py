"""Plain NumPy implementations of every convkit op, with the same signatures.

The oracle that tests and benchmarks compare the compiled kernels against.
It imports no compiled code.
"""

from convkit.reference._conv import col2im, conv2d, conv2d_backward, im2col

__all__ = ["conv2d", "conv2d_backward", "im2col", "col2im"]
