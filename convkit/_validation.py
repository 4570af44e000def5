"""Argument checks, padding normalisation and output sizes for every op.

All shape arithmetic of convkit lives here, so that conv2d, the pooling ops,
their gradients and the NumPy reference agree on what an output size is.
Nothing here imports compiled code.
"""

import functools
import numbers
from dataclasses import dataclass

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _pair(value, name):
    """Return ``value`` as a tuple of two Python ints (int or length-2 sequence)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, numbers.Integral):
        return (int(value), int(value))
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(items) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in items
    ):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return (int(items[0]), int(items[1]))


def positive_pair(value, name):
    """``_pair`` that also requires both entries to be >= 1."""
    pair = _pair(value, name)
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair


def effective_kernel(kernel, dilation):
    """Extent of a dilated kernel: dilation * (kernel - 1) + 1."""
    return dilation * (kernel - 1) + 1


def same_padding(size, kernel, stride, dilation):
    """Keras/TensorFlow "same": output ceil(size / stride), extra pad at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + effective_kernel(kernel, dilation) - size, 0)
    return (total // 2, total - total // 2)


def resolve_padding(padding, input_hw, kernel_hw, stride, dilation, name="padding"):
    """Normalise ``padding`` to ``((top, bottom), (left, right))``.

    Accepts an int, a pair ``(ph, pw)``, a pair of pairs
    ``((top, bottom), (left, right))``, ``"valid"`` or ``"same"``.
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0), (0, 0))
        if mode == "same":
            return tuple(same_padding(input_hw[i], kernel_hw[i], stride[i], dilation[i])
                         for i in range(2))
        raise ValueError(f"{name} must be an int, a pair, a pair of pairs, 'valid' or "
                         f"'same', got {padding!r}")
    if isinstance(padding, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, a pair or a string, got {padding!r}")
    if isinstance(padding, numbers.Integral):
        pads = ((int(padding),) * 2, (int(padding),) * 2)
    else:
        try:
            items = tuple(padding)
        except TypeError:
            raise TypeError(f"{name} must be an int, a pair or a string, got {padding!r}") from None
        if len(items) != 2:
            raise ValueError(f"{name} must have 2 entries (height, width), got {padding!r}")
        if all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
               for v in items):
            pads = ((int(items[0]),) * 2, (int(items[1]),) * 2)
        else:
            pads = tuple(_pair(v, name) for v in items)
    if min(pads[0] + pads[1]) < 0:
        raise ValueError(f"{name} must be non-negative, got {padding!r}")
    return pads


def output_size(size, kernel, stride, pad_before, pad_after, dilation=1, ceil_mode=False):
    """Number of windows along one axis, by PyTorch's rule.

    With ``ceil_mode`` the division rounds up (so a kernel overhanging the
    padded input by less than a stride still gives one window), but a last
    window must start inside the input or the leading padding, never wholly
    in the trailing padding.
    """
    span = size + pad_before + pad_after - effective_kernel(kernel, dilation)
    if ceil_mode:
        span += stride - 1
    if span < 0:
        return 0
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad_before:
        out -= 1
    return out


def check_float_array(array, name):
    """Return ``array`` as an ndarray of float32 or float64, else raise TypeError."""
    if not isinstance(array, np.ndarray):
        array = np.asarray(array)
    if array.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype "
                        f"{array.dtype} with shape {array.shape}")
    return array


def check_ndim(array, ndim, name, layout):
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {array.shape}")


def check_same_dtype(array, reference, name, reference_name):
    if array.dtype != reference.dtype:
        raise TypeError(f"{name} {array.shape} has dtype {array.dtype} but {reference_name} "
                        f"{reference.shape} has dtype {reference.dtype}; convert one of them "
                        f"(convkit never mixes precisions silently)")


def contiguous(array):
    """C-contiguous version of ``array``; a copy only when needed."""
    return np.ascontiguousarray(array)


@dataclass(frozen=True)
class ConvGeometry:
    """Every size a 2-D convolution needs, checked once."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    P: int
    Q: int
    groups: int
    stride: tuple
    dilation: tuple
    padding: tuple  # ((top, bottom), (left, right))

    @property
    def C_per_group(self):
        return self.C // self.groups

    @property
    def K_per_group(self):
        return self.K // self.groups

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def output_shape(self):
        return (self.N, self.K, self.P, self.Q)

    @property
    def weight_shape(self):
        return (self.K, self.C // self.groups, self.R, self.S)

    @property
    def is_pointwise(self):
        """1x1, stride 1, unpadded: the convolution is a plain matrix product."""
        return (self.R == 1 and self.S == 1 and self.stride == (1, 1)
                and self.padding == ((0, 0), (0, 0)))

    @property
    def flops(self):
        """Multiply-adds times two of the forward pass."""
        return 2 * self.N * self.K * self.P * self.Q * self.C_per_group * self.R * self.S


def _is_plain(value):
    """Whether ``value`` is a str, an int, or tuples of them, of exactly those types.

    Such arguments can key a cache: no bool (True == 1 and hashes alike, but
    is refused), no float or NumPy scalar, nothing mutable.
    """
    kind = type(value)
    if kind is int or kind is str:
        return True
    return kind is tuple and all(_is_plain(v) for v in value)


def conv_geometry(x_shape, weight_shape, stride, padding, dilation, groups,
                  x_name="x", weight_name="weight"):
    """Check conv2d's arguments against each other and return the geometry.

    ``x_shape`` is ``(N, C, H, W)``, ``weight_shape`` is ``(K, C // groups, R, S)``.
    The geometry of plain arguments (see _is_plain) is cached: working it out
    took 7 us, a quarter of a small conv2d's time in Python. Arguments that
    raise are checked again at every call (an exception is never cached).
    """
    args = (x_shape, weight_shape, stride, padding, dilation, groups, x_name, weight_name)
    if _is_plain(args):
        return _cached_geometry(*args)
    return _conv_geometry(*args)


def _conv_geometry(x_shape, weight_shape, stride, padding, dilation, groups, x_name,
                   weight_name):
    if len(x_shape) != 4:
        raise ValueError(f"{x_name} must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    if len(weight_shape) != 4:
        raise ValueError(f"{weight_name} must be 4-D (K, C // groups, R, S), got shape "
                         f"{tuple(weight_shape)}")
    N, C, H, W = (int(v) for v in x_shape)
    K, C_per_group, R, S = (int(v) for v in weight_shape)
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"groups must be positive, got {groups}")
    if C % groups or K % groups:
        raise ValueError(f"groups={groups} must divide both the input channels C={C} of "
                         f"{x_name} {tuple(x_shape)} and the output channels K={K} of "
                         f"{weight_name} {tuple(weight_shape)}")
    if C_per_group != C // groups:
        raise ValueError(f"{weight_name} {tuple(weight_shape)} expects "
                         f"{C_per_group * groups} input channels with groups={groups}, but "
                         f"{x_name} {tuple(x_shape)} has C={C}")
    if min(K, R, S) < 1 or min(C, H, W) < 1:
        raise ValueError(f"{x_name} {tuple(x_shape)} and {weight_name} "
                         f"{tuple(weight_shape)} must have non-empty C, H, W, K, R, S")
    stride = positive_pair(stride, "stride")
    dilation = positive_pair(dilation, "dilation")
    pads = resolve_padding(padding, (H, W), (R, S), stride, dilation)
    P = output_size(H, R, stride[0], *pads[0], dilation[0])
    Q = output_size(W, S, stride[1], *pads[1], dilation[1])
    if P < 1 or Q < 1:
        raise ValueError(
            f"kernel {R}x{S} (dilation {dilation}, extent "
            f"{effective_kernel(R, dilation[0])}x{effective_kernel(S, dilation[1])}) is "
            f"larger than the padded input {H + sum(pads[0])}x{W + sum(pads[1])} of "
            f"{x_name} {tuple(x_shape)} with padding {pads}")
    return ConvGeometry(N, C, H, W, K, R, S, P, Q, groups, stride, dilation, pads)


_cached_geometry = functools.lru_cache(maxsize=256)(_conv_geometry)


def check_conv_arrays(x, weight, bias=None):
    """dtype and ndim checks shared by conv2d and its reference."""
    x = check_float_array(x, "x")
    weight = check_float_array(weight, "weight")
    check_same_dtype(weight, x, "weight", "x")
    if bias is not None:
        bias = check_float_array(bias, "bias")
        check_same_dtype(bias, x, "bias", "x")
    return x, weight, bias


def check_bias(bias, geometry):
    if bias is not None and bias.shape != (geometry.K,):
        raise ValueError(f"bias must have shape (K,) = ({geometry.K},) to match weight "
                         f"{geometry.weight_shape}, got {bias.shape}")


def check_grad_output(grad_output, geometry, x):
    grad_output = check_float_array(grad_output, "grad_output")
    check_same_dtype(grad_output, x, "grad_output", "x")
    if grad_output.shape != geometry.output_shape:
        raise ValueError(f"grad_output must have the output shape {geometry.output_shape} "
                         f"of x {geometry.input_shape} convolved with weight "
                         f"{geometry.weight_shape}, got {grad_output.shape}")
    return grad_output


def check_output_mask(output_mask):
    if isinstance(output_mask, (str, bytes)):
        raise TypeError(f"output_mask must be three booleans, got {output_mask!r}")
    try:
        mask = tuple(output_mask)
    except TypeError:
        raise TypeError(f"output_mask must be three booleans, got {output_mask!r}") from None
    if len(mask) != 3:
        raise ValueError(f"output_mask must be three booleans (grad_input, grad_weight, "
                         f"grad_bias), got {output_mask!r}")
    if not all(isinstance(m, (bool, np.bool_, numbers.Integral)) for m in mask):
        raise TypeError(f"output_mask must be three booleans, got {output_mask!r}")
    return tuple(bool(m) for m in mask)


def check_method(method):
    if not isinstance(method, str) or method not in ("auto", "direct", "im2col"):
        raise ValueError(f"method must be 'auto', 'direct' or 'im2col', got {method!r}")
    return method


@dataclass(frozen=True)
class PoolGeometry:
    """Every size a 2-D pooling op needs, checked once."""

    N: int
    C: int
    H: int
    W: int
    R: int
    S: int
    P: int
    Q: int
    stride: tuple
    dilation: tuple
    padding: tuple  # ((top, bottom), (left, right))
    same: bool  # padding was "same": padded cells never count (Keras)

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def output_shape(self):
        return (self.N, self.C, self.P, self.Q)


def check_flag(value, name):
    """Return ``value`` as a bool; only bools are accepted (not 0/1 or None)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def check_shape(shape, ndim, name, layout):
    """Return ``shape`` as a tuple of ``ndim`` non-negative Python ints."""
    try:
        items = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be a tuple {layout}, got {shape!r}") from None
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
               for v in items):
        raise TypeError(f"{name} must be a tuple of ints {layout}, got {shape!r}")
    if len(items) != ndim:
        raise ValueError(f"{name} must have {ndim} entries {layout}, got {shape!r}")
    items = tuple(int(v) for v in items)
    if min(items) < 0:
        raise ValueError(f"{name} must not have negative entries, got {items}")
    return items


def _window_without_input(size, kernel, stride, pad_before, dilation, count):
    """First window along one axis whose taps all fall in the padding, or None.

    Windows starting at or after 0 start inside the input (the padding and
    output-size rules see to that). One starting in the leading padding
    first reaches 0 or beyond at ``start mod dilation``, within its kernel
    extent; that cell can lie past the input only when the dilation exceeds
    the input size. Python ints throughout: huge strides cannot overflow.
    """
    if dilation <= size:
        return None
    for window in range(min(count, -(-pad_before // stride))):
        if (window * stride - pad_before) % dilation >= size:
            return window
    return None


def pool_geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode, x_name="x"):
    """Check a pooling op's arguments and return its geometry.

    ``x_shape`` is ``(N, C, H, W)``; ``stride=None`` means ``kernel_size``.
    PyTorch's rules: an explicit padding is at most half the kernel size on
    every side, and every output size is at least 1. ``"same"`` and
    ``"valid"`` follow Keras (see :func:`resolve_padding`). As for
    conv_geometry, the geometry of plain arguments is cached (ceil_mode a
    bool, stride None or plain): working it out took 9 us of a small
    max_pool2d's 20 us in Python.
    """
    args = (x_shape, kernel_size, stride, padding, dilation, ceil_mode, x_name)
    if (type(ceil_mode) is bool and (stride is None or _is_plain(stride))
            and _is_plain((x_shape, kernel_size, padding, dilation, x_name))):
        return _cached_pool_geometry(*args)
    return _pool_geometry(*args)


def _pool_geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode, x_name):
    if len(x_shape) != 4:
        raise ValueError(f"{x_name} must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    N, C, H, W = (int(v) for v in x_shape)
    if H < 1 or W < 1:
        raise ValueError(f"{x_name} must have non-empty H and W, got shape {tuple(x_shape)}")
    kernel = positive_pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else positive_pair(stride, "stride")
    dilation = positive_pair(dilation, "dilation")
    ceil_mode = check_flag(ceil_mode, "ceil_mode")
    pads = resolve_padding(padding, (H, W), kernel, stride, dilation)
    same = isinstance(padding, str) and padding.lower() == "same"
    if not isinstance(padding, str):
        for axis, side in ((0, "top"), (0, "bottom"), (1, "left"), (1, "right")):
            pad = pads[axis][0 if side in ("top", "left") else 1]
            if pad > kernel[axis] // 2:
                raise ValueError(f"padding must be at most half of kernel_size {kernel} on "
                                 f"every side, got {side} padding {pad} (padding={padding!r})")
    P = output_size(H, kernel[0], stride[0], *pads[0], dilation[0], ceil_mode)
    Q = output_size(W, kernel[1], stride[1], *pads[1], dilation[1], ceil_mode)
    if P < 1 or Q < 1:
        raise ValueError(
            f"kernel_size {kernel} (dilation {dilation}, extent "
            f"{effective_kernel(kernel[0], dilation[0])}x{effective_kernel(kernel[1], dilation[1])})"
            f" is larger than the padded input {H + sum(pads[0])}x{W + sum(pads[1])} of "
            f"{x_name} {tuple(x_shape)} with padding {pads}: the output would be {P}x{Q}")
    for axis, size, count in ((0, H, P), (1, W, Q)):
        empty = _window_without_input(size, kernel[axis], stride[axis], pads[axis][0],
                                      dilation[axis], count)
        if empty is not None:
            raise ValueError(
                f"window {empty} along {'H' if axis == 0 else 'W'} of {x_name} "
                f"{tuple(x_shape)} has all its taps in the padding {pads[axis]} (kernel_size "
                f"{kernel}, stride {stride}, dilation {dilation}); it would have no input "
                f"to pool")
    return PoolGeometry(N, C, H, W, kernel[0], kernel[1], P, Q, stride, dilation, pads, same)


_cached_pool_geometry = functools.lru_cache(maxsize=256)(_pool_geometry)


def pool_window_counts(g, count_include_pad):
    """Divisors of average pooling as a row factor (P,) and a column factor (Q,).

    A window's divisor is the product of its row and column counts: cells
    inside the padded input when ``count_include_pad`` (PyTorch: a ceil_mode
    window that runs past the padding is cut at its end), else cells inside
    the input. ``"same"`` padding always counts input cells only.
    """
    include = count_include_pad and not g.same
    factors = []
    for axis, size, count in ((0, g.H, g.P), (1, g.W, g.Q)):
        kernel, stride = (g.R, g.S)[axis], g.stride[axis]
        before, after = g.padding[axis]
        start = np.arange(count, dtype=np.int64) * stride - before
        end = np.minimum(start + kernel, size + after)
        if not include:
            start, end = np.maximum(start, 0), np.minimum(end, size)
        factors.append(end - start)
    return factors[0], factors[1]


def check_max_pool_backward(grad_output, indices, input_shape):
    """Check max_pool2d_backward's arguments; return (grad_output, (N, C, H, W)).

    ``indices`` must be the int64 array of grad_output's shape that
    max_pool2d returned; the range of its values is checked by the caller.
    """
    grad_output = check_float_array(grad_output, "grad_output")
    check_ndim(grad_output, 4, "grad_output", "(N, C, P, Q)")
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be an int64 array, got {type(indices).__name__}")
    if indices.dtype != np.int64:
        raise TypeError(f"indices must have dtype int64 (as max_pool2d returns them), got "
                        f"{indices.dtype} with shape {indices.shape}")
    if indices.shape != grad_output.shape:
        raise ValueError(f"indices must have the shape of grad_output {grad_output.shape}, "
                         f"got {indices.shape}")
    N, C, H, W = check_shape(input_shape, 4, "input_shape", "(N, C, H, W)")
    if (N, C) != grad_output.shape[:2]:
        raise ValueError(f"input_shape {(N, C, H, W)} and grad_output {grad_output.shape} "
                         f"must agree on N and C")
    if H < 1 or W < 1:
        raise ValueError(f"input_shape must have non-empty H and W, got {(N, C, H, W)}")
    return grad_output, (N, C, H, W)


def check_avg_pool_backward(grad_output, input_shape, kernel_size, stride, padding,
                            ceil_mode, count_include_pad):
    """Check avg_pool2d_backward's arguments; return (grad_output, geometry, count_include_pad)."""
    grad_output = check_float_array(grad_output, "grad_output")
    check_ndim(grad_output, 4, "grad_output", "(N, C, P, Q)")
    input_shape = check_shape(input_shape, 4, "input_shape", "(N, C, H, W)")
    g = pool_geometry(input_shape, kernel_size, stride, padding, 1, ceil_mode,
                      x_name="input_shape")
    count_include_pad = check_flag(count_include_pad, "count_include_pad")
    if grad_output.shape != g.output_shape:
        raise ValueError(f"grad_output must have the shape {g.output_shape} that avg_pool2d "
                         f"gives for input_shape {input_shape}, got {grad_output.shape}")
    return grad_output, g, count_include_pad


def positive_int(value, name):
    """``value`` as a Python int >= 1, else TypeError/ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)

