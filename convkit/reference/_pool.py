"""Plain NumPy 2-D pooling: the oracle for tests and benchmarks.

Windows come from ``sliding_window_view`` over a padded copy; the only
Python loops run over kernel taps, never pixels. Divisors of average
pooling are counted here from masks, independently of the kernels' formula.
Same signatures as :mod:`convkit.functional`; never imports compiled code.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from convkit._validation import (
    check_avg_pool_backward,
    check_flag,
    check_max_pool_backward,
    check_float_array,
    check_ndim,
    pool_geometry,
)


def _padding_for_windows(g):
    """Padding that holds every window, ceil_mode ones running past the input too."""
    pads = []
    for axis, size in ((0, g.H), (1, g.W)):
        kernel, stride, dilation = (g.R, g.S)[axis], g.stride[axis], g.dilation[axis]
        count = (g.P, g.Q)[axis]
        before, after = g.padding[axis]
        needed = (count - 1) * stride + (kernel - 1) * dilation + 1
        pads.append((before, max(after, needed - before - size)))
    return pads


def _windows(padded, g):
    """View of a padded ``(N, C, H', W')`` array as ``(N, C, P, Q, R, S)`` windows."""
    (sh, sw), (dh, dw) = g.stride, g.dilation
    extent = ((g.R - 1) * dh + 1, (g.S - 1) * dw + 1)
    view = sliding_window_view(padded, extent, axis=(2, 3))
    return view[:, :, : (g.P - 1) * sh + 1 : sh, : (g.Q - 1) * sw + 1 : sw, ::dh, ::dw]


def _pad(array, g, value):
    return np.pad(array, ((0, 0), (0, 0), *_padding_for_windows(g)), constant_values=value)


def _input_mask(g, within_padding=False):
    """(1, 1, H', W') bool: the cells that are input (or padded input) cells."""
    pads = _padding_for_windows(g)
    mask = np.zeros((1, 1, g.H + sum(pads[0]), g.W + sum(pads[1])), dtype=bool)
    (top, bottom), (left, right) = g.padding if within_padding else ((0, 0), (0, 0))
    mask[:, :, pads[0][0] - top : pads[0][0] + g.H + bottom,
         pads[1][0] - left : pads[1][0] + g.W + right] = True
    return mask


def _taps_to_flat(taps, g):
    """Window tap numbers ``(N, C, P, Q)`` -> flat positions h * W + w in the plane."""
    (sh, sw), (dh, dw) = g.stride, g.dilation
    rows = np.arange(g.P)[:, None] * sh - g.padding[0][0] + (taps // g.S) * dh
    cols = np.arange(g.Q)[None, :] * sw - g.padding[1][0] + (taps % g.S) * dw
    return (rows * g.W + cols).astype(np.int64)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Reference max_pool2d: x (N, C, H, W) -> y (N, C, P, Q) [, int64 indices (N, C, P, Q)]."""
    x = check_float_array(x, "x")
    check_ndim(x, 4, "x", "(N, C, H, W)")
    g = pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    return_indices = check_flag(return_indices, "return_indices")
    shape = (g.N, g.C, g.P, g.Q, g.R * g.S)
    windows = _windows(_pad(x, g, -np.inf), g).reshape(shape)
    y = windows.max(axis=-1)
    if not return_indices:
        return np.ascontiguousarray(y)
    valid = _windows(_input_mask(g), g).reshape((1, 1, g.P, g.Q, g.R * g.S))
    nan_window = np.isnan(y)[..., None]
    winners = valid & np.where(nan_window, np.isnan(windows), windows == y[..., None])
    first = np.argmax(winners, axis=-1)
    last = g.R * g.S - 1 - np.argmax(winners[..., ::-1], axis=-1)
    taps = np.where(nan_window[..., 0], last, first)
    return np.ascontiguousarray(y), _taps_to_flat(taps, g)


def max_pool2d_backward(grad_output, indices, input_shape):
    """Reference gradient of max_pool2d: grad_output (N, C, P, Q) -> (N, C, H, W)."""
    grad_output, (N, C, H, W) = check_max_pool_backward(grad_output, indices, input_shape)
    if indices.size and (indices.min() < 0 or indices.max() >= H * W):
        raise ValueError(f"indices must lie in [0, H*W) = [0, {H * W}) for input_shape "
                         f"{(N, C, H, W)}, got values in [{indices.min()}, {indices.max()}]")
    plane_start = np.arange(N * C, dtype=np.int64).reshape(N, C, 1, 1) * (H * W)
    grad_input = np.zeros(N * C * H * W, dtype=grad_output.dtype)
    np.add.at(grad_input, (indices + plane_start).reshape(-1), grad_output.reshape(-1))
    return grad_input.reshape(N, C, H, W)


def _divisors(g, count_include_pad):
    """(P, Q) cells each window averages, counted on a mask of the input."""
    counted = _windows(_input_mask(g, within_padding=count_include_pad and not g.same), g)
    return counted.sum(axis=(-2, -1))[0, 0]


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True):
    """Reference avg_pool2d: x (N, C, H, W) -> y (N, C, P, Q)."""
    x = check_float_array(x, "x")
    check_ndim(x, 4, "x", "(N, C, H, W)")
    g = pool_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    divisor = _divisors(g, check_flag(count_include_pad, "count_include_pad"))
    sums = _windows(_pad(x, g, 0), g).sum(axis=(-2, -1))
    return np.ascontiguousarray(sums / divisor.astype(x.dtype), dtype=x.dtype)


def avg_pool2d_backward(grad_output, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True):
    """Reference gradient of avg_pool2d: grad_output (N, C, P, Q) -> (N, C, H, W)."""
    grad_output, g, count_include_pad = check_avg_pool_backward(
        grad_output, input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad)
    share = grad_output / _divisors(g, count_include_pad).astype(grad_output.dtype)
    pads = _padding_for_windows(g)
    padded = np.zeros((g.N, g.C, g.H + sum(pads[0]), g.W + sum(pads[1])),
                      dtype=grad_output.dtype)
    sh, sw = g.stride
    for r in range(g.R):
        for s in range(g.S):
            padded[:, :, r : r + (g.P - 1) * sh + 1 : sh, s : s + (g.Q - 1) * sw + 1 : sw] += share
    top, left = pads[0][0], pads[1][0]
    return np.ascontiguousarray(padded[:, :, top : top + g.H, left : left + g.W])
