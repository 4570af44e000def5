"""Scratch buffers for the direct kernels, kept between calls, one set per thread.

The direct kernels' temporaries (packed weights, packed input, per-thread
scratch, partial sums) have the same sizes call after call. Allocated fresh,
a buffer larger than the C allocator's mmap threshold comes back as new
pages each call, and the first touch of every 4 KiB page then costs a page
fault: about 1500 of them per resnet-3x3-c256 backward, 10-15% of its time.
Kept here, they are reused instead.

Buffers never escape: every array a public function returns is allocated
on its own. Each calling thread has its own buffers (kernels of concurrent
callers never share one), each buffer is kept only up to
:data:`MAX_CACHED_BYTES`, and :func:`clear_scratch_cache` releases them.
"""

import math
import threading

import numpy as np

# Largest buffer kept between calls, in bytes; larger ones are allocated per call.
MAX_CACHED_BYTES = 32 << 20
_local = threading.local()


def scratch(slot, shape, dtype, zero=False, zero_key=None):
    """An array of ``shape`` and ``dtype`` in this thread's buffer named ``slot``.

    Its contents are arbitrary unless ``zero``. Arrays from the same slot
    share memory: a caller may hold only one per slot at a time.

    ``zero_key`` (with ``zero``) spares the fill when the slot's last call
    passed the same key, shape and dtype: callers with a key promise to
    write only positions that every call with that key writes before it
    reads them (the direct forward's packed planes, whose padding stays
    zero), so everything else is still zero. Filling took 0.9% of
    resnet-3x3's forward CPU samples (1.7 MB on the calling thread while
    the others wait). Any other call on the slot forgets the key.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    buffers = _local.__dict__.setdefault("buffers", {})
    keys = _local.__dict__.setdefault("zero_keys", {})
    raw = buffers.get(slot)
    key = (zero_key, tuple(shape), dtype) if zero and zero_key is not None else None
    if raw is None or raw.size < nbytes:
        buffers.pop(slot, None)
        keys.pop(slot, None)
        raw = np.empty(max(nbytes, 1), dtype=np.uint8)
        if nbytes <= MAX_CACHED_BYTES:
            buffers[slot] = raw
    array = raw[:nbytes].view(dtype).reshape(shape)
    if zero and (key is None or keys.get(slot) != key):
        array.fill(0)
    if slot in buffers:
        keys[slot] = key
    return array


def cached_bytes():
    """Bytes of scratch this thread keeps between calls."""
    return sum(raw.size for raw in _local.__dict__.get("buffers", {}).values())


def clear_scratch_cache():
    """Release the scratch buffers the calling thread keeps between convkit calls."""
    _local.__dict__.get("buffers", {}).clear()
    _local.__dict__.get("zero_keys", {}).clear()
