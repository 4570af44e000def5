"""Parity of convkit's and the reference's pooling with PyTorch: values, indices, gradients."""

import itertools

import numpy as np
import pytest

import convkit
from convkit import reference
from _helpers import assert_close

torch = pytest.importorskip("torch", exc_type=ImportError)
F = torch.nn.functional

DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
MODULES = [pytest.param(convkit, id="convkit"), pytest.param(reference, id="reference")]

# The grid (kernel 2/3/non-square, stride 1/2/3, padding 0/1,
# dilation 1/2, ceil_mode) on inputs whose sizes trigger the last-window
# rule: H = 7 with kernel 2 stride 2 gets a partial ceil_mode window, and
# with padding 1 the would-be last window starts in the trailing padding.
GRID = [dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=c)
        for k, s, p, d, c in itertools.product([2, 3, (2, 3)], [1, 2, 3], [0, 1], [1, 2],
                                               [False, True])]
GRID_IDS = [f"k{c['kernel_size']}-s{c['stride']}-p{c['padding']}-d{c['dilation']}"
            f"{'-ceil' if c['ceil_mode'] else ''}".replace(" ", "") for c in GRID]
SHAPES = [(2, 3, 7, 10), (1, 2, 5, 6)]
AVG_GRID = [(case_id, kwargs) for case_id, kwargs in zip(GRID_IDS, GRID)
            if kwargs["dilation"] == 1]
# Shapes the small grid misses: fast 2x2, global, kernels wider than the output,
# a kernel overhanging the input in ceil_mode, overlapping windows.
EXTRA = {
    "2x2_fast": ((2, 3, 9, 8), dict(kernel_size=2)),
    "global_7x7": ((2, 4, 7, 7), dict(kernel_size=7)),
    "global_nonsquare": ((2, 3, 13, 40), dict(kernel_size=(13, 40))),
    "wide_kernel": ((2, 3, 9, 12), dict(kernel_size=(3, 9), stride=3, padding=(1, 2))),
    "ceil_overhang": ((1, 2, 2, 5), dict(kernel_size=3, stride=2, ceil_mode=True)),
    "k3_s2_p1_ceil": ((2, 3, 12, 11), dict(kernel_size=3, stride=2, padding=1,
                                            ceil_mode=True)),
}


def _values(shape, dtype, special, seed=0):
    rng = np.random.default_rng(seed)
    if not special:
        return rng.standard_normal(shape).astype(dtype)
    x = rng.integers(-2, 3, size=shape).astype(dtype)
    u = rng.random(shape)
    x[u < 0.06] = np.nan
    x[(u >= 0.06) & (u < 0.14)] = -np.inf
    return x


def _torch_max(x, grad_output, kwargs):
    """torch's (y, indices, grad_input) for max_pool2d."""
    kwargs = dict(kwargs)
    stride = kwargs.pop("stride", None)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    y, indices = F.max_pool2d(xt, kwargs.pop("kernel_size"), stride, return_indices=True,
                              **kwargs)
    y.backward(torch.from_numpy(grad_output))
    return y.detach().numpy(), indices.numpy(), xt.grad.numpy()


def _torch_avg(x, grad_output, kwargs):
    kwargs = dict(kwargs)
    stride = kwargs.pop("stride", None)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    y = F.avg_pool2d(xt, kwargs.pop("kernel_size"), stride, **kwargs)
    y.backward(torch.from_numpy(grad_output))
    return y.detach().numpy(), xt.grad.numpy()


def _check_max(module, shape, kwargs, dtype, special):
    x = _values(shape, dtype, special)
    y, indices = module.max_pool2d(x, **kwargs, return_indices=True)
    grad_output = _values(y.shape, dtype, False, seed=1)
    y_torch, indices_torch, grad_torch = _torch_max(x, grad_output, kwargs)
    np.testing.assert_array_equal(y, y_torch)
    np.testing.assert_array_equal(indices, indices_torch)
    assert_close(module.max_pool2d_backward(grad_output, indices, shape), grad_torch,
                 kind="grad")


def _check_avg(module, shape, kwargs, dtype):
    x = _values(shape, dtype, False)
    y = module.avg_pool2d(x, **kwargs)
    grad_output = _values(y.shape, dtype, False, seed=1)
    y_torch, grad_torch = _torch_avg(x, grad_output, kwargs)
    assert_close(y, y_torch)
    assert_close(module.avg_pool2d_backward(grad_output, shape, **kwargs), grad_torch,
                 kind="grad")


@pytest.mark.parametrize("special", [False, True], ids=["normal", "nan_inf_ties"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=["7x10", "5x6"])
@pytest.mark.parametrize("kwargs", GRID, ids=GRID_IDS)
def test_max_pool2d_matches_torch(kwargs, shape, dtype, special):
    _check_max(convkit, shape, kwargs, dtype, special)


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["include_pad", "exclude_pad"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=["7x10", "5x6"])
@pytest.mark.parametrize("kwargs", [k for _, k in AVG_GRID], ids=[i for i, _ in AVG_GRID])
def test_avg_pool2d_matches_torch(kwargs, shape, dtype, count_include_pad):
    kwargs = {k: v for k, v in kwargs.items() if k != "dilation"}
    _check_avg(convkit, shape, dict(kwargs, count_include_pad=count_include_pad), dtype)


# The reference on the grid in float64 with NaN, -inf and ties (max) and both
# divisors (avg); the kernels meet it on every variant in test_pooling.py.
@pytest.mark.parametrize("kwargs", GRID, ids=GRID_IDS)
def test_reference_max_pool2d_matches_torch(kwargs):
    _check_max(reference, SHAPES[0], kwargs, np.float64, special=True)


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["include_pad", "exclude_pad"])
@pytest.mark.parametrize("kwargs", [k for _, k in AVG_GRID], ids=[i for i, _ in AVG_GRID])
def test_reference_avg_pool2d_matches_torch(kwargs, count_include_pad):
    kwargs = {k: v for k, v in kwargs.items() if k != "dilation"}
    _check_avg(reference, SHAPES[0], dict(kwargs, count_include_pad=count_include_pad),
               np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(EXTRA))
@pytest.mark.parametrize("module", MODULES)
def test_extra_geometries_match_torch(module, case, dtype):
    shape, kwargs = EXTRA[case]
    _check_max(module, shape, kwargs, dtype, special=True)
    for count_include_pad in (True, False):
        _check_avg(module, shape, dict(kwargs, count_include_pad=count_include_pad), dtype)


def test_torch_refuses_what_convkit_refuses():
    """Padding over half the kernel: both refuse (torch with RuntimeError)."""
    x = np.zeros((1, 1, 6, 6))
    for kwargs in (dict(kernel_size=2, padding=2), dict(kernel_size=1, padding=1),
                   dict(kernel_size=3, padding=2, dilation=2)):
        with pytest.raises(RuntimeError):
            F.max_pool2d(torch.from_numpy(x), **kwargs)
        with pytest.raises(ValueError, match="padding"):
            convkit.max_pool2d(x, **kwargs)
