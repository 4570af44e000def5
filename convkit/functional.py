"""Public ops: validate -> coerce -> allocate -> run a compiled kernel.

Every function takes and returns NumPy arrays, never modifies its inputs and
never returns a view of them. Inputs of any memory layout are accepted and
copied to C order only when needed.
"""

import contextlib
import functools
import math

import numpy as np

from convkit import _limits, _threads
from convkit._scratch import scratch as _scratch
from convkit._lib import _conv
from convkit._pooling import avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward
from convkit._validation import (
    ConvGeometry,
    check_bias,
    check_conv_arrays,
    check_float_array,
    check_grad_output,
    check_method,
    check_ndim,
    check_output_mask,
    check_shape,
    contiguous,
    conv_geometry,
    positive_pair,
)

_MiB = 1 << 20
# Convolutions with at most this many input channels per group pack their
# input per task, into cache, rather than all at once.
_LOCAL_PACK_CHANNELS = 4
# Their tasks run whole (image, group)s, packing once for every block of
# output channels, when that makes at least this many tasks per thread.
_NARROW_TASKS_PER_THREAD = 4
# Bytes of input and grad_output planes the depthwise grad_weight packs at a
# time per thread (its sums run over that many images at once).
_DEPTHWISE_SCRATCH = 256 * 1024
# Output positions per run of the depthwise grad_weight's row kernel, and
# the mask columns past a run its widest vector (16 float32 lanes) may read.
_DEPTHWISE_RUN = 512
_MASK_SLACK = 16
# The channel-vector grad_weight splits the images when its channel and
# column blocks make fewer tasks than this (a property of the shape only).
_GW_MIN_TASKS = 8
# It pads a copy of x at stride 1 where over this share of output positions
# read the padding (see _pad_for_grad_weight).
_GW_EDGE_SHARE = 0.2
# Its wide variant runs output rows of at most this many columns (see
# _use_wide_grad_weight).
_GW_WIDE_MAX_COLUMNS = 8
# grad_input runs as weights x grad_output then col2im where the gather
# form would do at least this many times the real multiply-adds (or would
# fill under one block of output channels), and an image's columns take at
# most _SCATTER_COLUMNS_BYTES.
_SCATTER_MIN_WASTE = 1.5
_SCATTER_COLUMNS_BYTES = 512 * 1024
# ... and at strides above 1, up to this many (see _use_scatter_grad_input).
_SCATTER_STRIDED_BYTES = 2 * _MiB
# grad_input by rows: the scatter form's time per real multiply-add over
# its own (mnist-conv2: 1.13x), and the margin it must win by (see
# _use_rows_grad_input).
_SCATTER_COST = 1.15
_ROWS_MARGIN = 1.05
# Most bytes of column-shifted planes (see _shifted_layout) one forward task
# packs into its thread's scratch.
_SHIFTED_SCRATCH = 256 * 1024
# Bytes of one packed grid position across a pass's channels and phase planes
# (see _grid_channel_pass): 256, or one pass on Zen 4 (_direct.h).
_GRID_PASS_BYTES = _conv.grid_pass_bytes()
# Bytes of per-image grad_weight products the im2col path holds at once.
_PRODUCTS_BYTES = 32 * _MiB
_workspace_limit = 256 * _MiB
# Fields of a row of the channel-vector forward's plan (_channel_vector_plan).
_PLAN_FIELDS = 7
# The plan the grid kernels are given (they take none).
_NO_PLAN = (np.zeros(1, dtype=np.int64), np.zeros((1, _PLAN_FIELDS), dtype=np.int64))


def set_workspace_limit(nbytes):
    """Cap, in bytes, on the im2col buffers one conv call allocates (default 256 MiB).

    The im2col method works in tiles of images (or of output rows when one
    image is larger than the cap) so that its buffers stay under the cap.
    """
    global _workspace_limit
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)):
        raise TypeError(f"nbytes must be an int, got {nbytes!r}")
    if nbytes < 1:
        raise ValueError(f"nbytes must be positive, got {nbytes}")
    _workspace_limit = int(nbytes)


def get_workspace_limit():
    """The im2col workspace cap in bytes."""
    return _workspace_limit


@contextlib.contextmanager
def workspace_limit(nbytes):
    """Context manager that sets the im2col workspace cap inside the block."""
    previous = get_workspace_limit()
    set_workspace_limit(nbytes)
    try:
        yield
    finally:
        set_workspace_limit(previous)


def _choose_method(g, op, itemsize):
    """The "auto" rule (see _measured_method), kept off BLAS where BLAS's threads can't be held.

    Without threadpoolctl convkit cannot hold BLAS to one thread, and
    OpenBLAS's sgemm can then give different bits for different thread
    counts (see _threads.gemm_pool), so "auto" takes the direct kernels.
    """
    method = _measured_method(g, op, itemsize)
    if method == "im2col" and not _threads.can_limit_blas():
        return "direct"
    return method


def _measured_method(g, op, itemsize):
    """The "auto" rule: direct or im2col for ``op`` in forward/grad_input/grad_weight.

    Measured on the benchmark shapes with 1 and 2 threads (README, "Choosing
    a method"); the rule depends on the shape, the dtype, the CPU's kernel
    variant and BLAS's, never on the thread count, so results stay bitwise
    identical across thread counts. 1x1 convolutions run direct throughout
    where BLAS's vectors are narrower than the kernels'
    (_blas_narrower_than_kernels). Elsewhere they are one GEMM with no im2col
    at all, forward and grad_input alike (a 1x1 grad_input is weights^T x
    grad_output, image by image), except for grad_weight with AVX-512
    kernels where the channel-vector kernel applies: it reads x in place and
    sums all images in one pass where the GEMMs go image by image.
    (conv2d_backward runs that OpenMP kernel before the GEMMs.) With AVX2
    kernels and OpenBLAS's Haswell GEMMs (a 2-core Zen 3 EPYC) the GEMMs
    were as fast as that kernel on resnet-1x1 (0.96x-1.10x) and 1.10x-1.27x
    as fast on six larger 1x1 shapes, float32 and float64 alike (0.9x on
    8x2048x7x7 -> 512 and 64x32x12x12 -> 64). Every other forward runs direct:
    its kernels scale with threads where im2col's copy does not. So does every grad_input: one stride-1
    convolution per stride phase, or weights x grad_output then col2im
    (see _use_scatter_grad_input). grad_weight runs direct wherever the
    channel-vector kernel applies (K/G at least half its channel block)
    and, for single-channel inputs (C/G == 1), wherever the depthwise row
    kernel does (up to 3x3 taps at stride 1); otherwise direct only on
    multi-channel inputs with P*Q >= 1024 at stride 1, else im2col.
    """
    if g.is_pointwise:
        if _blas_narrower_than_kernels():
            return "direct"
        if (op == "grad_weight" and _conv.kernel_isa() == "avx512f"
                and _use_channel_vector_grad_weight(g, itemsize)):
            return "direct"
        return "im2col"
    if op != "grad_weight" or g.K_per_group < 8:
        return "direct"
    if _use_channel_vector_grad_weight(g, itemsize) or _use_depthwise_rows(g):
        return "direct"
    if g.C_per_group == 1:
        return "im2col"
    return "direct" if g.P * g.Q >= 1024 and g.stride == (1, 1) else "im2col"


# OpenBLAS core names (threadpoolctl's "architecture") whose GEMM kernels use
# AVX-512.
_AVX512_OPENBLAS_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})


@functools.lru_cache(maxsize=1)
def _blas_narrower_than_kernels():
    """Whether NumPy's BLAS runs narrower vectors than convkit's direct kernels.

    True where the direct kernels are AVX-512 and NumPy's OpenBLAS runs a
    core without AVX-512 (it names an AVX2 core, such as Haswell, for CPUs it
    does not know). Then every 1x1 convolution runs direct: on a 2-core Zen 5
    EPYC whose OpenBLAS 0.3.31 ran its Haswell kernels, the direct forward,
    grad_input and grad_weight were 1.0x-3.1x as fast as the GEMMs on six
    1x1 shapes, float32 and float64 (README, "Choosing a method"). Where
    BLAS's vectors are as wide (an AVX-512 OpenBLAS core, MKL, an unknown
    library), the measured GEMM rule stands.
    """
    if _conv.kernel_isa() != "avx512f":
        return False
    libraries = _threads.blas_info()
    return bool(libraries) and all(
        lib.get("internal_api") == "openblas"
        and str(lib.get("architecture", "")).lower() not in _AVX512_OPENBLAS_CORES
        and lib.get("architecture") is not None
        for lib in libraries)


def _use_channel_vector_grad_weight(g, itemsize):
    """Whether K/G fills at least half the channel-vector grad_weight kernel's block."""
    return 2 * g.K_per_group >= _conv.grad_weight_channel_block(itemsize)


def _use_depthwise_rows(g):
    """Whether a single-channel grad_weight takes the depthwise row kernel.

    With C/G == 1 it is a depthwise grad_weight with K/G channels per
    group. The row kernel (read in place, 3x3 tap blocks) beats the
    channel-vector kernel there for up to 3x3 taps at stride 1: those few
    columns fill under a block of the latter, which also transposes
    grad_output for every block of channels.
    """
    return (g.C_per_group == 1 and g.R * g.S <= 9 and g.stride == (1, 1)
            and g.dilation == (1, 1))


def _gemm_threads(g, n_threads):
    """Threads the im2col path's GEMMs run on, one BLAS call per thread at a time.

    BLAS itself is held to one thread (see _matmul): each GEMM is
    then the same call, with the same bits, whatever the thread count. Small
    problems stay on one thread, where threads cost more than they save.
    """
    return _threads.threads_for(g.flops // 2, n_threads, _threads.BLAS_MIN_WORK_PER_THREAD)


def _matmul(a, b, out, n_threads):
    """``np.matmul(a, b, out=out)`` with the leading axis of ``b`` and ``out`` split across threads.

    ``a`` has that axis too, or is broadcast against it. Each matrix of the
    batch is one single-threaded BLAS call whatever the split: run from
    the kernels' OpenMP threads where _threads.blas_gemm found NumPy's
    BLAS, else by NumPy (one BLAS call per matrix) in _threads.gemm_pool's
    Python threads.
    """
    gemm = _threads.blas_gemm()
    layouts = _gemm_layouts(a, b, out) if gemm is not None else None
    if layouts is not None:
        if a.ndim == 3:
            a = np.broadcast_to(a, out.shape[:1] + a.shape)
        _conv.gemm_batch(gemm[out.dtype], a, b, out, *layouts, n_threads)
        return out
    n = out.shape[0]
    parts = min(n, n_threads)
    if parts <= 1:
        return np.matmul(a, b, out=out)
    bounds = [n * i // parts for i in range(parts + 1)]
    split = a.ndim == b.ndim

    def run(i):
        lo, hi = bounds[i], bounds[i + 1]
        np.matmul(a[lo:hi] if split else a, b[lo:hi], out=out[lo:hi])

    # The calling thread runs the first part itself.
    futures = [_threads.gemm_pool(parts - 1).submit(run, i) for i in range(1, parts)]
    run(0)
    for future in futures:
        future.result()
    return out


def _blas_layout(array):
    """(transposed, leading dimension) of each matrix of ``array`` as a BLAS operand, or None."""
    rows, cols = array.shape[-2:]
    row_stride, col_stride = (st // array.itemsize for st in array.strides[-2:])
    if cols == 1:
        col_stride = 1
    if rows == 1:
        row_stride = max(cols, 1)
    if col_stride == 1 and row_stride >= max(cols, 1):
        return False, row_stride
    if row_stride == 1 and col_stride >= max(rows, 1):
        return True, col_stride
    return None


def _gemm_layouts(a, b, out):
    """gemm_batch's (a_trans, lda, b_trans, ldb, ldc) for ``a @ b`` into ``out``, or None.

    None where an operand is no BLAS matrix as it lies (then np.matmul
    copies it), where a dimension is empty, or where ``out``'s rows are not
    contiguous.
    """
    if (out.ndim != 4 or b.ndim != 4 or a.ndim not in (3, 4)
            or out.dtype not in (np.float32, np.float64)
            or a.dtype != out.dtype or b.dtype != out.dtype or 0 in out.shape
            or a.shape[-1] == 0 or b.shape[:-2] != out.shape[:-2]
            or a.shape[-3] != out.shape[-3] or a.shape[-2] != out.shape[-2]
            or a.shape[-1] != b.shape[-2] or b.shape[-1] != out.shape[-1]
            or any(st % out.itemsize for st in a.strides + b.strides + out.strides)):
        return None
    a_layout, b_layout = _blas_layout(a), _blas_layout(b)
    out_layout = _blas_layout(out)
    if a_layout is None or b_layout is None or out_layout is None or out_layout[0]:
        return None
    return a_layout + b_layout + (out_layout[1],)


def _all_finite(array):
    """No inf or NaN in the C-contiguous ``array`` (one threaded pass, no temporary)."""
    n_threads = _threads.threads_for(array.size, None, _threads.SCAN_MIN_WORK_PER_THREAD)
    return _conv.all_finite(array.reshape(-1), n_threads)


def _kernel_args(g):
    (sh, sw), (dh, dw) = g.stride, g.dilation
    return sh, sw, g.padding[0][0], g.padding[1][0], dh, dw


def _tiles(g, itemsize, per_row_extra=0):
    """Yield ``(n0, n1, p0, p1)`` tiles whose im2col buffers fit the workspace cap.

    ``per_row_extra`` is extra bytes per image output row a caller needs
    beside the column matrix (a temporary output row tile).
    """
    row_bytes = (g.C * g.R * g.S * g.Q) * itemsize + per_row_extra
    image_bytes = row_bytes * g.P
    limit = get_workspace_limit()
    if image_bytes <= limit:
        images = max(1, min(g.N, limit // max(image_bytes, 1)))
        for n0 in range(0, g.N, images):
            yield n0, min(n0 + images, g.N), 0, g.P
    else:
        rows = max(1, limit // max(row_bytes, 1))
        for n0 in range(g.N):
            for p0 in range(0, g.P, rows):
                yield n0, n0 + 1, p0, min(p0 + rows, g.P)


def _check_sizes(op, g, itemsize, outputs, im2col_workspace=False):
    """Refuse up front a geometry whose outputs or im2col workspace cannot exist."""
    buffers = dict(outputs)
    if im2col_workspace and not g.is_pointwise and g.N:
        n0, n1, p0, p1 = next(_tiles(g, itemsize))
        buffers["im2col workspace"] = (n1 - n0, g.C * g.R * g.S, (p1 - p0) * g.Q)
    _limits.check_sizes(op, itemsize, buffers, _limits.conv_extents(g))


def _read_only(array):
    array.setflags(write=False)
    return array


@functools.lru_cache(maxsize=256)
def _phase_layout(g):
    """Stride-phase planes of the direct kernels (see convkit/_lib/_direct.h).

    Returns (Hph, Wph, plane_len, tap_offsets): each input channel becomes
    sh*sw planes of Hph x Wph (+ slack) elements, and tap (r, s) of the
    kernel reads its plane at a fixed offset from output grid position
    p*Wph + q.
    """
    (sh, sw), (dh, dw) = g.stride, g.dilation
    Hph = g.P + ((g.R - 1) * dh) // sh
    Wph = g.Q + ((g.S - 1) * dw) // sw
    plane_len = (Hph + 1) * Wph + _conv.PLANE_SLACK
    r_phase, r_shift = np.divmod(np.arange(g.R) * dh, sh)[::-1]
    s_phase, s_shift = np.divmod(np.arange(g.S) * dw, sw)[::-1]
    offsets = ((r_phase[:, None] * sw + s_phase[None, :]) * plane_len
               + r_shift[:, None] * Wph + s_shift[None, :])
    return Hph, Wph, plane_len, _read_only(np.ascontiguousarray(offsets.reshape(-1),
                                                                dtype=np.int64))


@functools.lru_cache(maxsize=256)
def _shifted_layout(g):
    """Column-shifted planes: the exact-position alternative to _phase_layout.

    Returns (Hph, Q, plane_len, tap_offsets): each input channel becomes S*sh
    planes of Hph x Q (+ slack) elements, plane (s, a) holding
    padded_x[i*sh + a, q*sw + s*dw]. Tap (r, s) reads its plane at a fixed
    offset from output position p*Q + q, so the kernels compute exactly the
    P*Q outputs, in the output's own order, and no grid column is wasted;
    the price is S/sw times the packed elements of the phase layout.
    """
    (sh, sw), (dh, dw) = g.stride, g.dilation
    Hph = g.P + ((g.R - 1) * dh) // sh
    plane_len = (Hph + 1) * g.Q + _conv.PLANE_SLACK
    r_shift, r_phase = np.divmod(np.arange(g.R) * dh, sh)
    offsets = ((np.arange(g.S)[None, :] * sh + r_phase[:, None]) * plane_len
               + r_shift[:, None] * g.Q)
    return Hph, g.Q, plane_len, _read_only(np.ascontiguousarray(offsets.reshape(-1),
                                                                dtype=np.int64))


@functools.lru_cache(maxsize=256)
def _shared_padding_layout(g):
    """_phase_layout at stride 1 with the column padding shared between rows.

    Returns (Hph, Wph, plane_len, tap_offsets, origin), or None where it
    saves nothing. A plane's rows hold the input's rows from column 0,
    followed by z = max(left, right padding) zeros, and start z elements
    into the plane, after zeros: a tap reading left of a row reads the
    zeros ending the row before it (or those before the first row), one
    reading right of it the zeros ending its own. The grid is then W + z
    columns wide where _phase_layout's is W + left + right, which the grid
    kernels compute in vain past the Q output columns (resnet-3x3: 57
    against 58, 1.7% of the work).
    """
    (pt, pb), (pl, pr) = g.padding
    z = max(pl, pr)
    if g.stride != (1, 1) or min(pl, pr) <= 0 or min(pt, pb) < 0 or g.W + z < g.Q:
        return None
    (dh, dw) = g.dilation
    Hph = _phase_layout(g)[0]  # the same rows
    Wph = g.W + z
    plane_len = z + (Hph + 1) * Wph + _conv.PLANE_SLACK
    offsets = (z + np.arange(g.R)[:, None] * dh * Wph + np.arange(g.S)[None, :] * dw - pl)
    return Hph, Wph, plane_len, _read_only(np.ascontiguousarray(offsets.reshape(-1),
                                                                dtype=np.int64)), z


def _use_shifted_layout(g, itemsize, y, outputs):
    """Whether the forward packs column-shifted planes (see _shifted_layout).

    They spare the grid's wasted columns and the copy of every output from
    the grid, at the price of packing S/sw times the elements. That pays
    where the ``outputs`` one packing serves outnumber the extra packed
    elements, and a task's packed channels stay within _SHIFTED_SCRATCH
    bytes. Only a C-contiguous output is written straight from registers.
    """
    Hph, Wph, _, _ = _phase_layout(g)
    if Wph == g.Q or not y.flags.c_contiguous:
        return False
    sh, sw = g.stride
    shifted_rows = g.P + ((g.R - 1) * g.dilation[0]) // sh + 1
    packed = g.C_per_group * g.S * sh * shifted_rows * g.Q
    extra = packed - g.C_per_group * sh * sw * (Hph + 1) * Wph
    return packed * itemsize <= _SHIFTED_SCRATCH and outputs >= extra


def _is_own_layout(g):
    """Whether the input, as it is, is its own phase layout (stride 1, no padding).

    Its single phase plane is then the H x W image itself (Hph = H, Wph = W),
    and kernels that read only real output positions (the channel-vector
    ones) can use it without packing; the tap offsets are _phase_layout's.
    """
    return g.stride == (1, 1) and g.padding == ((0, 0), (0, 0))


def _pack_input(x, g, layout, n_threads, origin=0):
    """(N, C, sh*sw, plane_len) stride-phase planes of the zero-padded input.

    With an ``origin`` (_shared_padding_layout) the planes hold the input's
    rows from column 0, ``origin`` elements into each plane.
    """
    Hph, Wph, plane_len, _ = layout
    (sh, sw) = g.stride
    packed = _scratch("input", (g.N, g.C, sh * sw, plane_len), x.dtype)
    _conv.pack_phases(x, packed, sh, sw, g.padding[0][0], 0 if origin else g.padding[1][0],
                      Hph, Wph, n_threads, origin)
    return packed


def _pack_weight(weight, g, kb, n_threads):
    """(G, blocks, C/G, R*S, kb) weights: kb output channels side by side.

    ``weight`` is (K, C/G, R, S) or a (G, K/G, C/G, R, S) view of any strides
    (grad_input passes its flipped, tap-sliced weights that way). Lanes past
    K/G in the last block are zero. A kernel packs them, a tile per (group,
    block, run of input channels): NumPy's strided copy took 0.50 ms for
    256x256x3x3 weights in blocks of 64 on a 2-core Zen 4 EPYC, 5% of that
    forward.
    """
    G, Kg, Cg, R, S = g.groups, g.K_per_group, g.C_per_group, g.R, g.S
    w = weight if weight.ndim == 5 else weight.reshape(G, Kg, Cg, R, S)
    packed = _scratch("weights", (G, -(-Kg // kb), Cg, R * S, kb), weight.dtype)
    _conv.pack_weights(w, packed, _threads.threads_for(packed.size, n_threads,
                                                       _threads.PACK_MIN_WORK_PER_THREAD))
    return packed


def _channel_vector(g, itemsize, Wph):
    """Whether the channel-vector kernel beats the grid kernel for ``g``.

    It wastes no grid column but stores transposed, which pays where the
    grid wastes a sizeable share of every row (1/8 of it: 14x14 maps with
    padding 1) and C/G*R*S is large. The AVX2 grid kernel with 3x3 taps
    at stride 1 (float32), unrolled, takes maps wasting less than 1/6: on a
    Zen 3 EPYC, alternated call by call, it ran the forward of
    resnet-3x3-c256 1.12x-1.13x as fast as the channel-vector kernel (its
    grad_input 1.05x), 8x512x14x14 -> 512 1.16x and 32x64x14x14 -> 64 1.20x,
    where 7x7 maps (8x512 -> 512) kept the channel-vector kernel (the grid
    0.82x), as did stride 2 (8x256x14x14 -> 256, 0.77x) and float64 (c256
    0.98x).
    """
    block = _conv.channel_vector_block(itemsize)
    waste = 8
    if (_conv.kernel_isa() == "avx2" and itemsize == 4 and g.R * g.S == 9
            and g.stride == (1, 1)):
        waste = 6
    return (g.K_per_group >= block and g.C_per_group * g.R * g.S >= 128
            and (Wph - g.Q) * waste >= Wph)


def _tap_box(size, out, stride, dilation, pad, taps):
    """Per output index (out,): [lo, hi), the taps reading inside ``size`` input elements.

    Tap i reads input index o*stride + i*dilation - pad; the valid taps of
    an output are consecutive. An output no tap reads inside gets lo = taps,
    hi = 0, which a union (min of lo, max of hi) passes over.
    """
    first = np.arange(out)[:, None] * stride + np.arange(taps)[None, :] * dilation - pad
    valid = (first >= 0) & (first < size)
    some = valid.any(axis=1)
    lo = np.where(some, valid.argmax(axis=1), taps)
    hi = np.where(some, taps - valid[:, ::-1].argmax(axis=1), 0)
    return lo, hi


def _plan_blocks(chunks, boxes, qb, qt):
    """Plan rows (start, count, register block, r_lo, r_hi, s_lo, s_hi) for ``chunks``.

    ``chunks`` are index arrays into ``boxes`` (positions, 4): each chunk
    a block of at most qb positions, summing the union of its boxes.
    """
    rows, start = [], 0
    for chunk in chunks:
        b = boxes[chunk]
        rows.append((start, len(chunk), qt if len(chunk) <= qt else qb,
                     b[:, 0].min(), b[:, 1].max(), b[:, 2].min(), b[:, 3].max()))
        start += len(chunk)
    return np.array(rows, dtype=np.int64).reshape(-1, _PLAN_FIELDS)


def _plan_cost(plan):
    """Multiply-adds of a plan per (channel, output channel): register slots x taps."""
    return int((plan[:, 2] * np.maximum(plan[:, 4] - plan[:, 3], 0)
                * np.maximum(plan[:, 6] - plan[:, 5], 0)).sum())


def _in_runs(positions, qb, qt):
    """``positions`` cut into blocks of qb, the last qt or fewer in a block of its own."""
    chunks, j, n = [], 0, len(positions)
    while j < n:
        width = qt if n - j <= qt else qb
        chunks.append(positions[j:j + width])
        j += width
    return chunks


@functools.lru_cache(maxsize=256)
def _channel_vector_plan(g, qb, qt, skip_padding):
    """The channel-vector forward's blocks of output positions (see CK_DEFINE_FORWARD_KVEC).

    Returns (order, plan): the P*Q output positions p*Q + q in the order
    the blocks take them, and one row per block (start in order, count,
    register block qb or qt, r_lo, r_hi, s_lo, s_hi), the kernel taps
    (r, s) it sums. With ``skip_padding`` a block leaves out the taps that
    read only padding for all its positions: the positions are grouped by
    their own box of taps (edge rows and columns apart from the inside),
    whole blocks of each group first, the rest taken together in the order
    of their boxes; where that plan costs more multiply-adds than blocks in
    the output's order, each summing the union of its positions' boxes,
    the latter is kept. Without it (a weight that is not finite must meet
    the padding's zeros, as in the reference) every block sums every tap.
    resnet-3x3-c256's 14x14 with 6-position blocks: 91.8% of the
    multiply-adds of every tap (the real ones: 90.7%), 96.3% with the
    output's order.
    """
    (sh, sw), (dh, dw) = g.stride, g.dilation
    npos = g.P * g.Q
    natural = np.arange(npos, dtype=np.int64)
    if not skip_padding:
        boxes = np.tile(np.array([0, g.R, 0, g.S], dtype=np.int64), (npos, 1))
        return _read_only(natural), _read_only(_plan_blocks(_in_runs(natural, qb, qt), boxes,
                                                            qb, qt))
    r_lo, r_hi = _tap_box(g.H, g.P, sh, dh, g.padding[0][0], g.R)
    s_lo, s_hi = _tap_box(g.W, g.Q, sw, dw, g.padding[1][0], g.S)
    p, q = np.divmod(natural, g.Q)
    boxes = np.stack([r_lo[p], r_hi[p], s_lo[q], s_hi[q]], axis=1).astype(np.int64)
    best_order, best = natural, _plan_blocks(_in_runs(natural, qb, qt), boxes, qb, qt)
    # Groups of one box, the boxes with the most taps first.
    taps = (np.maximum(boxes[:, 1] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 2], 0))
    by_box = np.lexsort((natural, boxes[:, 3], -boxes[:, 2], boxes[:, 1], -boxes[:, 0], -taps))
    same = np.all(boxes[by_box[1:]] == boxes[by_box[:-1]], axis=1)
    groups = np.split(by_box, np.flatnonzero(~same) + 1)
    chunks, rest = [], []
    for group in groups:
        whole = len(group) - len(group) % qb
        chunks += [group[j:j + qb] for j in range(0, whole, qb)]
        rest.append(group[whole:])
    chunks += _in_runs(np.concatenate(rest), qb, qt)
    grouped = _plan_blocks(chunks, boxes, qb, qt)
    if _plan_cost(grouped) < _plan_cost(best):
        best_order, best = np.concatenate(chunks), grouped
    return _read_only(np.ascontiguousarray(best_order, dtype=np.int64)), _read_only(best)


def _use_depthwise_forward(g, y):
    """Whether a direct forward runs in place, a plane at a time (_conv.forward_depthwise).

    It does for one input channel per group feeding fewer than 4 output
    channels (a depthwise convolution, or a grad_input of one) at column
    stride 1 into rows with contiguous columns, at least one vector wide:
    the grid kernels would pack every input plane and compute a block of a
    single output channel, then copy it out of the grid. Alternated with
    them call by call on an AVX2 EPYC (float32, 3x3, padding 1, median
    ratio), it is 1.31x (1 thread) and 1.18x (2 threads) as fast on
    8x128x28x28, 1.34x / 1.15x on 8x128x56x56, 1.24x / 1.26x on
    8x256x14x14 and 1.51x / 1.59x on 1x32x112x112, but 0.62x / 0.69x on
    8x512x7x7, rows narrower than a vector, which keep the grid kernels.
    So do wider groups, whose block of CK_KB output channels shares each
    input load. Since then 3x3 kernels at row stride and dilation 1 run by
    bands of rows (CK_DEFINE_FORWARD_DW3), another 1.4x-1.8x on that EPYC.
    """
    return (g.C_per_group == 1 and g.K_per_group < 4 and g.stride[1] == 1
            and g.Q >= _conv.vector_lanes(y.itemsize)
            and g.S <= _conv.DEPTHWISE_MAX_WIDTH and y.strides[3] == y.itemsize)


def _grid_channel_pass(g, itemsize):
    """Input channels per pass of the grid kernels' sum (they keep the same sums).

    Each block of grid positions reads a window of every phase plane of
    every channel it sums; in passes of _GRID_PASS_BYTES / (sh*sw*itemsize)
    channels (AVX-512: 16 float32 channels at stride 2, 64 at stride 1;
    AVX2: 8 and 32) that window
    stays in L1 while the block's taps reread it, the partial sums waiting
    in the grid. Alternated with one pass on a 2-core Zen 5 EPYC (AVX-512,
    2 threads, 3x3 stride 2 padding 1, float32): 8x128x28x28 -> 256 1.80x,
    resnet-3x3-s2 1.04x-1.09x, 8x32x112x112 -> 64 and 8x256x14x14 -> 512
    within 2%; float64 with 8 channels 0.98x-1.11x; at stride 1, 32 or 64
    channels of 8x256x28x28 -> 256 1.02x-1.04x. On a Zen 4 EPYC the passes
    lost 3.5-5% at stride 2 (resnet-3x3-s2, 8x128x28x28 -> 256) and gained
    nothing at stride 1: there the kernels take one pass. The AVX2 kernels'
    passes are half as wide: on a Zen 3 EPYC (32 KB of L1) they ran the
    3x3 forwards of the ResNet shapes 1.07x-1.14x as fast as 256-byte
    passes (see CK_GRID_PASS_BYTES_AVX2 in _direct.h).
    """
    return max(1, _GRID_PASS_BYTES // (g.stride[0] * g.stride[1] * itemsize))


def _use_masked_forward(g, x, y):
    """Whether the grid forward can run on x where it lies (_conv.forward_masked).

    For stride-1 convolutions whose output is the input's size ("same"
    padding), on CPUs with AVX-512: masks zero the lanes the padding would
    hold, where the other kernels pack x into zero-padded planes, and the
    H x W grid wastes no column. Only where the grid kernel would take its
    widest register block (sums of at least fwd_short terms) and y is
    C-contiguous. _forward_direct takes it where it would otherwise pack the
    whole input before any task runs (a batch of one image): there the
    packed planes, written by one core and read by both, cost 72 us of
    resnet-3x3-n1's forward (19 us packing them alone), where the masked
    kernel reads x shared and unwritten. Where tasks pack their own images
    into cache, the packed kernel stays: the masked one ran resnet-3x3's
    forward 0.95-0.98x as fast (2-core Zen 4 EPYC).
    """
    taps = g.R * g.S
    return (g.stride == (1, 1) and (g.P, g.Q) == (g.H, g.W) and y.flags.c_contiguous
            and taps <= _conv.MASKED_TAPS and _conv.has_masked_forward(x.itemsize)
            and _conv.forward_kind(g.C_per_group * taps, taps, g.H * g.W, x.itemsize) == "fwd")


def _forward_masked(x, weight, bias, g, y, n_threads):
    """y = conv(x, weight) + bias by _conv.forward_masked (see _use_masked_forward)."""
    row_off = np.arange(g.R, dtype=np.int64) * g.dilation[0] - g.padding[0][0]
    col_off = np.arange(g.S, dtype=np.int64) * g.dilation[1] - g.padding[1][0]
    packed = _pack_weight(weight, g, _conv.CHANNEL_BLOCK, n_threads)
    _conv.forward_masked(x.reshape(g.N, g.C, g.H * g.W), packed, row_off, col_off, bias, y,
                         n_threads)


def _forward_direct(x, weight, bias, g, y, n_threads, weights_finite=None):
    """y = conv(x, weight) + bias by the direct kernels.

    ``weights_finite``: whether every weight is known finite (None: look),
    which lets the channel-vector kernel skip the taps that read padding.
    """
    bias = np.zeros(g.K, x.dtype) if bias is None else contiguous(bias)
    if _use_depthwise_forward(g, y):
        taps = np.ascontiguousarray(weight.reshape(g.K, g.R * g.S))
        # It skips the padding where the grid kernels multiply its zeros by
        # the weights: a non-finite weight must meet them (0 * inf is NaN).
        if _all_finite(taps):
            _conv.forward_depthwise(x, taps, bias, y, g.R, g.S, g.stride[0],
                                    g.padding[0][0], g.padding[1][0], g.dilation[0],
                                    g.dilation[1], n_threads)
            return
    Hph, Wph, plane_len, tap_off = layout = _phase_layout(g)
    (sh, sw) = g.stride
    channel_vector = _channel_vector(g, x.itemsize, Wph)
    order, plan = _NO_PLAN
    if channel_vector:
        wide = g.K_per_group >= _conv.channel_vector_block(x.itemsize, wide=True)
        kb = _conv.channel_vector_block(x.itemsize, wide=wide)
        # Only a geometry with padding has taps to skip; a weight that is
        # not finite must meet the padding's zeros (0 * inf is NaN).
        skip = any(pad > 0 for pads in g.padding for pad in pads) and (
            _all_finite(weight) if weights_finite is None else weights_finite)
        order, plan = _channel_vector_plan(g, *_conv.channel_vector_tile(wide), skip)
    else:
        kb = _conv.CHANNEL_BLOCK if g.K_per_group >= 4 else 1
    # Tasks pack their own channels into cache: per (image, group), running
    # every block of output channels, wherever that makes enough tasks; per
    # block for narrow groups of few images, where packing is cheap and the
    # extra tasks balance the threads. Otherwise the whole input is packed
    # first. Every way gives the same sums in the same order, so the choice
    # (which depends on the thread count) never changes a bit.
    tasks = g.N * g.groups
    narrow = g.C_per_group <= _LOCAL_PACK_CHANNELS
    per_image = tasks >= (2 if not narrow else _NARROW_TASKS_PER_THREAD) * n_threads
    local = narrow or per_image
    # Where the whole input would be packed first, the grid kernel reads it
    # in place instead if it can (see _use_masked_forward).
    if not (local or channel_vector) and kb == _conv.CHANNEL_BLOCK and _use_masked_forward(g, x, y):
        _forward_masked(x, weight, bias, g, y, n_threads)
        return
    outputs = (g.K_per_group if per_image else kb) * g.P * g.Q
    shifted = local and not channel_vector and _use_shifted_layout(g, x.itemsize, y, outputs)
    own_layout = channel_vector and _is_own_layout(g)
    if own_layout:
        # Nothing to pack: the channel-vector kernel reads x where it is.
        local, plane_len = False, g.H * g.W
    # The grid kernels' planes share their rows' column padding where they can.
    shared = None if shifted or channel_vector else _shared_padding_layout(g)
    origin, pl = 0, g.padding[1][0]
    if shifted:
        Hph, Wph, plane_len, tap_off = _shifted_layout(g)
    elif shared is not None:
        Hph, Wph, plane_len, tap_off, origin = shared
        layout, pl = shared[:4], 0
    weight = _pack_weight(weight, g, kb, n_threads)
    c_pass = _grid_channel_pass(g, x.itemsize)
    gstride = g.P * Wph + _conv.PLANE_SLACK
    # The channel-vector kernel keeps partial sums there ([position in its
    # plan's order][channel]).
    grid = kb * g.P * g.Q if channel_vector else kb * gstride
    if local:
        planes = g.S * sh if shifted else sh * sw
        # Zero where the packing leaves padding: still so if the last call
        # on this scratch packed the same layout (see _scratch.scratch).
        scratch = _scratch("threads", (n_threads, g.C_per_group * planes * plane_len + grid),
                           x.dtype, zero=True, zero_key=("forward_local", g, shifted, kb))
        _conv.forward_local(x, weight, tap_off, bias, y, scratch, sh, sw, g.padding[0][0],
                            pl, Hph, Wph, plane_len, per_image, channel_vector,
                            g.S, order, plan, shifted, g.dilation[1], c_pass,
                            n_threads, origin)
        return
    if own_layout:
        packed = x.reshape(g.N, g.C, 1, plane_len)
    else:
        packed = _pack_input(x, g, layout, n_threads, origin)
    scratch = _scratch("threads", (n_threads, grid), x.dtype)
    _conv.forward_packed(packed, weight, tap_off, bias, y, scratch, Wph, channel_vector, g.S,
                         order, plan, c_pass, n_threads)


def _phase_taps(a, stride, dilation, pad, kernel):
    """The kernel taps feeding input rows a, a + stride, a + 2*stride, ... in grad_input.

    Input row h = a + stride*i receives tap r from grad_output row
    i + (a + pad - r*dilation) / stride wherever that division is exact.
    Returns (taps, first_offset, tap_dilation): the taps in increasing order
    of that row offset (decreasing r), the offset of the first, and the
    spacing of consecutive offsets.
    """
    taps = [r for r in range(kernel - 1, -1, -1) if (a + pad - r * dilation) % stride == 0]
    first = (a + pad - taps[0] * dilation) // stride if taps else 0
    return taps, first, dilation // math.gcd(stride, dilation)


def _taps_slice(taps):
    """The decreasing, evenly spaced taps of _phase_taps as a slice."""
    step = taps[0] - taps[1] if len(taps) > 1 else 1
    stop = taps[-1] - step
    return slice(taps[0], stop if stop >= 0 else None, -step)


def _use_depthwise_scatter_grad_input(g):
    """Whether a depthwise grad_input scatters a plane at a time.

    That is _conv.grad_input_depthwise_scatter, for one input and one
    output channel per group at a stride above 1, where the gather form
    splits into sh*sw stride-1 convolutions of a tap or few (each through
    the grid kernels of one output channel) and the columns form packs R*S
    rows of products per plane for col2im. It ran 1.39x-2.52x as fast as
    the columns form on stride-2 3x3 shapes with 7x7 to 112x112 planes
    (Zen 3 EPYC, alternated call by call). Stride 1 runs the depthwise
    forward kernel itself.
    """
    return g.C_per_group == 1 and g.K_per_group == 1 and g.stride != (1, 1)


def _use_scatter_grad_input(g, itemsize):
    """Whether grad_input runs as weights x grad_output then col2im (_grad_input_scatter).

    The gather form (a transposed convolution per stride phase) multiplies
    every input pixel by all of its phase's taps, padding included: about
    H*W / (P*Q*sh*sw) times the real multiply-adds, which on small maps
    with large kernels (mnist-conv2: 12x12 from 8x8 with 5x5) is 2x or more.
    The scatter form does only the real ones, at the price of a col2im
    pass; it needs an image's columns (C/G*R*S x P*Q) in cache. It also
    wins wherever C/G is under the grid kernel's block of output channels
    and K/G fills one (single-channel and RGB images): the gather form then
    computes C/G < 8 channels per pass (one, below 4), the scatter form a
    full block of the C/G*R*S column rows (measured on 1- to 4-channel
    inputs, 3x3 to 7x7: 1.1-2x faster, except 3x3 "same" on one channel,
    within 5%; from 8 channels on, gather is the faster). And it wins at
    strides above 1, where the gather form splits into sh*sw convolutions of
    a few taps each (1 to 4 for 3x3 at stride 2), each packing grad_output
    again, as long as an image's columns stay within
    _SCATTER_STRIDED_BYTES (AVX2 EPYC, stride-2 3x3 grad_inputs, gather
    over scatter time: 1.08-1.27x on 32-256 channels with 0.3-1.8 MB of
    columns, 0.80x with 7.2 MB; 5x5 at 313 KB 0.99x; 1x1 1.66x).
    """
    gather = g.H * g.W / (g.P * g.Q * g.stride[0] * g.stride[1])
    columns = g.C_per_group * g.R * g.S * g.P * g.Q * itemsize
    narrow = g.C_per_group < _conv.CHANNEL_BLOCK <= g.K_per_group
    if g.stride != (1, 1) and columns <= _SCATTER_STRIDED_BYTES:
        return True
    return ((gather >= _SCATTER_MIN_WASTE or narrow)
            and columns <= _SCATTER_COLUMNS_BYTES)


def _use_rows_grad_input(g, itemsize):
    """Whether grad_input runs a row of pixels at a time (_grad_input_rows).

    Only for an unpadded convolution at stride and dilation 1 with a kernel
    of 3 or 5 columns, whose grad_output rows the kernel holds in registers
    (up to 24 and 16 columns with AVX-512). It does only the real
    multiply-adds, as the scatter form does without its col2im pass, where
    the gather form multiplies the zeros around grad_output too. Its lanes
    are input channels: C/G short of a whole number of vectors leaves lanes
    idle. It is taken where that waste, times _ROWS_MARGIN, is no more than
    the other form's: _SCATTER_COST, or the gather form's multiply-adds per
    real one. Measured on a 2-core Zen 4 EPYC, the old form's time over
    this one's (median of alternated calls): AVX-512 float32 1.07-1.82x on
    14 shapes with 8x8 to 24x24 outputs and 16 to 64 input channels,
    float64 1.13-1.26x on 8; capped at AVX2, float32 1.31-1.82x on 4,
    float64 1.39-1.44x on 2 with 3 columns (a first version ran float64
    with 5 columns 0.81x; AVX2 has no such kernel). With 24 input channels
    (0.75 of the lanes used) a first version ran 0.85x against the scatter
    form, which this rule leaves it.
    """
    if g.stride != (1, 1) or g.dilation != (1, 1) or any(p for pads in g.padding for p in pads):
        return False
    lanes, widest = _conv.grad_input_rows_shape(g.S, itemsize)
    if g.Q > widest:
        return False
    idle = -(-g.C_per_group // lanes) * lanes / g.C_per_group
    other = (_SCATTER_COST if _use_scatter_grad_input(g, itemsize)
             else g.H * g.W / (g.P * g.Q))
    return _ROWS_MARGIN * idle <= other


def _swapped_weight(weight, g):
    """(G, C/G, K/G, R, S): the weights with K/G and C/G swapped, a view."""
    return weight.reshape(g.groups, g.K_per_group, g.C_per_group, g.R, g.S).transpose(
        0, 2, 1, 3, 4)


def _grad_input_rows(grad_output, weight, g, n_threads):
    """grad_input by _conv.grad_input_rows, one (image, group, channel vector) per task."""
    lanes, _ = _conv.grad_input_rows_shape(g.S, weight.itemsize)
    # The swapped weights packed with input channels side by side, as those
    # of a convolution from K to C channels.
    transposed = ConvGeometry(g.N, g.K, g.P, g.Q, g.C, g.R, g.S, g.H, g.W, g.groups, (1, 1),
                              (1, 1), g.padding)
    wpk = _pack_weight(_swapped_weight(weight, g), transposed, lanes, n_threads)
    scratch = _scratch("threads", (n_threads, g.H * g.W * lanes), weight.dtype)
    grad_input = np.empty(g.input_shape, dtype=weight.dtype)
    _conv.grad_input_rows(grad_output.reshape(g.N, g.K, g.P * g.Q), wpk, grad_input, scratch,
                          g.R, g.S, g.P, g.Q, n_threads)
    return grad_input


def _grad_input_scatter(grad_output, weight, g, n_threads):
    """grad_input = col2im(weights^T x grad_output), one (image, group) per task."""
    G, Kg, Cg, RS, L = g.groups, g.K_per_group, g.C_per_group, g.R * g.S, g.P * g.Q
    # The weights as those of a 1x1 convolution from K/G to C/G*R*S channels.
    pointwise = ConvGeometry(g.N, g.K, 1, L, G * Cg * RS, 1, 1, 1, L, G, (1, 1), (1, 1),
                             ((0, 0), (0, 0)))
    rows = weight.reshape(G, Kg, Cg * RS).transpose(0, 2, 1)[:, :, :, None, None]
    wpk = _pack_weight(rows, pointwise, _conv.CHANNEL_BLOCK, n_threads)
    blocks = wpk.shape[1]
    # Per thread: grad_output's channels, the columns, then, at column
    # strides above 1, col2im's plane of column phases.
    phases = g.H * (g.W + g.stride[1]) if g.stride[1] > 1 else 0
    scratch = _scratch("threads", (n_threads, Kg * L + 2 * _conv.PLANE_SLACK
                                   + blocks * _conv.CHANNEL_BLOCK * L + phases), weight.dtype)
    grad_input = np.empty(g.input_shape, dtype=weight.dtype)
    (sh, sw), (dh, dw) = g.stride, g.dilation
    _conv.grad_input_scatter(grad_output.reshape(g.N, g.K, L), wpk,
                             np.zeros(_conv.CHANNEL_BLOCK, weight.dtype), grad_input, scratch,
                             g.R, g.S, g.P, g.Q, sh, sw, g.padding[0][0], g.padding[1][0],
                             dh, dw, n_threads)
    return grad_input


def _grad_input_depthwise_scatter(grad_output, weight, g, n_threads):
    """A depthwise grad_input at strides above 1 (see _use_depthwise_scatter_grad_input)."""
    grad_input = np.empty(g.input_shape, dtype=grad_output.dtype)
    # per thread: a plane's rows, split into sw column phases
    phases = _scratch("threads", (n_threads, g.H * g.stride[1] * -(-g.W // g.stride[1])),
                      grad_output.dtype)
    _conv.grad_input_depthwise_scatter(grad_output, weight.reshape(g.C, g.R * g.S), grad_input,
                                       phases, g.R, g.S, *g.stride, g.padding[0][0],
                                       g.padding[1][0], *g.dilation, n_threads)
    return grad_input


def _grad_input_direct(grad_output, weight, g, n_threads):
    """grad_input as stride-1 convolutions of grad_output, one per input phase.

    Input pixels (h, w) with h % sh == a and w % sw == b (a phase) receive
    grad_output through the taps r, s that divide exactly: a stride-1
    convolution of grad_output with those taps of the weight, flipped and
    with K and C/G swapped (a transposed convolution). Each phase runs the
    forward direct kernel, which writes the phase's rows and columns of
    grad_input in place; stride 1 is the single phase (0, 0). No multiply touches the
    zeros a strided transposed convolution would otherwise spread between
    grad_output's rows and columns.
    """
    if _use_depthwise_scatter_grad_input(g):
        return _grad_input_depthwise_scatter(grad_output, weight, g, n_threads)
    if _use_rows_grad_input(g, weight.itemsize):
        return _grad_input_rows(grad_output, weight, g, n_threads)
    if _use_scatter_grad_input(g, weight.itemsize):
        return _grad_input_scatter(grad_output, weight, g, n_threads)
    (sh, sw), (dh, dw) = g.stride, g.dilation
    G = g.groups
    # The weights of the transposed convolution.
    swapped = _swapped_weight(weight, g)
    row_phases = [_phase_taps(a, sh, dh, g.padding[0][0], g.R) for a in range(min(sh, g.H))]
    col_phases = [_phase_taps(b, sw, dw, g.padding[1][0], g.S) for b in range(min(sw, g.W))]
    # A phase no tap reaches keeps a zero gradient; every other one is written whole.
    every_phase_has_taps = all(taps for taps, _, _ in row_phases + col_phases)
    grad_input = (np.empty if every_phase_has_taps else np.zeros)(g.input_shape,
                                                                  dtype=grad_output.dtype)
    for a, (rows, top, d_r) in enumerate(row_phases):
        H_a = -(-(g.H - a) // sh)
        for b, (cols, left, d_s) in enumerate(col_phases):
            W_b = -(-(g.W - b) // sw)
            if not rows or not cols:
                continue
            R_a, S_b = len(rows), len(cols)
            pads = ((-top, H_a - g.P + top + d_r * (R_a - 1)),
                    (-left, W_b - g.Q + left + d_s * (S_b - 1)))
            phase = ConvGeometry(g.N, g.K, g.P, g.Q, g.C, R_a, S_b, H_a, W_b, G, (1, 1),
                                 (d_r, d_s), pads)
            sub = swapped[:, :, :, _taps_slice(rows), _taps_slice(cols)]
            # The kernels write the phase's rows and columns in place; the
            # weights are finite (conv2d_backward sends others to im2col).
            _forward_direct(grad_output, sub, None, phase, grad_input[:, :, a::sh, b::sw],
                            n_threads, weights_finite=True)
    return grad_input


def _grad_weight_direct(grad_output, x, g, n_threads):
    if _use_depthwise_rows(g):
        return _grad_weight_depthwise(grad_output, x, g, n_threads)
    if _use_channel_vector_grad_weight(g, x.itemsize):
        return _grad_weight_channel_vector(grad_output, x, g, n_threads)
    if g.C_per_group == 1:
        return _grad_weight_depthwise(grad_output, x, g, n_threads)
    layout = _phase_layout(g)
    Wph = layout[1]
    packed = _pack_input(x, g, layout, n_threads)
    grid = np.zeros((g.N, g.K, g.P, Wph), dtype=x.dtype)
    grid[..., : g.Q] = grad_output
    grad_weight = np.empty((g.K, g.C_per_group, g.R * g.S), dtype=x.dtype)
    _conv.grad_weight_packed(grid.reshape(g.N, g.K, -1), packed, layout[3], grad_weight,
                             g.groups, n_threads)
    return grad_weight.reshape(g.weight_shape)


def _tap_offsets(g, padded):
    """(roff, soff): tap t = r*S + s reads input row p*sh + roff[t], column q*sw + soff[t].

    roff = r*dh - pt and soff = s*dw - pl; with ``padded`` (the zero-padded
    copy of _phase_layout's planes, stride 1) pt = pl = 0.
    """
    (dh, dw), (pt, pl) = g.dilation, (g.padding[0][0], g.padding[1][0])
    if padded:
        pt = pl = 0
    r, s = np.divmod(np.arange(g.R * g.S, dtype=np.int64), g.S)
    return r * dh - pt, s * dw - pl


def _inside(offsets, stride, size, count):
    """[lo, hi): the outputs i < count with 0 <= i*stride + o < size for every offset o."""
    lo = min(count, max(0, -(int(offsets.min()) // stride)))
    return lo, min(count, max(lo, (size - 1 - int(offsets.max())) // stride + 1))


def _inside_rows_columns(g, padded):
    """(p_lo, p_hi, q_lo, q_hi): output rows and columns every tap reads inside the input."""
    if padded:
        return 0, g.P, 0, g.Q
    roff, soff = _tap_offsets(g, False)
    return (*_inside(roff, g.stride[0], g.H, g.P), *_inside(soff, g.stride[1], g.W, g.Q))


@functools.lru_cache(maxsize=256)
def _tap_rows_columns(g, dtype, padded):
    """Where the taps of ``g`` read its input: (roff, soff, p_lo, p_hi, q_lo, q_hi, zeros).

    roff and soff as in _tap_offsets; output rows [p_lo, p_hi) and columns
    [q_lo, q_hi) read inside the input for every tap (all of them in the
    ``padded`` copy, read without a check). ``zeros`` stands in for a kernel
    row outside the input (W of ``dtype``, read-only).
    """
    roff, soff = _tap_offsets(g, padded)
    return (_read_only(roff), _read_only(soff), *_inside_rows_columns(g, padded),
            _read_only(np.zeros(max(g.W, 1), dtype=dtype)))


@functools.lru_cache(maxsize=256)
def _pad_for_grad_weight(g):
    """Whether the channel-vector grad_weight reads a zero-padded copy of x.

    It reads x in place, checking the taps of output positions whose taps
    reach into the padding (rows and columns near the edges); at stride 1
    it pads a copy first where those positions are over _GW_EDGE_SHARE of
    all (small padded maps). Alternated call by call on a Zen 4 EPYC
    (2 threads, against the padded copy): in place ran resnet-3x3-c256
    (14x14, 27% edge positions) 0.97x as fast, cifar-conv1 (32x32, 12%)
    1.02-1.04x, resnet-3x3 and resnet-3x3-n1 (56x56, 7%) 1.00-1.03x, and at
    stride 2 (where the copy is four phase planes) resnet-3x3-s2 1.13-1.15x.
    """
    if g.stride != (1, 1) or g.padding == ((0, 0), (0, 0)):
        return False
    p_lo, p_hi, q_lo, q_hi = _inside_rows_columns(g, False)
    return (p_hi - p_lo) * (q_hi - q_lo) < (1 - _GW_EDGE_SHARE) * g.P * g.Q


def _use_wide_grad_weight(g, itemsize):
    """Whether the channel-vector grad_weight takes its wide variant (same sums).

    On AVX-512 the wide variant holds 4 vectors of output channels x 6
    columns, the other 2 x 12. Alternated call by call on a 2-core Zen 4
    EPYC (float32, 2 threads, tools/ab.py), the wide one ran output rows of
    7 or 8 faster: mnist-conv2 1.08-1.11x, 64x64x8x8 -> 64 (3x3, padding
    1) 1.14-1.19x, 64x32x12x12 -> 128 (5x5) 1.13x, 8x512x7x7 -> 512
    1.07x; rows of 14 and more slower: 0.91x (64x32x16x16 -> 64, 3x3),
    0.97x (resnet-3x3-c256), 0.95x (16x64x28x28 -> 64), 0.91x (resnet-3x3).
    It needs K/G to fill its block.
    """
    return (g.Q <= _GW_WIDE_MAX_COLUMNS
            and g.K_per_group >= _conv.grad_weight_channel_block(itemsize, wide=True))


def _grad_weight_channel_vector(grad_output, x, g, n_threads):
    """grad_weight with a block of output channels in the vector lanes (see _direct.h).

    The kernel reads x where it lies (or a zero-padded copy: see
    _pad_for_grad_weight). Where the channel and column blocks alone make
    too few tasks, the images are split into a fixed number of runs (from
    the geometry alone) whose partial sums are added in order, so the
    result never depends on the thread count.
    """
    # Small padded maps (where a padded copy would pay) leave out the
    # padding's terms instead, reading x in place, if grad_output is finite:
    # an inf or NaN there must meet those zeros (0 * inf is NaN, as in the
    # reference).
    small_padded = _pad_for_grad_weight(g)
    exact = small_padded and _all_finite(grad_output)
    padded = small_padded and not exact
    roff, soff, p_lo, p_hi, q_lo, q_hi, zeros = _tap_rows_columns(g, x.dtype, padded)
    (sh, sw) = g.stride
    G, Kg, N = g.groups, g.K_per_group, g.N
    if padded:
        # Planes back to back, without the slack the forward kernels read
        # past a plane's end: this kernel reads inside each plane only.
        H, W = _phase_layout(g)[:2]
        image = _pack_input(x, g, (H, W, H * W, None), n_threads).reshape(N, g.C, -1)
    else:
        H, W = g.H, g.W
        image = x.reshape(N, g.C, H * W)
    wide = _use_wide_grad_weight(g, x.itemsize)
    kb = _conv.grad_weight_channel_block(x.itemsize, wide)
    blocks = -(-Kg // kb)
    ncols = g.C_per_group * g.R * g.S
    tb = _conv.grad_weight_column_block(wide)
    column_blocks = -(-ncols // tb)
    splits = min(N, -(-_GW_MIN_TASKS // (G * blocks * column_blocks)))
    # Column runs only share out the work (every column is summed alone);
    # each run transposes its chunks of grad_output again, so make few.
    runs = max(1, min(column_blocks, -(-n_threads // (G * blocks * splits))))
    cols_per_task = -(-column_blocks // runs) * tb
    # Output rows per chunk: a chunk of grad_output, transposed, fills
    # about 32 KiB (L1) as the column blocks pass over it.
    chunk_rows = max(1, (32 * 1024 // (kb * x.itemsize)) // g.Q)
    # Per thread: the kernel's accumulators and transposed chunk.
    scratch = _scratch("threads", (n_threads, (cols_per_task + chunk_rows * g.Q) * kb), x.dtype)
    # One run of images sums straight into the result; more are added up after.
    shape = (splits, g.K, g.C_per_group, g.R * g.S)
    partial = np.empty(shape, x.dtype) if splits == 1 else _scratch("partial", shape, x.dtype)
    bounds = np.linspace(0, N, splits + 1).astype(np.int64)
    _conv.grad_weight_channel_vector(grad_output.reshape(N, g.K, g.P * g.Q), image, roff, soff,
                                     zeros, bounds, partial, scratch, H, W, g.P, g.Q, sh, sw,
                                     p_lo, p_hi, q_lo, q_hi, cols_per_task, chunk_rows,
                                     wide, exact, n_threads)
    grad_weight = partial[0] if splits == 1 else partial[0].copy()
    for i in range(1, splits):
        grad_weight += partial[i]
    return grad_weight.reshape(g.weight_shape)


@functools.lru_cache(maxsize=64)
def _depthwise_masks(g, rows, dtype):
    """(S, rows*Q + _MASK_SLACK) bit masks of the depthwise row kernel, in ``dtype``.

    Element i of row s is all ones where output position i of a run of
    ``rows`` output rows reads a real input column at kernel column s
    (i < rows*Q and 0 <= i % Q - pl + s < W), zero otherwise; the kernel
    ANDs grad_output's vectors with them. Cached (read-only): building them
    took a tenth of a small backward's 96 us.
    """
    i = np.arange(rows * g.Q + _MASK_SLACK)
    col = (i % g.Q)[None, :] - g.padding[1][0] + np.arange(g.S)[:, None]
    valid = (i < rows * g.Q) & (col >= 0) & (col < g.W)
    bits = np.dtype(f"u{np.dtype(dtype).itemsize}")
    return _read_only(np.where(valid, np.iinfo(bits).max, 0).astype(bits).view(dtype))


def _grad_weight_depthwise(grad_output, x, g, n_threads):
    """grad_weight with one input channel per group (see _conv.grad_weight_depthwise).

    Where the column stride and dilation are 1 the kernel reads the arrays
    in place, a few output rows at a time when they lie flat in both (an
    output row steps as far through x as through grad_output); otherwise,
    or for a channel whose grad_output is not finite, it packs them into
    cache.
    """
    Hph, Wph, plane_len, tap_off = _phase_layout(g)
    (sh, sw) = g.stride
    per_image = sh * sw * plane_len + g.P * Wph
    if sw == 1 and g.dilation[1] == 1:
        rows = max(1, _DEPTHWISE_RUN // g.Q) if g.Q == sh * g.W else 1
        masks = _depthwise_masks(g, rows, x.dtype)
        # Packing is then the rare fallback: one image at a time keeps the
        # scratch zeroed on every call small.
        images = 1
    else:
        rows, masks = 0, np.zeros((1, 1), dtype=x.dtype)
        # A property of the shape alone: the sums' order depends on it.
        images = max(1, min(g.N, _DEPTHWISE_SCRATCH // (x.itemsize * per_image)))
    scratch = _scratch("threads", (n_threads, images * per_image + g.R * g.S), x.dtype,
                       zero=True)
    grad_weight = np.empty((g.K, 1, g.R * g.S), dtype=x.dtype)
    _conv.grad_weight_depthwise(grad_output, x, tap_off, grad_weight, masks, scratch, sh, sw,
                                g.padding[0][0], g.padding[1][0], Hph, Wph, plane_len, images,
                                g.R, g.dilation[0], rows, n_threads)
    return grad_weight.reshape(g.weight_shape)


def _batched_gemm(g):
    """Whether the backward GEMMs of a tile run once over all its images.

    One GEMM per image is short in its P*Q dimension when feature maps are
    small; laying a tile's columns out as (C*R*S, images*rows*Q) makes one
    large GEMM instead (grad_weight then sums over the images inside BLAS),
    at the price of grad_output copied into (K, images*rows*Q) order. It
    loses where C/G*R*S or K/G is small: BLAS runs such thin GEMMs slowly.
    """
    return g.P * g.Q < 1024 and g.C_per_group * g.R * g.S >= 64 and g.K_per_group >= 32


def _im2col_tiles(g, dtype, temporary):
    """Tiles of ``_tiles`` and one buffer for the largest column matrix among them.

    With ``temporary``, each tile also needs a (K, images*rows*Q) array (an
    output row tile, or grad_output in GEMM order), counted against the cap.
    """
    itemsize = np.dtype(dtype).itemsize
    extra = g.K * g.Q * itemsize if temporary else 0
    tiles = list(_tiles(g, itemsize, per_row_extra=extra))
    n0, n1, p0, p1 = tiles[0]
    return tiles, np.empty(g.C * g.R * g.S * (n1 - n0) * (p1 - p0) * g.Q, dtype=dtype)


def _column_strides(g, tile, batched):
    """(image_stride, row_stride) of a tile's columns in the im2col/col2im kernels."""
    n0, n1, p0, p1 = tile
    rows = (p1 - p0) * g.Q
    if batched:
        return rows, (n1 - n0) * rows
    return g.C * g.R * g.S * rows, rows


def _im2col_tile(x, g, tile, buffer, batched, n_threads):
    """Columns of images [n0, n1), output rows [p0, p1).

    Returns (images, G, C/G*R*S, rows*Q), or with ``batched``
    (G, C/G*R*S, images*rows*Q).
    """
    n0, n1, p0, p1 = tile
    images, rows = n1 - n0, (p1 - p0) * g.Q
    cols = buffer[: images * g.C * g.R * g.S * rows]
    _conv.im2col(x[n0:n1], cols, *_column_strides(g, tile, batched), g.R, g.S, p0, g.Q,
                 *_kernel_args(g), n_threads)
    if batched:
        return cols.reshape(g.groups, -1, images * rows)
    return cols.reshape(images, g.groups, -1, rows)


def _gemm_order(array, g, tile):
    """The (n0:n1, :, p0:p1, :) part of an (N, K, P, Q) array as (G, K/G, images*rows*Q)."""
    n0, n1, p0, p1 = tile
    part = array[n0:n1, :, p0:p1, :].transpose(1, 0, 2, 3)
    return np.ascontiguousarray(part).reshape(g.groups, g.K_per_group, -1)


def _forward_im2col(x, weight, g, y, n_threads):
    G, Kg = g.groups, g.K_per_group
    w = weight.reshape(G, Kg, -1)
    y_groups = y.reshape(g.N, G, Kg, g.P * g.Q)
    gemm_threads = _gemm_threads(g, n_threads)
    with _threads.blas_threads(1):
        if g.is_pointwise:
            _matmul(w, x.reshape(g.N, G, g.C_per_group, g.H * g.W), y_groups, gemm_threads)
            return
        tiles, buffer = _im2col_tiles(g, x.dtype, temporary=True)
        for n0, n1, p0, p1 in tiles:
            cols = _im2col_tile(x, g, (n0, n1, p0, p1), buffer, False, n_threads)
            if p0 == 0 and p1 == g.P:
                _matmul(w, cols, y_groups[n0:n1], gemm_threads)
            else:
                part = np.empty(cols.shape[:-2] + (Kg, cols.shape[-1]), dtype=y.dtype)
                _matmul(w, cols, part, gemm_threads)
                y[n0:n1, :, p0:p1, :] = part.reshape(n1 - n0, g.K, p1 - p0, g.Q)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, method="auto"):
    """2-D convolution (cross-correlation), with the semantics of PyTorch's ``conv2d``.

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64
    weight : array (K, C // groups, R, S), same dtype as ``x``
    bias : array (K,) or None
    stride, dilation : int or (int, int)
    padding : int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same"
        "same" follows Keras: output size ceil(H / stride), any stride,
        dilation or kernel size; an odd total puts the extra row/column at
        the bottom/right.
    groups : int dividing C and K (groups == C is a depthwise convolution)
    method : "auto", "direct" or "im2col"

    Returns
    -------
    y : array (N, K, P, Q) of x's dtype, a new array.
    """
    check_method(method)
    x, weight, bias = check_conv_arrays(x, weight, bias)
    g = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    check_bias(bias, g)
    if method == "auto":
        method = _choose_method(g, "forward", x.itemsize)
    _check_sizes("conv2d", g, x.itemsize, {"y": g.output_shape}, method == "im2col")
    y = np.empty(g.output_shape, dtype=x.dtype)
    if y.size == 0:
        return y
    x, weight = contiguous(x), contiguous(weight)
    n_threads = _threads.threads_for(g.flops // 2, None, _threads.CONV_MIN_WORK_PER_THREAD)
    if method == "direct":
        _forward_direct(x, weight, bias, g, y, n_threads)
        return y
    _forward_im2col(x, weight, g, y, n_threads)
    if bias is not None:
        y += bias.reshape(-1, 1, 1)
    return y


def _grad_input_im2col(grad_output, weight, g, n_threads):
    G, Kg = g.groups, g.K_per_group
    w_t = weight.reshape(G, Kg, -1).transpose(0, 2, 1)
    gy = grad_output.reshape(g.N, G, Kg, g.P, g.Q)
    gemm_threads = _gemm_threads(g, n_threads)
    if g.is_pointwise:
        grad_input = np.empty(g.input_shape, dtype=grad_output.dtype)
        _matmul(w_t, gy.reshape(g.N, G, Kg, g.P * g.Q),
                grad_input.reshape(g.N, G, g.C_per_group, g.H * g.W), gemm_threads)
        return grad_input
    grad_input = np.zeros(g.input_shape, dtype=grad_output.dtype)
    batched = _batched_gemm(g)
    tiles, buffer = _im2col_tiles(g, grad_output.dtype, temporary=batched)
    for tile in tiles:
        n0, n1, p0, p1 = tile
        images, rows = n1 - n0, (p1 - p0) * g.Q
        cols = buffer[: images * g.C * g.R * g.S * rows]
        if batched:
            np.matmul(w_t, _gemm_order(grad_output, g, tile),
                      out=cols.reshape(G, -1, images * rows))
        else:
            _matmul(w_t, gy[n0:n1, :, :, p0:p1, :].reshape(images, G, Kg, rows),
                    cols.reshape(images, G, -1, rows), gemm_threads)
        _conv.col2im(cols, grad_input[n0:n1], *_column_strides(g, tile, batched), g.R, g.S,
                     p0, g.Q, *_kernel_args(g), n_threads)
    return grad_input


def _grad_weight_im2col(grad_output, x, g, n_threads):
    G, Kg = g.groups, g.K_per_group
    gy = grad_output.reshape(g.N, G, Kg, g.P, g.Q)
    grad_weight = np.zeros((G, Kg, g.C_per_group * g.R * g.S), dtype=x.dtype)
    gemm_threads = _gemm_threads(g, n_threads)
    # Per-image products, one at a time on one thread, else a few per thread
    # (within _PRODUCTS_BYTES), summed in image order.
    count = 1 if gemm_threads == 1 else 4 * gemm_threads
    count = min(g.N, count, max(1, _PRODUCTS_BYTES // grad_weight.nbytes))
    products = np.empty((count,) + grad_weight.shape, dtype=x.dtype)

    def add_images(gy_images, x_images):
        for i0 in range(0, len(gy_images), count):
            i1 = min(i0 + count, len(gy_images))
            part = products[: i1 - i0]
            _matmul(gy_images[i0:i1], x_images[i0:i1], part, gemm_threads)
            for product in part:
                np.add(grad_weight, product, out=grad_weight)

    if g.is_pointwise:
        add_images(gy.reshape(g.N, G, Kg, -1),
                   x.reshape(g.N, G, g.C_per_group, g.H * g.W).transpose(0, 1, 3, 2))
        return grad_weight.reshape(g.weight_shape)
    batched = _batched_gemm(g)
    tiles, buffer = _im2col_tiles(g, x.dtype, temporary=batched)
    for tile in tiles:
        n0, n1, p0, p1 = tile
        cols = _im2col_tile(x, g, tile, buffer, batched, n_threads)
        if batched:
            np.matmul(_gemm_order(grad_output, g, tile), cols.transpose(0, 2, 1),
                      out=products[0])
            grad_weight += products[0]
            continue
        add_images(gy[n0:n1, :, :, p0:p1, :].reshape(n1 - n0, G, Kg, -1),
                   cols.transpose(0, 1, 3, 2))
    return grad_weight.reshape(g.weight_shape)


def conv2d_backward(grad_output, x, weight, stride=1, padding=0, dilation=1, groups=1, *,
                    method="auto", output_mask=(True, True, True)):
    """Gradients of :func:`conv2d` with respect to x, weight and bias.

    Parameters
    ----------
    grad_output : array (N, K, P, Q), the gradient of the loss w.r.t. conv2d's output
    x : array (N, C, H, W), the forward input
    weight : array (K, C // groups, R, S)
    stride, padding, dilation, groups, method : as in :func:`conv2d`
    output_mask : three bools; which of (grad_input, grad_weight, grad_bias) to compute

    Returns
    -------
    (grad_input (N, C, H, W), grad_weight (K, C // groups, R, S), grad_bias (K,)),
    with None in place of each gradient the mask leaves out. The results are
    bitwise identical for any thread count.
    """
    check_method(method)
    mask = check_output_mask(output_mask)
    x, weight, _ = check_conv_arrays(x, weight)
    g = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    grad_output = check_grad_output(grad_output, g, x)
    methods = {op: _choose_method(g, op, x.itemsize) if method == "auto" else method
               for op in ("grad_input", "grad_weight")}
    # The direct gradients also multiply zeros (grid columns thrown away,
    # padding) by real values: 0 * inf would turn into NaN what the exact
    # products keep finite. Non-finite operands take the exact im2col path.
    grad_output, x, weight = contiguous(grad_output), contiguous(x), contiguous(weight)
    if mask[0] and methods["grad_input"] == "direct" and not _all_finite(weight):
        methods["grad_input"] = "im2col"
    if mask[1] and methods["grad_weight"] == "direct" and not _all_finite(x):
        methods["grad_weight"] = "im2col"
    outputs = {name: shape for name, shape, wanted in
               zip(("grad_input", "grad_weight", "grad_bias"),
                   (g.input_shape, g.weight_shape, (g.K,)), mask) if wanted}
    _check_sizes("conv2d_backward", g, x.itemsize, outputs, "im2col" in methods.values())
    n_threads = _threads.threads_for(g.flops // 2, None, _threads.CONV_MIN_WORK_PER_THREAD)
    grad_input = grad_weight = grad_bias = None
    empty = grad_output.size == 0
    # The OpenMP kernels run first and the BLAS calls last: OpenBLAS's threads
    # keep spinning a while after a GEMM, and an OpenMP team started then
    # competes with them for the cores.
    if mask[2]:
        grad_bias = np.zeros(g.K, dtype=x.dtype)
        if not empty:
            _conv.grad_bias(grad_output.reshape(g.N, g.K, g.P * g.Q), grad_bias,
                            _threads.threads_for(grad_output.size))
    if empty:
        grad_input = np.zeros(g.input_shape, dtype=x.dtype) if mask[0] else None
        grad_weight = np.zeros(g.weight_shape, dtype=x.dtype) if mask[1] else None
        return grad_input, grad_weight, grad_bias
    if mask[0] and methods["grad_input"] == "direct":
        grad_input = _grad_input_direct(grad_output, weight, g, n_threads)
    if mask[1] and methods["grad_weight"] == "direct":
        grad_weight = _grad_weight_direct(grad_output, x, g, n_threads)
    gemm_input = mask[0] and methods["grad_input"] != "direct"
    gemm_weight = mask[1] and methods["grad_weight"] != "direct"
    if not (gemm_input or gemm_weight):
        # Holding BLAS (threadpoolctl) costs about 35 us a call: only for GEMMs.
        return grad_input, grad_weight, grad_bias
    with _threads.blas_threads(1):
        if gemm_input:
            grad_input = _grad_input_im2col(grad_output, weight, g, n_threads)
        if gemm_weight:
            grad_weight = _grad_weight_im2col(grad_output, x, g, n_threads)
    return grad_input, grad_weight, grad_bias


def _unfold_geometry(input_shape, kernel_size, stride, padding, dilation):
    """conv geometry for im2col/col2im: one output channel, no groups."""
    N, C, H, W = input_shape
    R, S = positive_pair(kernel_size, "kernel_size")
    return conv_geometry((N, C, H, W), (1, C, R, S), stride, padding, dilation, 1,
                         weight_name="kernel")


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """Unfold x (N, C, H, W) into columns (N, C*R*S, P*Q).

    Row ``(c*R + r)*S + s`` holds tap (r, s) of channel c for every output
    position, zero where the tap falls in the padding.
    """
    x = check_float_array(x, "x")
    check_ndim(x, 4, "x", "(N, C, H, W)")
    g = _unfold_geometry(x.shape, kernel_size, stride, padding, dilation)
    _check_sizes("im2col", g, x.itemsize, {"cols": (g.N, g.C * g.R * g.S, g.P * g.Q)})
    cols = np.empty((g.N, g.C * g.R * g.S, g.P * g.Q), dtype=x.dtype)
    if cols.size:
        _conv.im2col(contiguous(x), cols.reshape(-1), g.C * g.R * g.S * g.P * g.Q,
                     g.P * g.Q, g.R, g.S, 0, g.Q, *_kernel_args(g),
                     _threads.threads_for(cols.size))
    return cols


def col2im(cols, input_shape, kernel_size, stride=1, padding=0, dilation=1):
    """Fold columns (N, C*R*S, P*Q) back into (N, C, H, W): the adjoint of im2col.

    Entries that im2col read from the same pixel are summed.
    """
    cols = check_float_array(cols, "cols")
    input_shape = check_shape(input_shape, 4, "input_shape", "(N, C, H, W)")
    g = _unfold_geometry(input_shape, kernel_size, stride, padding, dilation)
    expected = (g.N, g.C * g.R * g.S, g.P * g.Q)
    if cols.shape != expected:
        raise ValueError(f"cols must have shape {expected} for input_shape {input_shape} "
                         f"and kernel_size {(g.R, g.S)}, got {cols.shape}")
    _check_sizes("col2im", g, cols.itemsize, {"x": input_shape})
    x = np.zeros(input_shape, dtype=cols.dtype)
    if cols.size:
        _conv.col2im(contiguous(cols).reshape(-1), x, g.C * g.R * g.S * g.P * g.Q,
                     g.P * g.Q, g.R, g.S, 0, g.Q, *_kernel_args(g),
                     _threads.threads_for(cols.size))
    return x


__all__ = [
    "conv2d",
    "conv2d_backward",
    "im2col",
    "col2im",
    "max_pool2d",
    "max_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "set_workspace_limit",
    "get_workspace_limit",
    "workspace_limit",
]
