"""Plain NumPy 2-D convolution: the oracle for tests and benchmarks.

Short and vectorised: windows come from ``sliding_window_view``, products
from ``einsum``; the only Python loops run over kernel taps, never pixels.
Same signatures as :mod:`convkit.functional`; never imports compiled code.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from convkit._validation import (
    check_bias,
    check_conv_arrays,
    check_float_array,
    check_grad_output,
    check_method,
    check_ndim,
    check_output_mask,
    check_shape,
    conv_geometry,
    output_size,
    positive_pair,
    resolve_padding,
)


def _windows(x, kernel, stride, pads, dilation, out_hw):
    """View of padded ``x`` as ``(N, C, P, Q, R, S)`` windows."""
    (R, S), (sh, sw), (dh, dw), (P, Q) = kernel, stride, dilation, out_hw
    padded = np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))
    extent = ((R - 1) * dh + 1, (S - 1) * dw + 1)
    view = sliding_window_view(padded, extent, axis=(2, 3))
    return view[:, :, : (P - 1) * sh + 1 : sh, : (Q - 1) * sw + 1 : sw, ::dh, ::dw]


def _col2im_windows(cols6, input_shape, stride, pads, dilation):
    """Adjoint of ``_windows``: add ``(N, C, P, Q, R, S)`` back into ``(N, C, H, W)``."""
    N, C, H, W = input_shape
    _, _, P, Q, R, S = cols6.shape
    (sh, sw), (dh, dw) = stride, dilation
    padded = np.zeros((N, C, H + sum(pads[0]), W + sum(pads[1])), dtype=cols6.dtype)
    for r in range(R):
        for s in range(S):
            rows = slice(r * dh, r * dh + (P - 1) * sh + 1, sh)
            columns = slice(s * dw, s * dw + (Q - 1) * sw + 1, sw)
            padded[:, :, rows, columns] += cols6[:, :, :, :, r, s]
    return padded[:, :, pads[0][0] : pads[0][0] + H, pads[1][0] : pads[1][0] + W]


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, method="auto"):
    """Reference conv2d: x (N, C, H, W), weight (K, C // groups, R, S) -> (N, K, P, Q)."""
    check_method(method)
    x, weight, bias = check_conv_arrays(x, weight, bias)
    g = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    check_bias(bias, g)
    G, Cg, Kg = g.groups, g.C_per_group, g.K_per_group
    win = _windows(x, (g.R, g.S), g.stride, g.padding, g.dilation, (g.P, g.Q))
    win = win.reshape(g.N, G, Cg, g.P, g.Q, g.R, g.S)
    w = weight.reshape(G, Kg, Cg, g.R, g.S)
    y = np.einsum("ngcpqrs,gkcrs->ngkpq", win, w, optimize=True)
    y = np.ascontiguousarray(y.reshape(g.N, g.K, g.P, g.Q), dtype=x.dtype)
    if bias is not None:
        y += bias[:, None, None]
    return y


def conv2d_backward(grad_output, x, weight, stride=1, padding=0, dilation=1, groups=1, *,
                    method="auto", output_mask=(True, True, True)):
    """Reference gradients of conv2d: ``(grad_input, grad_weight, grad_bias)``."""
    check_method(method)
    mask = check_output_mask(output_mask)
    x, weight, _ = check_conv_arrays(x, weight)
    g = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    grad_output = check_grad_output(grad_output, g, x)
    G, Cg, Kg = g.groups, g.C_per_group, g.K_per_group
    gy = grad_output.reshape(g.N, G, Kg, g.P, g.Q)
    w = weight.reshape(G, Kg, Cg, g.R, g.S)
    grad_input = grad_weight = grad_bias = None
    if mask[0]:
        cols = np.einsum("ngkpq,gkcrs->ngcpqrs", gy, w, optimize=True)
        cols = cols.reshape(g.N, g.C, g.P, g.Q, g.R, g.S)
        grad_input = np.ascontiguousarray(
            _col2im_windows(cols, g.input_shape, g.stride, g.padding, g.dilation))
    if mask[1]:
        win = _windows(x, (g.R, g.S), g.stride, g.padding, g.dilation, (g.P, g.Q))
        win = win.reshape(g.N, G, Cg, g.P, g.Q, g.R, g.S)
        grad_weight = np.einsum("ngkpq,ngcpqrs->gkcrs", gy, win, optimize=True)
        grad_weight = np.ascontiguousarray(grad_weight.reshape(g.weight_shape), dtype=x.dtype)
    if mask[2]:
        grad_bias = grad_output.sum(axis=(0, 2, 3), dtype=x.dtype)
    return grad_input, grad_weight, grad_bias


def _unfold_geometry(input_shape, kernel_size, stride, padding, dilation):
    N, C, H, W = input_shape
    kernel = positive_pair(kernel_size, "kernel_size")
    stride = positive_pair(stride, "stride")
    dilation = positive_pair(dilation, "dilation")
    pads = resolve_padding(padding, (H, W), kernel, stride, dilation)
    P = output_size(H, kernel[0], stride[0], *pads[0], dilation[0])
    Q = output_size(W, kernel[1], stride[1], *pads[1], dilation[1])
    if P < 1 or Q < 1:
        raise ValueError(f"kernel_size {kernel} with dilation {dilation} is larger than the "
                         f"padded input of shape {tuple(input_shape)} with padding {pads}")
    return kernel, stride, pads, dilation, (P, Q)


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """Reference im2col: x (N, C, H, W) -> (N, C*R*S, P*Q), rows ordered (c, r, s)."""
    x = check_float_array(x, "x")
    check_ndim(x, 4, "x", "(N, C, H, W)")
    kernel, stride, pads, dilation, (P, Q) = _unfold_geometry(
        x.shape, kernel_size, stride, padding, dilation)
    win = _windows(x, kernel, stride, pads, dilation, (P, Q))
    N, C = x.shape[:2]
    return np.ascontiguousarray(win.transpose(0, 1, 4, 5, 2, 3)).reshape(
        N, C * kernel[0] * kernel[1], P * Q)


def col2im(cols, input_shape, kernel_size, stride=1, padding=0, dilation=1):
    """Reference col2im, the adjoint of im2col: (N, C*R*S, P*Q) -> (N, C, H, W)."""
    cols = check_float_array(cols, "cols")
    input_shape = check_shape(input_shape, 4, "input_shape", "(N, C, H, W)")
    kernel, stride, pads, dilation, (P, Q) = _unfold_geometry(
        input_shape, kernel_size, stride, padding, dilation)
    N, C = input_shape[:2]
    expected = (N, C * kernel[0] * kernel[1], P * Q)
    if cols.shape != expected:
        raise ValueError(f"cols must have shape {expected} for input_shape {input_shape} "
                         f"and kernel_size {kernel}, got {cols.shape}")
    cols6 = cols.reshape(N, C, kernel[0], kernel[1], P, Q).transpose(0, 1, 4, 5, 2, 3)
    return np.ascontiguousarray(_col2im_windows(cols6, input_shape, stride, pads, dilation))
