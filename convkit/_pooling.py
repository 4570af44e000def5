"""Public pooling ops: validate -> coerce -> allocate -> run a compiled kernel.

PyTorch's semantics (``torch.nn.functional.max_pool2d`` / ``avg_pool2d`` and
their gradients), plus Keras' ``"same"`` and ``"valid"`` paddings. Every
function takes and returns NumPy arrays, never modifies its inputs and never
returns a view of them.
"""

import functools

import numpy as np

from convkit import _limits, _threads
from convkit._lib import _pool
from convkit._validation import (
    check_avg_pool_backward,
    check_flag,
    check_max_pool_backward,
    check_float_array,
    check_ndim,
    contiguous,
    pool_geometry,
    pool_window_counts,
)


def _check_sizes(op, g, itemsize, buffers):
    _limits.check_sizes(op, itemsize, buffers, _limits.conv_extents(g))


def _max_kernel_args(g):
    (sh, sw), (dh, dw) = g.stride, g.dilation
    return g.R, g.S, sh, sw, g.padding[0][0], g.padding[1][0], dh, dw


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """2-D max pooling with the semantics of PyTorch's ``max_pool2d``.

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64
    kernel_size : int or (int, int)
    stride : int, (int, int) or None (the default: ``kernel_size``)
    padding : int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same"
        Padded cells never win. Explicit padding is at most half the kernel
        size; "same" follows Keras (output ceil(H / stride)).
    dilation : int or (int, int)
        A dilated window whose taps all fall in the padding raises ValueError
        (PyTorch returns -inf there, with an index outside the plane).
    ceil_mode : bool
        Round output sizes up; a last window must start inside the input or
        the leading padding.
    return_indices : bool
        Also return where each maximum was taken.

    Returns
    -------
    y : array (N, C, P, Q) of x's dtype; NaN where a window holds a NaN.
    indices : int64 array (N, C, P, Q), only with ``return_indices``
        Flat position ``h * W + w`` of the maximum within its (H, W) plane:
        the first maximum in row-major window order, or the last NaN.
    """
    x = check_float_array(x, "x")
    check_ndim(x, 4, "x", "(N, C, H, W)")
    g = pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    return_indices = check_flag(return_indices, "return_indices")
    buffers = {"y": g.output_shape}
    if return_indices:
        buffers["indices"] = g.output_shape
    _check_sizes("max_pool2d", g, 8 if return_indices else x.itemsize, buffers)
    y = np.empty(g.output_shape, dtype=x.dtype)
    indices = np.empty(g.output_shape, dtype=np.int64) if return_indices else None
    if y.size:
        n_threads = _threads.threads_for(y.size * g.R * g.S)
        scratch_bytes = _pool.max_scratch_bytes(g.R, g.S, g.Q, g.W, g.stride[1],
                                                g.padding[1][0], g.dilation[1], x.itemsize)
        scratch = np.empty((n_threads, scratch_bytes), dtype=np.uint8)
        _pool.max_forward(contiguous(x), y, indices, scratch, *_max_kernel_args(g),
                          n_threads)
    return (y, indices) if return_indices else y


def max_pool2d_backward(grad_output, indices, input_shape):
    """Gradient of :func:`max_pool2d` with respect to its input.

    Parameters
    ----------
    grad_output : array (N, C, P, Q), float32 or float64
    indices : int64 array (N, C, P, Q), as returned by ``max_pool2d(...,
        return_indices=True)``; every entry in [0, H*W)
    input_shape : (N, C, H, W), the shape of the forward input

    Returns
    -------
    grad_input : array (N, C, H, W) of grad_output's dtype: each output's
        gradient added to the cell its index names (overlapping windows add up).
    """
    grad_output, (N, C, H, W) = check_max_pool_backward(grad_output, indices, input_shape)
    _limits.check_sizes("max_pool2d_backward", grad_output.itemsize,
                        {"grad_input": (N, C, H, W)}, {})
    grad_input = np.empty((N, C, H, W), dtype=grad_output.dtype)
    if grad_input.size == 0:
        return grad_input
    if grad_output.size == 0:
        grad_input.fill(0)
        return grad_input
    P, Q = grad_output.shape[2:]
    bad = _pool.max_backward(contiguous(grad_output).reshape(N * C, P * Q),
                             contiguous(indices).reshape(N * C, P * Q),
                             grad_input.reshape(N * C, H * W), H, W, P, Q,
                             _threads.threads_for(grad_output.size + grad_input.size))
    if bad:
        flat = indices.reshape(-1)
        first = int(np.flatnonzero((flat < 0) | (flat >= H * W))[0])
        where = np.unravel_index(first, indices.shape)
        raise ValueError(f"indices must lie in [0, H*W) = [0, {H * W}) for input_shape "
                         f"{(N, C, H, W)}; {bad} do not, e.g. indices"
                         f"{tuple(int(i) for i in where)} = {int(flat[first])}")
    return grad_input


@functools.lru_cache(maxsize=256)
def _avg_divisors(g, count_include_pad, dtype):
    """The divisor factors (row (P,), column (Q,)) of pool_window_counts as ``dtype``.

    Cached, read-only: working them out took half of a small avg_pool2d's
    time in Python.
    """
    factors = tuple(f.astype(dtype) for f in pool_window_counts(g, count_include_pad))
    for f in factors:
        f.flags.writeable = False
    return factors


def _avg_kernel_args(g, count_include_pad, dtype):
    """Sizes and the divisor factors (row (P,), column (Q,)) the avg kernels take."""
    return (*_avg_divisors(g, count_include_pad, np.dtype(dtype)),
            g.R, g.S, g.stride[0], g.stride[1], g.padding[0][0], g.padding[1][0])


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True):
    """2-D average pooling with the semantics of PyTorch's ``avg_pool2d``.

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64
    kernel_size : int or (int, int); equal to (H, W) for global average pooling
    stride : int, (int, int) or None (the default: ``kernel_size``)
    padding : int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same"
        Explicit padding is at most half the kernel size. "same" follows
        Keras: only input cells are averaged, whatever count_include_pad says.
    ceil_mode : bool
        Round output sizes up (a last window must start inside the input or
        the leading padding).
    count_include_pad : bool
        Divide by the window's cells inside the padded input (a ceil_mode
        window running past the padding is cut there), else by its cells
        inside the input.

    Returns
    -------
    y : array (N, C, P, Q) of x's dtype.
    """
    x = check_float_array(x, "x")
    check_ndim(x, 4, "x", "(N, C, H, W)")
    g = pool_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    count_include_pad = check_flag(count_include_pad, "count_include_pad")
    _check_sizes("avg_pool2d", g, x.itemsize, {"y": g.output_shape})
    y = np.empty(g.output_shape, dtype=x.dtype)
    if y.size:
        _pool.avg_forward(contiguous(x), y, *_avg_kernel_args(g, count_include_pad, x.dtype),
                          _threads.threads_for(y.size * g.R * g.S))
    return y


def avg_pool2d_backward(grad_output, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True):
    """Gradient of :func:`avg_pool2d` with respect to its input.

    Parameters
    ----------
    grad_output : array (N, C, P, Q), float32 or float64
    input_shape : (N, C, H, W), the shape of the forward input
    kernel_size, stride, padding, ceil_mode, count_include_pad : as in :func:`avg_pool2d`

    Returns
    -------
    grad_input : array (N, C, H, W) of grad_output's dtype: each output's
        gradient divided by its window's divisor and added to the window's
        input cells.
    """
    grad_output, g, count_include_pad = check_avg_pool_backward(
        grad_output, input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad)
    _check_sizes("avg_pool2d_backward", g, grad_output.itemsize,
                 {"grad_input": g.input_shape})
    grad_input = np.empty(g.input_shape, dtype=grad_output.dtype)
    if grad_input.size:
        n_threads = _threads.threads_for(grad_output.size * g.R * g.S)
        scratch = np.empty((n_threads, g.Q + g.W), dtype=grad_output.dtype)
        _pool.avg_backward(contiguous(grad_output), grad_input, scratch,
                           *_avg_kernel_args(g, count_include_pad, grad_output.dtype),
                           n_threads)
    return grad_input


__all__ = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward"]
