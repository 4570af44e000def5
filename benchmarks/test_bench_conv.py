"""conv2d forward and backward: convkit's methods, the NumPy reference and torch."""

import pytest

from convkit.bench import CONV_METHODS, CONV_SHAPES

IMPLEMENTATIONS = (*CONV_METHODS, "reference", "torch")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", list(CONV_SHAPES))
def test_conv2d(bench_op, shape, impl):
    bench_op("conv2d", shape, impl)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", list(CONV_SHAPES))
def test_conv2d_backward(bench_op, shape, impl):
    bench_op("conv2d_backward", shape, impl)
