# cython: language_level=3
"""Convolution kernels: im2col, col2im, grad_bias and the direct kernels' drivers.

Callers (convkit/functional.py) validate arguments, make every array
C-contiguous with one float dtype, allocate outputs and pick the thread
count; these kernels trust that and run without the GIL.

Layouts: x (N, C, H, W), weight (K, C/G, R, S), y (N, K, P, Q).
im2col/col2im treat reads outside the input as zero padding. The direct
kernels (_direct.h) read stride-phase planes packed by pack_phases. Every
output element is written by exactly one task, which sums in a fixed order,
so results do not depend on the thread count.
"""

from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

from convkit._lib._openmp cimport omp_get_thread_num

ctypedef fused floating:
    float
    double


# The valid columns of a row are [_first_column, _end_column): output columns q
# whose input column q*stride + offset lies in [0, W). Both are returned, not
# written through pointers, so that inside prange the variables they are
# assigned to are thread-private.
cdef inline int64_t _first_column(int64_t Q, int64_t stride, int64_t offset) noexcept nogil:
    cdef int64_t lo
    if offset >= 0:
        return 0
    lo = (-offset + stride - 1) // stride
    return Q if lo > Q else lo


cdef inline int64_t _max(int64_t a, int64_t b) noexcept nogil:
    return a if a > b else b


cdef inline int64_t _end_column(int64_t W, int64_t Q, int64_t stride,
                                int64_t offset) noexcept nogil:
    cdef int64_t hi
    if W - 1 - offset < 0:
        return 0
    hi = (W - 1 - offset) // stride + 1
    return Q if hi > Q else hi


cdef inline void _scatter_strided(floating *out, const floating *src, floating a,
                                  int64_t lo, int64_t hi, int64_t stride,
                                  int64_t offset) noexcept nogil:
    """out[q*stride + offset] += a * src[q] for q in [lo, hi)."""
    cdef int64_t q
    if stride == 1:
        for q in range(lo, hi):
            out[q + offset] += a * src[q]
    else:
        for q in range(lo, hi):
            out[q * stride + offset] += a * src[q]


cdef inline floating _sum8(const floating *v, int64_t L) noexcept nogil:
    """Sum of v[0:L] in a fixed order: 8 interleaved partial sums, then the tail."""
    cdef floating s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0
    cdef int64_t i, full = L - L % 8
    for i in range(0, full, 8):
        s0 = s0 + v[i]
        s1 = s1 + v[i + 1]
        s2 = s2 + v[i + 2]
        s3 = s3 + v[i + 3]
        s4 = s4 + v[i + 4]
        s5 = s5 + v[i + 5]
        s6 = s6 + v[i + 6]
        s7 = s7 + v[i + 7]
    for i in range(full, L):
        s0 = s0 + v[i]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


def all_finite(const floating[::1] a, int n_threads):
    """Whether every element of ``a`` is finite."""
    cdef int64_t n = a.shape[0], chunks = 16, chunk, t, lo, hi
    cdef int bad = 0
    if n == 0:
        return True
    chunk = (n + chunks - 1) // chunks
    for t in prange(chunks, schedule="static", nogil=True, num_threads=n_threads):
        lo = t * chunk
        hi = lo + chunk
        if hi > n:
            hi = n
        if lo < hi:
            if floating is float:
                bad += ck_kernels.nonfinite_f32(&a[lo], hi - lo)
            else:
                bad += ck_kernels.nonfinite_f64(&a[lo], hi - lo)
    return bad == 0


def grad_bias(const floating[:, :, ::1] grad_output,  # IN  (N, K, P*Q)
              floating[::1] out,                     # OUT (K,)
              int n_threads):
    """out[k] = sum over n of (sum over p*q of grad_output): fixed order per k."""
    cdef int64_t N = grad_output.shape[0], K = grad_output.shape[1]
    cdef int64_t L = grad_output.shape[2]
    cdef int64_t k, n
    cdef floating total
    for k in prange(K, schedule="static", nogil=True, num_threads=n_threads):
        total = 0
        for n in range(N):
            total = total + _sum8(&grad_output[n, k, 0], L)
        out[k] = total


def im2col(const floating[:, :, :, ::1] x,  # IN  (N, C, H, W)
           floating[::1] cols,              # OUT see below
           int64_t image_stride, int64_t row_stride,
           int64_t R, int64_t S, int64_t p0, int64_t Q,
           int64_t sh, int64_t sw, int64_t pt, int64_t pl,
           int64_t dh, int64_t dw, int n_threads):
    """Unfold output rows [p0, p0 + rows) of every image into columns.

    The padded input at tap (r, s) of output (p, q) of image n goes to
    cols[n*image_stride + ((c*R + r)*S + s)*row_stride + (p - p0)*Q + q]:
    image-major (N, C*R*S, rows*Q) with image_stride = C*R*S*rows*Q and
    row_stride = rows*Q, or the batched GEMM layout (C*R*S, N*rows*Q) with
    image_stride = rows*Q and row_stride = N*rows*Q.
    """
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t rows = cols.shape[0] // (N * C * R * S * Q)
    cdef int64_t task, n, c, r, s, p, q, ih, q_lo, q_hi, offset
    cdef const floating *xplane
    cdef floating *out
    for task in prange(N * C, schedule="static", nogil=True, num_threads=n_threads):
        n = task // C
        c = task % C
        xplane = &x[n, c, 0, 0]
        for r in range(R):
            for s in range(S):
                offset = s * dw - pl
                q_lo = _first_column(Q, sw, offset)
                q_hi = _max(_end_column(W, Q, sw, offset), q_lo)
                for p in range(rows):
                    out = &cols[n * image_stride + ((c * R + r) * S + s) * row_stride + p * Q]
                    ih = (p0 + p) * sh - pt + r * dh
                    if ih < 0 or ih >= H:
                        memset(out, 0, Q * sizeof(floating))
                        continue
                    for q in range(q_lo):
                        out[q] = 0
                    if sw == 1:
                        for q in range(q_lo, q_hi):
                            out[q] = xplane[ih * W + q + offset]
                    else:
                        for q in range(q_lo, q_hi):
                            out[q] = xplane[ih * W + q * sw + offset]
                    for q in range(q_hi, Q):
                        out[q] = 0


def col2im(const floating[::1] cols,  # IN     layout as in im2col
           floating[:, :, :, ::1] x,  # IN/OUT (N, C, H, W), accumulated into
           int64_t image_stride, int64_t row_stride,
           int64_t R, int64_t S, int64_t p0, int64_t Q,
           int64_t sh, int64_t sw, int64_t pt, int64_t pl,
           int64_t dh, int64_t dw, int n_threads):
    """Adjoint of im2col: add every column entry back to the pixel it was read from."""
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t rows = cols.shape[0] // (N * C * R * S * Q)
    cdef int64_t task, n, c, r, s, p, ih, q_lo, q_hi, offset
    cdef floating *xplane
    for task in prange(N * C, schedule="static", nogil=True, num_threads=n_threads):
        n = task // C
        c = task % C
        xplane = &x[n, c, 0, 0]
        for r in range(R):
            for s in range(S):
                offset = s * dw - pl
                q_lo = _first_column(Q, sw, offset)
                q_hi = _max(_end_column(W, Q, sw, offset), q_lo)
                for p in range(rows):
                    ih = (p0 + p) * sh - pt + r * dh
                    if ih < 0 or ih >= H:
                        continue
                    _scatter_strided(xplane + ih * W,
                                     &cols[n * image_stride + ((c * R + r) * S + s) * row_stride
                                           + p * Q],
                                     <floating> 1, q_lo, q_hi, sw, offset)


# ---- register-blocked direct kernels (see _direct.h) ----------------------

cdef extern from "_direct.h" nogil:
    int64_t ck_kvec_chunk_bytes
    int64_t ck_grid_pass_bytes
    enum:
        CK_KB
        CK_MASKED_TAPS
        CK_GW_KB
        CK_SLACK
        CK_DW_SMAX
    ctypedef void (*ck_fwd_f32_t)(const float *, const float *, const int64_t *, int64_t,
                                  int64_t, int64_t, int64_t, int64_t, int64_t, float *,
                                  int64_t, float *, int64_t, int64_t, int64_t, int64_t,
                                  const float *, int64_t)
    ctypedef void (*ck_fwd_f64_t)(const double *, const double *, const int64_t *, int64_t,
                                  int64_t, int64_t, int64_t, int64_t, int64_t, double *,
                                  int64_t, double *, int64_t, int64_t, int64_t, int64_t,
                                  const double *, int64_t)
    ctypedef void (*ck_fwdk_f32_t)(const float *, const float *, const int64_t *, int64_t,
                                   int64_t, int64_t, int64_t, int64_t, int64_t, float *,
                                   int64_t, float *, int64_t, int64_t, int64_t, int64_t,
                                   const float *, int64_t, const int64_t *, const int64_t *,
                                   int64_t)
    ctypedef void (*ck_fwdk_f64_t)(const double *, const double *, const int64_t *, int64_t,
                                   int64_t, int64_t, int64_t, int64_t, int64_t, double *,
                                   int64_t, double *, int64_t, int64_t, int64_t, int64_t,
                                   const double *, int64_t, const int64_t *, const int64_t *,
                                   int64_t)
    ctypedef void (*ck_gw_f32_t)(const float *, int64_t, int64_t, int64_t, const float *,
                                 int64_t, const int64_t *, int64_t, int64_t, int64_t,
                                 float *, int64_t)
    ctypedef void (*ck_gw_f64_t)(const double *, int64_t, int64_t, int64_t, const double *,
                                 int64_t, const int64_t *, int64_t, int64_t, int64_t,
                                 double *, int64_t)
    ctypedef void (*ck_gwk_f32_t)(const float *, int64_t, int64_t, int64_t, const float *,
                                  int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  const int64_t *, const int64_t *, int64_t, int64_t, int64_t,
                                  int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  int64_t, const float *, int64_t, float *, float *, int64_t,
                                  int64_t, int)
    ctypedef void (*ck_gwk_f64_t)(const double *, int64_t, int64_t, int64_t, const double *,
                                  int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  const int64_t *, const int64_t *, int64_t, int64_t, int64_t,
                                  int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  int64_t, const double *, int64_t, double *, double *,
                                  int64_t, int64_t, int)
    ctypedef int (*ck_gwr_f32_t)(const float *, int64_t, int64_t, int64_t, const float *,
                                  int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  int64_t, int64_t, const float *, int64_t, float *)
    ctypedef int (*ck_gwr_f64_t)(const double *, int64_t, int64_t, int64_t, const double *,
                                  int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  int64_t, int64_t, const double *, int64_t, double *)
    ctypedef void (*ck_fwdw_f32_t)(const float *, int64_t, int64_t, int64_t, int64_t,
                                   const float *, int64_t, int64_t, int64_t, int64_t, int64_t,
                                   int64_t, int64_t, float *, int64_t, int64_t, int64_t,
                                   float)
    ctypedef void (*ck_fwdw_f64_t)(const double *, int64_t, int64_t, int64_t, int64_t,
                                   const double *, int64_t, int64_t, int64_t, int64_t, int64_t,
                                   int64_t, int64_t, double *, int64_t, int64_t, int64_t,
                                   double)
    ctypedef void (*ck_transpose_f32_t)(const float *, int64_t, float *, int64_t, int64_t,
                                        int64_t)
    ctypedef void (*ck_transpose_f64_t)(const double *, int64_t, double *, int64_t, int64_t,
                                        int64_t)
    ctypedef int (*ck_nonfinite_f32_t)(const float *, int64_t)
    ctypedef int (*ck_nonfinite_f64_t)(const double *, int64_t)
    ctypedef void (*ck_col2ims_f32_t)(const float *, int64_t, int64_t, int64_t, int64_t,
                                      int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                      int64_t, float *, int64_t, int64_t, float *)
    ctypedef void (*ck_col2ims_f64_t)(const double *, int64_t, int64_t, int64_t, int64_t,
                                      int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                      int64_t, double *, int64_t, int64_t, double *)
    ctypedef void (*ck_col2im_f32_t)(const float *, int64_t, int64_t, int64_t, int64_t,
                                     int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                     float *, int64_t, int64_t)
    ctypedef void (*ck_col2im_f64_t)(const double *, int64_t, int64_t, int64_t, int64_t,
                                     int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                     double *, int64_t, int64_t)
    ctypedef void (*ck_fwdm_f32_t)(const float *, const float *, const int64_t *,
                                   const int64_t *, int64_t, int64_t, int64_t, int64_t,
                                   int64_t, int64_t, float *, int64_t, int64_t, const float *)
    ctypedef void (*ck_fwdm_f64_t)(const double *, const double *, const int64_t *,
                                   const int64_t *, int64_t, int64_t, int64_t, int64_t,
                                   int64_t, int64_t, double *, int64_t, int64_t, const double *)
    ctypedef void (*ck_gir_f32_t)(const float *, int64_t, const float *, int64_t, int64_t,
                                  int64_t, int64_t, float *)
    ctypedef void (*ck_gir_f64_t)(const double *, int64_t, const double *, int64_t, int64_t,
                                  int64_t, int64_t, double *)
    ctypedef struct ck_kernels_t:
        const char *isa
        ck_fwd_f32_t fwd_f32
        ck_fwd_f32_t fwd1_f32
        ck_fwdk_f32_t fwdk_f32
        ck_fwd_f64_t fwd_f64
        ck_fwd_f64_t fwd1_f64
        ck_fwdk_f64_t fwdk_f64
        int kvec_f32
        int kvec_f64
        ck_fwdk_f32_t fwdkw_f32
        ck_fwdk_f64_t fwdkw_f64
        int kvecw_f32
        int kvecw_f64
        ck_gw_f32_t gw_f32
        ck_gw_f64_t gw_f64
        ck_gw_f32_t gw1_f32
        ck_gw_f64_t gw1_f64
        ck_gwk_f32_t gwk_f32
        ck_gwk_f64_t gwk_f64
        int gwk_f32_block
        int gwk_f64_block
        int gwk_cols
        ck_gwr_f32_t gwr_f32
        ck_gwr_f64_t gwr_f64
        ck_nonfinite_f32_t nonfinite_f32
        ck_nonfinite_f64_t nonfinite_f64
        ck_col2im_f32_t col2im_f32
        ck_col2im_f64_t col2im_f64
        ck_col2ims_f32_t col2ims_f32
        ck_col2ims_f64_t col2ims_f64
        ck_gwk_f32_t gwkw_f32
        ck_gwk_f64_t gwkw_f64
        int gwkw_f32_block
        int gwkw_f64_block
        int gwkw_cols
        ck_fwd_f32_t fwds_f32
        ck_fwd_f64_t fwds_f64
        ck_fwdw_f32_t fwdw_f32
        ck_fwdw_f64_t fwdw_f64
        ck_fwd_f32_t fwdq_f32
        ck_fwd_f64_t fwdq_f64
        ck_transpose_f32_t transpose_f32
        ck_transpose_f64_t transpose_f64
        int kvec_qb
        int kvec_qt
        int kvecw_qb
        int kvecw_qt
        ck_gir_f32_t gir3_f32
        ck_gir_f32_t gir5_f32
        ck_gir_f64_t gir3_f64
        ck_gir_f64_t gir5_f64
        int gir3_q
        int gir5_q
        int vector_bytes
        ck_fwdm_f32_t fwdm_f32
        ck_fwdm_f64_t fwdm_f64
    ck_kernels_t ck_kernels
    void ck_select_kernels(const char *cap)
    int ck_fwd_kind(int64_t terms, int64_t taps, int64_t grid_len, int64_t itemsize)
    ck_fwd_f32_t ck_fwd_grid_f32(int64_t terms, int64_t taps, int64_t grid_len)
    ck_fwd_f64_t ck_fwd_grid_f64(int64_t terms, int64_t taps, int64_t grid_len)
    void ck_add_rows_f32(float *out, const float *src, int64_t n)
    void ck_add_rows_f64(double *out, const double *src, int64_t n)

import os as _os


def _select_kernels():
    """Pick the kernel variant for this CPU; CONVKIT_ISA=avx2|baseline caps it."""
    cdef bytes cap = _os.environ.get("CONVKIT_ISA", "").strip().lower().encode()
    ck_select_kernels(cap)


_select_kernels()

CHANNEL_BLOCK = CK_KB
MASKED_TAPS = CK_MASKED_TAPS
PLANE_SLACK = CK_SLACK
DEPTHWISE_MAX_WIDTH = CK_DW_SMAX


def channel_vector_block(itemsize, wide=False):
    """Output channels per block of the channel-vector forward kernel (by dtype size).

    ``wide``: of its wide-block variant, which pays where K/G fills it (the
    same block where the CPU's variant has none).
    """
    if wide:
        return ck_kernels.kvecw_f32 if itemsize == 4 else ck_kernels.kvecw_f64
    return ck_kernels.kvec_f32 if itemsize == 4 else ck_kernels.kvec_f64


def channel_vector_tile(wide=False):
    """(QB, QT): output positions per register block of the channel-vector forward.

    QB for its blocks, QT for the short ones of its plans (see
    CK_DEFINE_FORWARD_KVEC); ``wide`` as in channel_vector_block.
    """
    if wide:
        return ck_kernels.kvecw_qb, ck_kernels.kvecw_qt
    return ck_kernels.kvec_qb, ck_kernels.kvec_qt


def grad_input_rows_shape(S, itemsize):
    """(lanes, widest Q) of the grad_input-by-rows kernel for S kernel columns.

    lanes: input channels per vector (and per task); widest Q: the widest
    grad_output row it takes, 0 where this CPU's variant has no such kernel.
    """
    lanes = ck_kernels.vector_bytes // itemsize
    if S == 3 and (ck_kernels.gir3_f32 != NULL if itemsize == 4 else ck_kernels.gir3_f64 != NULL):
        return lanes, ck_kernels.gir3_q
    if S == 5 and (ck_kernels.gir5_f32 != NULL if itemsize == 4 else ck_kernels.gir5_f64 != NULL):
        return lanes, ck_kernels.gir5_q
    return lanes, 0


def has_masked_forward(itemsize):
    """Whether this CPU's variant has the forward on unpacked input (forward_masked)."""
    return (ck_kernels.fwdm_f32 if itemsize == 4 else ck_kernels.fwdm_f64) != NULL


def grad_weight_channel_block(itemsize, wide=False):
    """Output channels in the lanes of the channel-vector grad_weight kernel (by dtype size).

    With ``wide``, of its wide variant (the same on ISAs that have none).
    """
    if wide:
        return ck_kernels.gwkw_f32_block if itemsize == 4 else ck_kernels.gwkw_f64_block
    return ck_kernels.gwk_f32_block if itemsize == 4 else ck_kernels.gwk_f64_block


def grad_weight_column_block(wide=False):
    """Weight columns (c, r, s) per register block of the channel-vector grad_weight kernel."""
    return ck_kernels.gwkw_cols if wide else ck_kernels.gwk_cols


def kvec_chunk_bytes():
    """Bytes of a block's weights per input-channel pass of the channel-vector
    forward (set with the kernels at import; see ck_kvec_chunk in _direct.h)."""
    return ck_kvec_chunk_bytes


def grid_pass_bytes():
    """Bytes of a packed grid position per input-channel pass of the grid
    forward, for this CPU (set with the kernels at import; used by
    functional._grid_channel_pass)."""
    return ck_grid_pass_bytes


def _set_kvec_chunk_bytes(int64_t nbytes):
    """Set kvec_chunk_bytes (for tests: any value gives the same bits).

    Not thread-safe: only while no convolution runs.
    """
    global ck_kvec_chunk_bytes
    ck_kvec_chunk_bytes = max(1, nbytes)


def forward_kind(int64_t terms, int64_t taps, int64_t grid_len, int64_t itemsize):
    """The grid forward kernel for these sizes: "fwd", "fwds" or "fwdq" (see ck_fwd_kind)."""
    return ("fwd", "fwds", "fwdq")[ck_fwd_kind(terms, taps, grid_len, itemsize)]


def vector_lanes(itemsize):
    """Elements of ``itemsize`` bytes per vector of the direct kernels chosen at import."""
    return {"avx512f": 64, "avx2": 32}.get(kernel_isa(), 16) // itemsize


def kernel_isa():
    """Instruction set of the direct kernels chosen for this CPU at import."""
    return ck_kernels.isa.decode()


cdef inline void _gather_stride2(floating *out, const floating *src, int64_t lo,
                                 int64_t hi) noexcept nogil:
    """out[j] = src[2*j] for lo <= j < hi: a constant stride, which the compiler
    vectorizes with shuffles where a variable one stays scalar."""
    cdef int64_t j
    for j in range(lo, hi):
        out[j] = src[2 * j]


cdef inline void _copy_row(floating *out, const floating *src, int64_t lo,
                           int64_t hi) noexcept nogil:
    """out[j] = src[j] for lo <= j < hi."""
    cdef int64_t j
    for j in range(lo, hi):
        out[j] = src[j]


cdef inline void _pack_plane(const floating *xplane, floating *plane, int64_t H, int64_t W,
                             int64_t sh, int64_t sw, int64_t a, int64_t pt, int64_t offset,
                             int64_t rows, int64_t width, int64_t L,
                             bint zeroed) noexcept nogil:
    """plane[i*width + j] = xplane[(i*sh + a - pt)*W + j*sw + offset], 0 outside the input.

    ``rows`` x ``width`` elements, then zero slack up to L. With ``zeroed`` the
    plane's padding is already zero (a scratch packed before with the same
    geometry) and only the input's elements are written.
    """
    cdef int64_t i, j, h
    cdef int64_t j_lo = _first_column(width, sw, offset)
    cdef int64_t j_hi = _max(_end_column(W, width, sw, offset), j_lo)
    for i in range(rows):
        h = i * sh + a - pt
        if h < 0 or h >= H:
            if not zeroed:
                memset(plane + i * width, 0, width * sizeof(floating))
            continue
        if not zeroed:
            for j in range(j_lo):
                plane[i * width + j] = 0
            for j in range(j_hi, width):
                plane[i * width + j] = 0
        if sw == 1:
            # A loop the compiler vectorizes: rows are short, and a memcpy
            # call per row took most of the time (2048 rows of 14 floats).
            _copy_row(plane + i * width, xplane + h * W + offset, j_lo, j_hi)
        elif sw == 2:
            _gather_stride2(plane + i * width, xplane + h * W + offset, j_lo, j_hi)
        else:
            for j in range(j_lo, j_hi):
                plane[i * width + j] = xplane[h * W + j * sw + offset]
    if not zeroed:
        memset(plane + rows * width, 0, (L - rows * width) * sizeof(floating))


cdef inline void _pack_channel(const floating *xplane, floating *out, int64_t H, int64_t W,
                               int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t Hph,
                               int64_t Wph, int64_t L, bint zeroed) noexcept nogil:
    """The sh*sw phase planes of one (H, W) channel, L elements apart (see pack_phases).

    Plane (a, b) holds padded_x[i*sh + a, j*sw + b]. ``zeroed`` as in _pack_plane.
    """
    cdef int64_t a, b
    for a in range(sh):
        for b in range(sw):
            _pack_plane(xplane, out + (a * sw + b) * L, H, W, sh, sw, a, pt, b - pl, Hph, Wph,
                        L, zeroed)


cdef inline void _pack_shifted(const floating *xplane, floating *out, int64_t H, int64_t W,
                               int64_t sh, int64_t sw, int64_t dw, int64_t S, int64_t pt,
                               int64_t pl, int64_t Hph, int64_t Q, int64_t L,
                               bint zeroed) noexcept nogil:
    """The S*sh column-shifted planes of one (H, W) channel, L elements apart.

    plane (s, a) holds padded_x[i*sh + a, q*sw + s*dw] as a row-major Hph x Q
    grid, zero outside the input and in the slack after it: tap (r, s) then
    reads output position j = p*Q + q at a fixed offset, with no grid column
    wasted (see _shifted_layout in functional.py). ``zeroed`` as in _pack_plane.
    """
    cdef int64_t s, a
    for s in range(S):
        for a in range(sh):
            _pack_plane(xplane, out + (s * sh + a) * L, H, W, sh, sw, a, pt, s * dw - pl, Hph,
                        Q, L, zeroed)


def pack_phases(const floating[:, :, :, ::1] x,  # IN  (N, C, H, W)
                floating[:, :, :, ::1] out,      # OUT (N, C, sh*sw, plane_len)
                int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                int64_t Hph, int64_t Wph, int n_threads, int64_t origin=0):
    """out[n, c, a*sw + b, origin + i*Wph + j] = x[n, c, i*sh + a - pt, j*sw + b - pl], 0 outside.

    The ``origin`` elements before each plane and the slack after it are
    zeroed too. ``pt``/``pl`` may be negative (a crop).
    """
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t L = out.shape[3]
    cdef int64_t task
    cdef floating *o
    for task in prange(N * C, schedule="static", nogil=True, num_threads=n_threads):
        o = &out[task // C, task % C, 0, 0]
        if origin:
            memset(o, 0, origin * sizeof(floating))
        _pack_channel(&x[task // C, task % C, 0, 0], o + origin, H, W, sh, sw, pt, pl, Hph,
                      Wph, L - origin, False)


# cblas_sgemm / cblas_dgemm of a 64-bit-integer BLAS (see _threads.blas_gemm).
ctypedef void (*_sgemm_t)(int, int, int, int64_t, int64_t, int64_t, float, const float *,
                          int64_t, const float *, int64_t, float, float *,
                          int64_t) noexcept nogil
ctypedef void (*_dgemm_t)(int, int, int, int64_t, int64_t, int64_t, double, const double *,
                          int64_t, const double *, int64_t, double, double *,
                          int64_t) noexcept nogil

cdef enum:
    _ROW_MAJOR = 101
    _NO_TRANS = 111
    _TRANS = 112


def gemm_batch(size_t gemm,                          # cblas_?gemm of this dtype
               const floating[:, :, :, :] a,         # IN  (N, G, M, K), any strides
               const floating[:, :, :, :] b,         # IN  (N, G, K, N'), any strides
               floating[:, :, :, :] out,             # OUT (N, G, M, N'), rows contiguous
               bint a_trans, int64_t lda, bint b_trans, int64_t ldb, int64_t ldc,
               int n_threads):
    """out[n, g] = a[n, g] @ b[n, g]: one BLAS call per matrix, the calls split across threads.

    The caller holds BLAS to one thread and passes each operand's layout:
    row-major with leading dimension ``ld`` (trans False: element (i, j) at
    i*ld + j) or its transpose (trans True: at j*ld + i); ``out``'s rows are
    ``ldc`` apart. Every matrix is the same single-threaded call whatever
    the thread count, so the result does not depend on it. The OpenMP
    threads that run the calls are the kernels' own, often still awake from
    the last kernel, where a Python thread pool's thread has to be woken for
    every call.
    """
    cdef int64_t N = out.shape[0], G = out.shape[1], M = out.shape[2], Nc = out.shape[3]
    cdef int64_t K = a.shape[3]
    cdef int ta = _TRANS if a_trans else _NO_TRANS, tb = _TRANS if b_trans else _NO_TRANS
    cdef int64_t task, n, g
    if N * G * M * Nc == 0:
        return
    for task in prange(N * G, schedule="static", nogil=True, num_threads=n_threads):
        n = task // G
        g = task % G
        if floating is float:
            (<_sgemm_t> gemm)(_ROW_MAJOR, ta, tb, M, Nc, K, 1.0, &a[n, g, 0, 0], lda,
                              &b[n, g, 0, 0], ldb, 0.0, &out[n, g, 0, 0], ldc)
        else:
            (<_dgemm_t> gemm)(_ROW_MAJOR, ta, tb, M, Nc, K, 1.0, &a[n, g, 0, 0], lda,
                              &b[n, g, 0, 0], ldb, 0.0, &out[n, g, 0, 0], ldc)


cdef inline void _transpose(const floating *src, int64_t lds, floating *dst, int64_t ldd,
                            int64_t rows, int64_t cols) noexcept nogil:
    """dst[j*ldd + i] = src[i*lds + j] for i < rows, j < cols (ck_transpose_*)."""
    if floating is float:
        ck_kernels.transpose_f32(src, lds, dst, ldd, rows, cols)
    else:
        ck_kernels.transpose_f64(src, lds, dst, ldd, rows, cols)


def transpose(const floating[:, :] src, floating[:, :] dst):
    """dst = src.T through the kernels' transpose (for tests).

    Each row of both must be contiguous; the row strides may be anything,
    negative included.
    """
    if src.strides[1] != sizeof(floating) or dst.strides[1] != sizeof(floating):
        raise ValueError(f"src {tuple(src.shape)} and dst {tuple(dst.shape)} must have "
                         f"contiguous rows")
    if dst.shape[0] != src.shape[1] or dst.shape[1] != src.shape[0]:
        raise ValueError(f"dst {tuple(dst.shape)} must have the shape of src.T, "
                         f"{(src.shape[1], src.shape[0])}")
    if src.shape[0] * src.shape[1] == 0:
        return
    _transpose(&src[0, 0], src.strides[0] // <int64_t>sizeof(floating), &dst[0, 0],
               dst.strides[0] // <int64_t>sizeof(floating), src.shape[0], src.shape[1])


def pack_weights(const floating[:, :, :, :, :] w,  # IN  (G, K/G, C/G, R, S), any strides
                 floating[:, :, :, :, ::1] out,     # OUT (G, blocks, C/G, R*S, kb)
                 int n_threads):
    """out[g, b, c, r*S + s, k] = w[g, b*kb + k, c, r, s]; 0 where b*kb + k >= K/G.

    One task per (g, b) and run of input channels c, writing its tile of out
    (about 4096 elements, in cache). ``w`` may be any strided view
    (grad_input passes its flipped, tap-sliced weights, with K and C/G
    swapped). Each tile is a transpose of kb output channels by the run's
    taps: in 8 x 8 (float64 4 x 4) blocks through vector registers
    (ck_transpose_*) where a channel's taps lie at a uniform stride; one
    element at a time otherwise. On a 2-core Zen 4 EPYC (2 threads) the
    blocks took packing 256x256x3x3 weights from 189 to 98 us, grad_input's
    flipped view of them from 368 to 134 us (a copy: 50 us), and 64x64x3x3
    from 26 to 9 us; inside resnet-3x3-c256's grad_input, where the weights
    come from memory, its share of the time fell from 3.3% to 2.3% (perf).
    """
    cdef int64_t G = w.shape[0], Kg = w.shape[1], Cg = w.shape[2], R = w.shape[3]
    cdef int64_t S = w.shape[4], blocks = out.shape[1], kb = out.shape[4]
    cdef int64_t isz = sizeof(floating), RS = R * S
    cdef int64_t sk = w.strides[1] // isz, sc = w.strides[2] // isz
    cdef int64_t sr = w.strides[3] // isz, ss = w.strides[4] // isz
    # Runs of whole 8-column blocks where a run is several channels.
    cdef int64_t run = max(1, 4096 // (RS * kb))
    cdef int64_t runs
    # A channel's taps at one stride (ss, +1 or -1 in practice): its block
    # of kb x R*S is a matrix; with ss == 1 and channels RS apart, a run's.
    cdef bint uniform = sr == S * ss
    cdef bint run_matrix = uniform and ss == 1 and sc == RS
    cdef int64_t task, g, b, c0, c1, c, k, r, s, t, kcount
    cdef const floating *src
    cdef floating *o
    if run >= 8:
        run -= run % 8
    runs = (Cg + run - 1) // run
    if G * blocks * Cg == 0:
        return
    for task in prange(G * blocks * runs, schedule="static", nogil=True,
                       num_threads=n_threads):
        g = task // (blocks * runs)
        b = task // runs % blocks
        c0 = task % runs * run
        c1 = min(c0 + run, Cg)
        o = &out[g, b, c0, 0, 0]
        kcount = min(kb, Kg - b * kb)
        src = &w[g, b * kb, c0, 0, 0]
        if sk == 1:
            # Output channels adjacent in w (grad_input's scatter form passes
            # the weights transposed): a contiguous run of kb per tap, where
            # the loop below reads one element per cache line (mnist-conv2's
            # 64x800: 154 -> 34 us on one Zen 4 thread, 5% of its grad_input).
            for c in range(c1 - c0):
                for r in range(R):
                    for s in range(S):
                        t = ((c * R + r) * S + s) * kb
                        for k in range(kcount):
                            o[t + k] = src[k + c * sc + r * sr + s * ss]
        elif run_matrix:
            _transpose(src, sk, o, kb, kcount, (c1 - c0) * RS)
        elif uniform:
            # Tap t at src + t*ss: from its lowest address, column j is tap
            # t = j (ss > 0) or RS - 1 - j (ss < 0, a flipped kernel).
            for c in range(c1 - c0):
                if ss > 0:
                    _transpose(src + c * sc, sk, o + c * RS * kb, kb, kcount, RS)
                else:
                    _transpose(src + c * sc + (RS - 1) * ss, sk, o + (c * RS + RS - 1) * kb,
                               -kb, kcount, RS)
        else:
            for k in range(kcount):
                for c in range(c1 - c0):
                    for r in range(R):
                        for s in range(S):
                            o[((c * R + r) * S + s) * kb + k] = src[k * sk + c * sc
                                                                     + r * sr + s * ss]
        for k in range(kcount, kb):
            for t in range((c1 - c0) * RS):
                o[t * kb + k] = 0


cdef inline void _forward_block(const floating *x, const floating *w, const int64_t *tap_off,
                                int64_t Cg, int64_t RS, int64_t chan_stride, int64_t Wph,
                                int64_t Q, int64_t P, floating *grid, int64_t gstride,
                                floating *y, int64_t ks, int64_t rs, int64_t cs,
                                int64_t kcount, const floating *bias, int64_t kb,
                                bint channel_vector, int64_t S, const int64_t *order,
                                const int64_t *plan, int64_t nblocks,
                                int64_t c_pass) noexcept nogil:
    """One block of output channels of one image, written at y[k*ks + p*rs + q*cs].

    The channel-vector kernel runs the ``nblocks`` blocks of its ``plan``
    over the positions in ``order`` (see _channel_vector_plan in
    functional.py). The grid kernels sum the input channels in passes of
    ``c_pass`` (0: one pass), with the same sums as one pass.
    """
    cdef ck_kernels_t kern = ck_kernels
    if floating is float:
        if channel_vector:
            (kern.fwdkw_f32 if kb == kern.kvecw_f32 else kern.fwdk_f32)(
                x, w, tap_off, Cg, RS, chan_stride, Wph, Q, P, grid, gstride, y, ks, rs, cs,
                kcount, bias, S, order, plan, nblocks)
        else:
            (kern.fwd1_f32 if kb != CK_KB else ck_fwd_grid_f32(Cg * RS, RS, P * Wph))(
                x, w, tap_off, Cg, RS, chan_stride, Wph, Q, P, grid, gstride, y, ks, rs, cs,
                kcount, bias, c_pass)
    else:
        if channel_vector:
            (kern.fwdkw_f64 if kb == kern.kvecw_f64 else kern.fwdk_f64)(
                x, w, tap_off, Cg, RS, chan_stride, Wph, Q, P, grid, gstride, y, ks, rs, cs,
                kcount, bias, S, order, plan, nblocks)
        else:
            (kern.fwd1_f64 if kb != CK_KB else ck_fwd_grid_f64(Cg * RS, RS, P * Wph))(
                x, w, tap_off, Cg, RS, chan_stride, Wph, Q, P, grid, gstride, y, ks, rs, cs,
                kcount, bias, c_pass)


def forward_local(const floating[:, :, :, ::1] x,           # IN  (N, C, H, W)
                  const floating[:, :, :, :, ::1] wpk,      # IN  (G, blocks, C/G, R*S, kb)
                  const int64_t[::1] tap_off,               # IN  (R*S,)
                  const floating[::1] bias,                 # IN  (K,)
                  floating[:, :, :, :] y,                   # OUT (N, K, P, Q), any strides
                  floating[:, ::1] scratch,  # ZEROED (n_threads, C/G*planes*plane_len + grid)
                  int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t Hph, int64_t Wph,
                  int64_t plane_len, bint per_image, bint channel_vector, int64_t S,
                  const int64_t[::1] order, const int64_t[:, ::1] plan, bint shifted,
                  int64_t dw, int64_t c_pass, int n_threads, int64_t origin=0):
    """forward_packed with each task packing the input channels it reads itself.

    The C/G channels of a group of one image are packed into the thread's
    scratch, where they stay in cache, instead of into a packed copy of the
    whole input that the kernels then read back from memory. With
    ``per_image`` a task packs once and runs every channel block of its
    (image, group); otherwise each (image, group, block) task packs (for
    narrow groups, where packing is cheap and the extra tasks balance the
    threads). The sums are those of forward_packed, in the same order.

    With ``shifted`` the channels are packed as S*sh column-shifted planes of
    Hph x Q (``Wph`` must then be Q) instead of sh*sw phase planes: no grid
    column is computed in vain and a contiguous ``y`` is written straight
    from the kernels' registers. ``scratch`` must come zeroed: each thread's
    tasks pack the same positions of it, so the padding stays zero and only
    the input's elements are copied. A plane's first row starts ``origin``
    elements into it (see pack_phases).
    """
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t G = wpk.shape[0], blocks = wpk.shape[1], Cg = wpk.shape[2]
    cdef int64_t RS = wpk.shape[3], kb = wpk.shape[4]
    cdef int64_t K = y.shape[1], P = y.shape[2], Q = y.shape[3]
    cdef int64_t Kg = K // G
    cdef int64_t chan_stride = (S * sh if shifted else sh * sw) * plane_len
    cdef int64_t gstride = (scratch.shape[1] - Cg * chan_stride) // kb
    cdef int64_t per_task = 1 if per_image else blocks
    cdef int64_t ks = y.strides[1] // sizeof(floating), rs = y.strides[2] // sizeof(floating)
    cdef int64_t cs = y.strides[3] // sizeof(floating)
    cdef int64_t task, n, g, blk, b0, b1, c, k0, kcount
    cdef floating *xs
    for task in prange(N * G * per_task, schedule="static", nogil=True,
                       num_threads=n_threads):
        n = task // (G * per_task)
        g = (task // per_task) % G
        b0 = 0 if per_image else task % per_task
        b1 = blocks if per_image else b0 + 1
        xs = &scratch[omp_get_thread_num(), 0]
        for c in range(Cg):
            if shifted:
                _pack_shifted(&x[n, g * Cg + c, 0, 0], xs + c * chan_stride, H, W, sh, sw, dw,
                              S, pt, pl, Hph, Wph, plane_len, True)
            else:
                _pack_channel(&x[n, g * Cg + c, 0, 0], xs + c * chan_stride + origin, H, W,
                              sh, sw, pt, pl, Hph, Wph, plane_len - origin, True)
        for blk in range(b0, b1):
            k0 = blk * kb
            kcount = Kg - k0
            if kcount > kb:
                kcount = kb
            _forward_block(xs, &wpk[g, blk, 0, 0, 0], &tap_off[0], Cg, RS, chan_stride, Wph,
                           Q, P, xs + Cg * chan_stride, gstride, &y[n, g * Kg + k0, 0, 0],
                           ks, rs, cs, kcount, &bias[g * Kg + k0], kb, channel_vector, S,
                           &order[0], &plan[0, 0], plan.shape[0], c_pass)


def forward_depthwise(const floating[:, :, :, ::1] x,  # IN  (N, C, H, W)
                      const floating[:, ::1] w,           # IN  (K, R*S), finite
                      const floating[::1] bias,           # IN  (K,)
                      floating[:, :, :, :] y,             # OUT (N, K, P, Q), column stride 1
                      int64_t R, int64_t S, int64_t sh, int64_t pt, int64_t pl, int64_t dh,
                      int64_t dw, int n_threads):
    """y = conv of x with one input channel per group (K/C output channels each), column stride 1.

    Reads x and writes y in place, one task per output plane (see
    CK_DEFINE_FORWARD_DW in _direct.h): no packing and no scratch. ``y``
    may be a strided view whose columns are contiguous.
    """
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t K = y.shape[1], P = y.shape[2], Q = y.shape[3]
    cdef int64_t m = K // C, x_len = N * C * H * W
    cdef int64_t rs = y.strides[2] // sizeof(floating)
    cdef int64_t task, n, k
    cdef ck_kernels_t kern = ck_kernels
    for task in prange(N * K, schedule="static", nogil=True, num_threads=n_threads):
        n = task // K
        k = task % K
        if floating is float:
            kern.fwdw_f32(&x[0, 0, 0, 0], x_len, (n * C + k // m) * H * W, H, W, &w[k, 0], R,
                          S, sh, pt, pl, dh, dw, &y[n, k, 0, 0], rs, P, Q, bias[k])
        else:
            kern.fwdw_f64(&x[0, 0, 0, 0], x_len, (n * C + k // m) * H * W, H, W, &w[k, 0], R,
                          S, sh, pt, pl, dh, dw, &y[n, k, 0, 0], rs, P, Q, bias[k])


cdef inline void _add3(floating *a, floating *b, floating *c, floating wa, floating wb,
                       floating wc, const floating *g, int64_t lo, int64_t hi) noexcept nogil:
    """a[j] += wa*g[j], b[j] += wb*g[j], c[j] += wc*g[j] for j in [lo, hi) (distinct rows)."""
    cdef int64_t j
    cdef floating v
    for j in range(lo, hi):
        v = g[j]
        a[j] += wa * v
        b[j] += wb * v
        c[j] += wc * v


def grad_input_depthwise_scatter(const floating[:, :, :, ::1] gy,  # IN  (N, C, P, Q)
                                 const floating[:, ::1] w,          # IN  (C, R*S)
                                 floating[:, :, :, ::1] gx,         # OUT (N, C, H, W)
                                 floating[:, ::1] scratch,          # (n_threads, H*sw*ceil(W/sw))
                                 int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t pt,
                                 int64_t pl, int64_t dh, int64_t dw, int n_threads):
    """grad_input of a depthwise convolution (one input and one output channel per group).

    One task per plane. Its columns are split by phase (column w = m*sw + b
    goes to row (h, b) of the thread's scratch at m), so that each tap
    (r, s) of each grad_output row adds its products to a contiguous run of
    one phase row: the column tap s reads phase b = (s*dw - pl) mod sw,
    shifted by t = floor((s*dw - pl) / sw). Taps go column by column (each
    column's range of grad_output columns worked out once), then rows and
    tap rows in order; the phases are then interleaved into the plane.
    Only the real products, none with the padding, and the scratch stays
    in L1 or L2. The sums do not depend on the thread count.
    """
    cdef int64_t N = gx.shape[0], C = gx.shape[1], H = gx.shape[2], W = gx.shape[3]
    cdef int64_t P = gy.shape[2], Q = gy.shape[3]
    cdef int64_t Wm = (W + sw - 1) // sw
    cdef int64_t task, n, c, i, r, s, h, j, j_lo, j_hi, off, b, t, m
    cdef floating wv
    cdef floating *ph
    cdef floating *prow
    cdef floating *odd
    cdef floating *gxrow
    cdef const floating *gyrow
    for task in prange(N * C, schedule="static", nogil=True, num_threads=n_threads):
        n = task // C
        c = task % C
        ph = &scratch[omp_get_thread_num(), 0]
        memset(ph, 0, H * sw * Wm * sizeof(floating))
        for s in range(S):
            off = s * dw - pl
            b = (off % sw + sw) % sw  # C's % (cdivision) keeps off's sign
            t = (off - b) // sw       # exact
            # the j < Q with 0 <= j * sw + off < W
            j_lo = (-off + sw - 1) // sw if off < 0 else 0
            j_hi = (W - off + sw - 1) // sw if W > off else 0
            if j_hi > Q:
                j_hi = Q
            for i in range(P):
                gyrow = &gy[n, c, i, 0]
                h = i * sh - pt
                if R == 3 and h >= 0 and h + 2 * dh < H:
                    # the three tap rows in one pass over the run: each value
                    # loaded once, each row's sums in the same order
                    prow = ph + (h * sw + b) * Wm + t
                    _add3(prow, prow + dh * sw * Wm, prow + 2 * dh * sw * Wm,
                          w[c, s], w[c, S + s], w[c, 2 * S + s], gyrow, j_lo, j_hi)
                    continue
                for r in range(R):
                    h = i * sh - pt + r * dh
                    if h < 0 or h >= H:
                        continue
                    prow = ph + (h * sw + b) * Wm + t
                    wv = w[c, r * S + s]
                    for j in range(j_lo, j_hi):
                        prow[j] += wv * gyrow[j]
        for h in range(H):
            gxrow = &gx[n, c, h, 0]
            prow = ph + h * sw * Wm
            if sw == 2:
                odd = prow + Wm
                for m in range(W // 2):
                    gxrow[2 * m] = prow[m]
                    gxrow[2 * m + 1] = odd[m]
                if W % 2:
                    gxrow[W - 1] = prow[W // 2]
            else:
                for b in range(sw):
                    for m in range((W - b + sw - 1) // sw):
                        gxrow[m * sw + b] = prow[b * Wm + m]


cdef struct _BlockTask:
    int64_t n, g, blk, k0, kcount


cdef inline _BlockTask _block_task(int64_t task, int64_t G, int64_t blocks, int64_t kb,
                                   int64_t Kg) noexcept nogil:
    """Task ``task`` of N * G * blocks: image n, group g, block blk of kb output
    channels, its first channel k0 in the group and its count (the last may be short)."""
    cdef _BlockTask t
    t.n = task // (G * blocks)
    t.g = (task // blocks) % G
    t.blk = task % blocks
    t.k0 = t.blk * kb
    t.kcount = min(kb, Kg - t.k0)
    return t


def forward_packed(const floating[:, :, :, ::1] xpk,      # IN  (N, C, phases, plane_len)
                   const floating[:, :, :, :, ::1] wpk,   # IN  (G, blocks, C/G, R*S, kb)
                   const int64_t[::1] tap_off,            # IN  (R*S,)
                   const floating[::1] bias,              # IN  (K,)
                   floating[:, :, :, :] y,                # OUT (N, K, P, Q), any strides
                   floating[:, ::1] scratch,              # (n_threads, kb * gstride)
                   int64_t Wph, bint channel_vector, int64_t S, const int64_t[::1] order,
                   const int64_t[:, ::1] plan, int64_t c_pass, int n_threads):
    """y = conv of the packed input with the packed weights (see _direct.h).

    kb (the weights' last axis) selects the kernel: CK_KB output channels
    over grid vectors, 1 channel over grid vectors, or, with
    ``channel_vector``, channel_vector_block() channels in the vector lanes.
    The channel-vector kernel runs the blocks of ``plan`` over the
    positions in ``order`` (functional._channel_vector_plan; S taps per
    kernel row); the grid kernels take any one-row plan and sum the input
    channels in passes of ``c_pass`` (0: one pass).
    """
    cdef int64_t N = xpk.shape[0], C = xpk.shape[1]
    cdef int64_t chan_stride = xpk.shape[2] * xpk.shape[3]
    cdef int64_t G = wpk.shape[0], blocks = wpk.shape[1], Cg = wpk.shape[2]
    cdef int64_t RS = wpk.shape[3], kb = wpk.shape[4]
    cdef int64_t K = y.shape[1], P = y.shape[2], Q = y.shape[3]
    cdef int64_t ks = y.strides[1] // sizeof(floating), rs = y.strides[2] // sizeof(floating)
    cdef int64_t cs = y.strides[3] // sizeof(floating)
    cdef int64_t Kg = K // G, gstride = scratch.shape[1] // kb
    cdef int64_t task
    cdef _BlockTask t
    for task in prange(N * G * blocks, schedule="static", nogil=True,
                       num_threads=n_threads):
        t = _block_task(task, G, blocks, kb, Kg)
        _forward_block(&xpk[t.n, t.g * Cg, 0, 0], &wpk[t.g, t.blk, 0, 0, 0], &tap_off[0], Cg,
                       RS, chan_stride, Wph, Q, P, &scratch[omp_get_thread_num(), 0], gstride,
                       &y[t.n, t.g * Kg + t.k0, 0, 0], ks, rs, cs, t.kcount,
                       &bias[t.g * Kg + t.k0], kb, channel_vector, S, &order[0], &plan[0, 0],
                       plan.shape[0], c_pass)


def forward_masked(const floating[:, :, ::1] x,             # IN  (N, C, >= H*W)
                   const floating[:, :, :, :, ::1] wpk,     # IN  (G, blocks, C/G, R*S, CK_KB)
                   const int64_t[::1] row_off,              # IN  (R,) r*dh - top padding
                   const int64_t[::1] col_off,              # IN  (S,) s*dw - left padding
                   const floating[::1] bias,                # IN  (K,)
                   floating[:, :, :, ::1] y,                # OUT (N, K, H, W)
                   int n_threads):
    """y = conv(x, w) + bias at stride 1 with y the size of x, x read where it lies.

    The grid forward's sums on the zero-padded planes, term for term (see
    CK_DEFINE_FORWARD_MASKED in _direct.h), without packing them: one task
    per (image, group, block of CK_KB output channels). Only where
    has_masked_forward(); the caller checks the geometry.
    """
    cdef int64_t N = x.shape[0], H = y.shape[2], W = y.shape[3], cs = x.shape[2]
    cdef int64_t G = wpk.shape[0], blocks = wpk.shape[1], Cg = wpk.shape[2]
    cdef int64_t R = row_off.shape[0], S = col_off.shape[0]
    cdef int64_t K = y.shape[1], Kg = K // G, ks = H * W
    cdef int64_t task
    cdef _BlockTask t
    cdef ck_kernels_t kern = ck_kernels
    for task in prange(N * G * blocks, schedule="static", nogil=True,
                       num_threads=n_threads):
        t = _block_task(task, G, blocks, CK_KB, Kg)
        if floating is float:
            kern.fwdm_f32(&x[t.n, t.g * Cg, 0], &wpk[t.g, t.blk, 0, 0, 0], &row_off[0],
                          &col_off[0], R, S, Cg, cs, H, W,
                          &y[t.n, t.g * Kg + t.k0, 0, 0], ks, t.kcount, &bias[t.g * Kg + t.k0])
        else:
            kern.fwdm_f64(&x[t.n, t.g * Cg, 0], &wpk[t.g, t.blk, 0, 0, 0], &row_off[0],
                          &col_off[0], R, S, Cg, cs, H, W,
                          &y[t.n, t.g * Kg + t.k0, 0, 0], ks, t.kcount, &bias[t.g * Kg + t.k0])


def grad_weight_packed(const floating[:, :, ::1] gy_grid,   # IN  (N, K, P*Wph) zero at q >= Q
                       const floating[:, :, :, ::1] xpk,    # IN  (N, C, phases, plane_len)
                       const int64_t[::1] tap_off,          # IN  (R*S,)
                       floating[:, :, ::1] gw,              # OUT (K, C/G, R*S)
                       int64_t groups, int n_threads):
    """gw[k, c, t] = sum over images and grid of gy_grid[n, k] * tap t of channel c.

    One task per (block of CK_GW_KB channels, input channel) sums every image
    in order, so the result does not depend on the thread count.
    """
    cdef int64_t N = xpk.shape[0]
    cdef int64_t x_nstride = xpk.shape[1] * xpk.shape[2] * xpk.shape[3]
    cdef int64_t chan_stride = xpk.shape[2] * xpk.shape[3]
    cdef int64_t K = gw.shape[0], Cg = gw.shape[1], RS = gw.shape[2]
    cdef int64_t grid_len = gy_grid.shape[2], Kg = K // groups
    cdef int64_t blocks = (Kg + CK_GW_KB - 1) // CK_GW_KB
    cdef int64_t task, g, blk, c, k0, kcount
    cdef ck_kernels_t kern = ck_kernels
    for task in prange(groups * blocks * Cg, schedule="static", nogil=True,
                       num_threads=n_threads):
        g = task // (blocks * Cg)
        blk = (task // Cg) % blocks
        c = task % Cg
        k0 = g * Kg + blk * CK_GW_KB
        kcount = Kg - blk * CK_GW_KB
        if kcount > CK_GW_KB:
            kcount = CK_GW_KB
        if floating is float:
            kern.gw_f32(&gy_grid[0, k0, 0], grid_len, K * grid_len, kcount,
                        &xpk[0, g * Cg + c, 0, 0], x_nstride, &tap_off[0], RS, N, grid_len,
                        &gw[k0, c, 0], Cg * RS)
        else:
            kern.gw_f64(&gy_grid[0, k0, 0], grid_len, K * grid_len, kcount,
                        &xpk[0, g * Cg + c, 0, 0], x_nstride, &tap_off[0], RS, N, grid_len,
                        &gw[k0, c, 0], Cg * RS)


def grad_weight_channel_vector(const floating[:, :, ::1] gy,     # IN  (N, K, P*Q)
                               const floating[:, :, ::1] x,       # IN  (N, C, >= H*W)
                               const int64_t[::1] roff,           # IN  (R*S,) r*dh - pt
                               const int64_t[::1] soff,           # IN  (R*S,) s*dw - pl
                               const floating[::1] zrow,          # IN  (>= W,) zeros
                               const int64_t[::1] bounds,         # IN  (splits + 1,) image runs
                               floating[:, :, :, ::1] gw,         # OUT (splits, K, C/G, R*S)
                               floating[:, ::1] scratch,          # (n_threads, see below)
                               int64_t H, int64_t W, int64_t P, int64_t Q, int64_t sh,
                               int64_t sw, int64_t p_lo, int64_t p_hi, int64_t q_lo,
                               int64_t q_hi, int64_t cols_per_task, int64_t chunk_rows,
                               bint wide, bint exact, int n_threads):
    """gw[i, k, c, t] = sum over images [bounds[i], bounds[i+1]) and output
    positions of gy[n, g*K/G + k, pos] * tap t of channel c of group g.

    Each channel of x is an H x W image (rows W apart) at the start of its
    row of x: the input itself, or a zero-padded copy (then with pt = pl =
    0 in roff and soff). One task per (image run, group, block of
    grad_weight_channel_block() output channels, run of cols_per_task
    columns) sums its images in order, so the result does not depend on
    the thread count, on cols_per_task or on ``wide`` (the kernel's wide
    variant, grad_weight_channel_block(itemsize, True) channels a block and
    grad_weight_column_block(True) columns). The kernel reads x in place (see
    _direct.h): output rows [p_lo, p_hi) and columns [q_lo, q_hi) read
    inside the image for every tap. With ``exact`` (finite gy, x in place)
    the kernel leaves out the padding's terms, taking the columns
    tap-major. Each thread's scratch row holds the
    kernel's accumulators and transposed chunk of grad_output:
    ceil(cols_per_task / tb) * tb + chunk_rows * Q rows of kb.
    """
    cdef int64_t N = x.shape[0], C = x.shape[1], chan_stride = x.shape[2]
    cdef int64_t splits = gw.shape[0], K = gw.shape[1], Cg = gw.shape[2], RS = gw.shape[3]
    cdef int64_t G = C // Cg, Kg = K // G, ncols = Cg * RS
    cdef ck_gwk_f32_t gwk_f32 = ck_kernels.gwkw_f32 if wide else ck_kernels.gwk_f32
    cdef ck_gwk_f64_t gwk_f64 = ck_kernels.gwkw_f64 if wide else ck_kernels.gwk_f64
    cdef int64_t kb
    if floating is float:
        kb = ck_kernels.gwkw_f32_block if wide else ck_kernels.gwk_f32_block
    else:
        kb = ck_kernels.gwkw_f64_block if wide else ck_kernels.gwk_f64_block
    cdef int64_t kblocks = (Kg + kb - 1) // kb
    cdef int64_t runs = (ncols + cols_per_task - 1) // cols_per_task
    cdef int64_t per_split = G * kblocks * runs
    cdef int64_t task, i, n0, n1, g, blk, run, col0, count, kcount
    cdef floating *work
    for task in prange(splits * per_split, schedule="static", nogil=True,
                       num_threads=n_threads):
        i = task // per_split
        g = (task // (kblocks * runs)) % G
        blk = (task // runs) % kblocks
        run = task % runs
        n0 = bounds[i]
        n1 = bounds[i + 1]
        col0 = run * cols_per_task
        count = ncols - col0
        if count > cols_per_task:
            count = cols_per_task
        kcount = Kg - blk * kb
        if kcount > kb:
            kcount = kb
        work = &scratch[omp_get_thread_num(), 0]
        if floating is float:
            gwk_f32(&gy[n0, g * Kg + blk * kb, 0], K * P * Q, P * Q, kcount,
                    &x[n0, g * Cg, 0], C * chan_stride, chan_stride, H, W, sh, sw,
                    &roff[0], &soff[0], RS, col0, count, n1 - n0, P, Q, p_lo,
                    p_hi, q_lo, q_hi, &zrow[0], chunk_rows, work,
                    &gw[i, g * Kg + blk * kb, 0, 0], Cg * RS, Cg, exact)
        else:
            gwk_f64(&gy[n0, g * Kg + blk * kb, 0], K * P * Q, P * Q, kcount,
                    &x[n0, g * Cg, 0], C * chan_stride, chan_stride, H, W, sh, sw,
                    &roff[0], &soff[0], RS, col0, count, n1 - n0, P, Q, p_lo,
                    p_hi, q_lo, q_hi, &zrow[0], chunk_rows, work,
                    &gw[i, g * Kg + blk * kb, 0, 0], Cg * RS, Cg, exact)


def grad_weight_depthwise(const floating[:, :, :, ::1] gy,  # IN  (N, K, P, Q)
                          const floating[:, :, :, ::1] x,   # IN  (N, C, H, W), C == groups
                          const int64_t[::1] tap_off,       # IN  (R*S,)
                          floating[:, :, ::1] gw,           # OUT (K, 1, R*S)
                          const floating[:, ::1] masks,     # IN  (S, >= rows*Q + 16) bit masks
                          floating[:, ::1] scratch,  # ZEROED (n_threads, images*(sh*sw*plane_len + grid_len) + R*S)
                          int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t Hph,
                          int64_t Wph, int64_t plane_len, int64_t images, int64_t R,
                          int64_t dh, int64_t rows, int n_threads):
    """grad_weight of a convolution with one input channel per group.

    One task per output channel k sums every image in order, so the result
    does not depend on the thread count. With ``rows`` > 0 (column stride
    and dilation 1) the row kernel reads x and grad_output where they lie,
    ``rows`` output rows at a time, its lanes cleared by ``masks`` (see
    _direct.h and functional._depthwise_masks), for every channel whose
    grad_output is finite: its cleared lanes would hide what 0 * inf gives.
    Other channels pack, for ``images`` images at a time, their input
    channel's phase planes and grad_output's plane (on the Wph grid, zero
    past column Q) into the thread's scratch.
    ``scratch`` must come zeroed: its padding and grid columns then stay
    zero and only the input's and grad_output's elements are copied.
    """
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t K = gy.shape[1], P = gy.shape[2], Q = gy.shape[3]
    cdef int64_t RS = gw.shape[2], Kg = K // C, S = RS // R
    cdef int64_t chan_stride = sh * sw * plane_len, grid_len = P * Wph
    cdef int64_t gy_len = N * K * P * Q, x_len = N * C * H * W
    cdef int64_t k, n0, n1, i, p, q, t
    cdef int bad
    cdef floating *xs
    cdef floating *grid
    cdef floating *part
    for k in prange(K, schedule="static", nogil=True, num_threads=n_threads):
        xs = &scratch[omp_get_thread_num(), 0]
        grid = xs + images * chan_stride
        part = grid + images * grid_len
        if rows:
            if floating is float:
                bad = ck_kernels.gwr_f32(&gy[0, 0, 0, 0], gy_len, k * P * Q, K * P * Q,
                                         &x[0, 0, 0, 0], x_len, (k // Kg) * H * W, C * H * W,
                                         N, H, W, P, Q, R, S, sh, pt, pl, dh, rows, &masks[0, 0],
                                         masks.shape[1], &gw[k, 0, 0])
            else:
                bad = ck_kernels.gwr_f64(&gy[0, 0, 0, 0], gy_len, k * P * Q, K * P * Q,
                                         &x[0, 0, 0, 0], x_len, (k // Kg) * H * W, C * H * W,
                                         N, H, W, P, Q, R, S, sh, pt, pl, dh, rows, &masks[0, 0],
                                         masks.shape[1], &gw[k, 0, 0])
            if not bad:
                continue
        n0 = 0
        while n0 < N:
            n1 = n0 + images
            if n1 > N:
                n1 = N
            for i in range(n1 - n0):
                _pack_channel(&x[n0 + i, k // Kg, 0, 0], xs + i * chan_stride, H, W, sh, sw,
                              pt, pl, Hph, Wph, plane_len, True)
                for p in range(P):
                    memcpy(grid + i * grid_len + p * Wph, &gy[n0 + i, k, p, 0],
                           Q * sizeof(floating))
            if floating is float:
                ck_kernels.gw1_f32(grid, grid_len, grid_len, 1, xs, chan_stride, &tap_off[0],
                                   RS, n1 - n0, grid_len, part, RS)
            else:
                ck_kernels.gw1_f64(grid, grid_len, grid_len, 1, xs, chan_stride, &tap_off[0],
                                   RS, n1 - n0, grid_len, part, RS)
            for t in range(RS):
                if n0 == 0:
                    gw[k, 0, t] = part[t]
                else:
                    gw[k, 0, t] = gw[k, 0, t] + part[t]
            n0 = n1


def grad_input_rows(const floating[:, :, ::1] gy,         # IN  (N, K, P*Q)
                    const floating[:, :, :, :, ::1] wpk,  # IN  (G, passes, K/G, R*S, lanes)
                    floating[:, :, :, ::1] gi,            # OUT (N, C, H, W)
                    floating[:, ::1] scratch,             # (n_threads, H*W*lanes)
                    int64_t R, int64_t S, int64_t P, int64_t Q, int n_threads):
    """grad_input of an unpadded stride-1 convolution, a row of pixels at a time.

    One task per (image, group, vector of input channels): the kernel
    (CK_DEFINE_GRAD_INPUT_ROWS) sums the vector's H x W pixels, input
    channels side by side, into the thread's scratch; they are then
    transposed into grad_input's planes. The caller checks that this CPU's
    variant has a kernel for S and Q (grad_input_rows_shape).
    """
    cdef int64_t N = gi.shape[0], C = gi.shape[1], H = gi.shape[2], W = gi.shape[3]
    cdef int64_t G = wpk.shape[0], passes = wpk.shape[1], Kg = wpk.shape[2]
    cdef int64_t lanes = wpk.shape[4], Cg = C // G, kstride = gy.strides[1] // sizeof(floating)
    cdef int64_t task, n, g, v, c0, count
    cdef ck_gir_f32_t rows_f32 = ck_kernels.gir3_f32 if S == 3 else ck_kernels.gir5_f32
    cdef ck_gir_f64_t rows_f64 = ck_kernels.gir3_f64 if S == 3 else ck_kernels.gir5_f64
    cdef floating *rows
    for task in prange(N * G * passes, schedule="static", nogil=True, num_threads=n_threads):
        n = task // (G * passes)
        g = task // passes % G
        v = task % passes
        rows = &scratch[omp_get_thread_num(), 0]
        if floating is float:
            rows_f32(&gy[n, g * Kg, 0], kstride, &wpk[g, v, 0, 0, 0], Kg, P, Q, R, rows)
        else:
            rows_f64(&gy[n, g * Kg, 0], kstride, &wpk[g, v, 0, 0, 0], Kg, P, Q, R, rows)
        c0 = v * lanes
        count = lanes if Cg - c0 > lanes else Cg - c0
        _transpose(rows, lanes, &gi[n, g * Cg + c0, 0, 0], H * W, H * W, count)


def grad_input_scatter(const floating[:, :, ::1] gy,         # IN  (N, K, P*Q)
                       const floating[:, :, :, :, ::1] wpk,  # IN  (G, blocks, K/G, 1, CK_KB)
                       const floating[::1] zeros,            # IN  (CK_KB,) zeros
                       floating[:, :, :, ::1] gi,            # OUT (N, C, H, W)
                       floating[:, ::1] scratch,  # (n_threads, K/G*P*Q + 2*CK_SLACK + blocks*CK_KB*P*Q [+ H*(W + sw) if sw > 1])
                       int64_t R, int64_t S, int64_t P, int64_t Q, int64_t sh, int64_t sw,
                       int64_t pt, int64_t pl, int64_t dh, int64_t dw, int n_threads):
    """grad_input as a product of the weights and grad_output, then col2im, per image.

    One task per (image, group): grad_output's K/G channels are read in
    place (up to 16 KB) or copied into the thread's scratch; the grid
    kernel, run as a 1x1 convolution, turns them into the image's columns
    cols[(c*R + r)*S + s][p*Q + q] = sum_k w[k][c][r][s] * gy[k][p][q]
    (every multiply-add a real one, none on padding), kept in cache; these
    are then added to the input pixels
    they came from, in a fixed order. Pays where the gather form of
    grad_input would mostly multiply padding (small maps, large kernels).
    """
    cdef int64_t N = gi.shape[0], C = gi.shape[1], H = gi.shape[2], W = gi.shape[3]
    cdef int64_t G = wpk.shape[0], blocks = wpk.shape[1], Kg = wpk.shape[2]
    cdef int64_t Cg = C // G, RS = R * S, L = P * Q, rows = Cg * RS
    cdef int64_t task, n, g, blk, kcount, c, r, s, p, q, ih, q_lo, q_hi, offset
    cdef int64_t tap0 = 0
    cdef ck_fwd_f32_t product_f32 = ck_fwd_grid_f32(Kg, 1, L)
    cdef ck_fwd_f64_t product_f64 = ck_fwd_grid_f64(Kg, 1, L)
    # grad_output's channels for a task read in place while they fit in L1
    # with room to spare (every block of columns reads them again); larger,
    # they are copied first. In place measured float64 mnist-3x3's
    # grad_input (346 KB per task) 2.1x slower, float32 mnist-conv2's
    # (16 KB) about 6% faster.
    cdef bint in_place = Kg * L * <int64_t>sizeof(floating) <= 16384
    cdef const floating *gys
    cdef floating *own
    cdef floating *cols
    cdef floating *plane
    cdef const floating *src
    for task in prange(N * G, schedule="static", nogil=True, num_threads=n_threads):
        n = task // G
        g = task % G
        own = &scratch[omp_get_thread_num(), 0]
        cols = own + Kg * L + CK_SLACK
        gys = own
        if in_place and (N * G - 1 - task) * Kg * L >= CK_SLACK:
            # The kernel's reads past the task's channels (its last vector
            # of positions, under CK_SLACK elements) land in the tasks after
            # it, inside gy; only their own lanes, never stored, use them.
            gys = &gy[n, g * Kg, 0]
        else:
            # A copy, read in a single stream, where the kernel would read
            # K/G streams of gy at once, followed by zeros for its reads
            # past the end.
            memcpy(own, &gy[n, g * Kg, 0], Kg * L * sizeof(floating))
            memset(own + Kg * L, 0, CK_SLACK * sizeof(floating))
        # The slack after the columns, which ck_col2im may read (and clear).
        memset(cols + blocks * CK_KB * L, 0, CK_SLACK * sizeof(floating))
        for blk in range(blocks):
            kcount = rows - blk * CK_KB
            if kcount > CK_KB:
                kcount = CK_KB
            if floating is float:
                product_f32(gys, &wpk[g, blk, 0, 0, 0], &tap0, Kg, 1, L, L, L, 1, NULL, 0,
                             cols + blk * CK_KB * L, L, L, 1, kcount, &zeros[0], 0)
            else:
                product_f64(gys, &wpk[g, blk, 0, 0, 0], &tap0, Kg, 1, L, L, L, 1, NULL, 0,
                             cols + blk * CK_KB * L, L, L, 1, kcount, &zeros[0], 0)
        if sw == 1 and Cg >= 2:
            # By output pixel, in registers (see ck_col2im in _direct.h). perf:
            # col2im's share of mnist-conv2's grad_input 15% -> 6.5%. With
            # one channel it waits on its loads, one at a time, and the loop
            # below is the faster (float64 mnist-conv1: 8% of the time
            # against 11.5%).
            if floating is float:
                ck_kernels.col2im_f32(cols, Cg, P, Q, R, S, sh, pt, pl, dh, dw,
                                      &gi[n, g * Cg, 0, 0], H, W)
            else:
                ck_kernels.col2im_f64(cols, Cg, P, Q, R, S, sh, pt, pl, dh, dw,
                                      &gi[n, g * Cg, 0, 0], H, W)
            continue
        if sw > 1:
            # The column phases summed apart (ck_col2ims in _direct.h), where
            # the loop below adds one strided pixel at a time. Its buffer
            # follows the columns' slack.
            if floating is float:
                ck_kernels.col2ims_f32(cols, Cg, P, Q, R, S, sh, sw, pt, pl, dh, dw,
                                       &gi[n, g * Cg, 0, 0], H, W,
                                       cols + blocks * CK_KB * L + CK_SLACK)
            else:
                ck_kernels.col2ims_f64(cols, Cg, P, Q, R, S, sh, sw, pt, pl, dh, dw,
                                       &gi[n, g * Cg, 0, 0], H, W,
                                       cols + blocks * CK_KB * L + CK_SLACK)
            continue
        for c in range(Cg):
            plane = &gi[n, g * Cg + c, 0, 0]
            memset(plane, 0, H * W * sizeof(floating))
            # Kernel columns outermost: successive kernel rows then add to
            # the same columns of a row, so a load can take its data from
            # the one earlier store to those columns, where a kernel-column
            # step would overlap two (perf: col2im's share of mnist-conv2's
            # grad_input 20% -> 17%).
            for s in range(S):
                offset = s * dw - pl
                q_lo = _first_column(Q, sw, offset)
                q_hi = _max(_end_column(W, Q, sw, offset), q_lo)
                for r in range(R):
                    src = cols + ((c * R + r) * S + s) * L
                    for p in range(P):
                        ih = p * sh - pt + r * dh
                        if ih < 0 or ih >= H:
                            continue
                        if floating is float:
                            ck_add_rows_f32(plane + ih * W + q_lo + offset, src + p * Q + q_lo,
                                            q_hi - q_lo)
                        else:
                            ck_add_rows_f64(plane + ih * W + q_lo + offset, src + p * Q + q_lo,
                                            q_hi - q_lo)
