"""Refuse, before allocating anything, calls whose arrays cannot exist.

Kernels index with 64-bit integers and trust their sizes; a geometry whose
output or workspace overflows int64, or needs more bytes than the machine
has, must be stopped here with a clear error rather than reach them (where
it would wrap around, or be allocated lazily by the OS and crash on first
touch).
"""

import functools
import math
import os

INT64_MAX = (1 << 63) - 1


@functools.lru_cache(maxsize=1)
def physical_memory():
    """Bytes of physical memory of the machine (None where the OS does not say).

    Asked once: two sysconf calls took a microsecond of every small conv2d.
    """
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_sizes(op, itemsize, buffers, extents):
    """Raise unless every buffer of ``op`` can be indexed and all fit in memory together.

    Parameters
    ----------
    op : name of the public function, for the message
    itemsize : bytes per element of every buffer
    buffers : dict name -> shape of each array the call allocates
        (outputs and workspaces)
    extents : dict name -> int of each size the kernels do index arithmetic
        with beside the buffer shapes (padded input sizes, strides, dilations)

    Raises
    ------
    ValueError
        when an extent or a buffer's size in bytes exceeds the int64 range.
    MemoryError
        when the buffers together need more bytes than the machine's memory.
    """
    for name, value in extents.items():
        if value > INT64_MAX:
            raise ValueError(f"{op}: {name} = {value} overflows 64-bit indexing "
                             f"(the limit is {INT64_MAX})")
    total = 0
    for name, shape in buffers.items():
        nbytes = math.prod(shape) * itemsize
        if nbytes > INT64_MAX:
            raise ValueError(f"{op}: {name} of shape {tuple(shape)} would need {nbytes} "
                             f"bytes, which overflows 64-bit indexing")
        total += nbytes
    memory = physical_memory()
    if memory is not None and total > memory:
        listing = ", ".join(f"{name} {tuple(shape)}" for name, shape in buffers.items())
        raise MemoryError(f"{op} would need {total / (1 << 30):.3g} GiB for {listing}, more "
                          f"than the {memory / (1 << 30):.3g} GiB of memory of this machine")


def conv_extents(g):
    """Index-arithmetic sizes of a :class:`~convkit._validation.ConvGeometry`."""
    return {
        "height + padding": g.H + sum(g.padding[0]),
        "width + padding": g.W + sum(g.padding[1]),
        "stride": max(g.stride),
        "dilation": max(g.dilation),
    }
