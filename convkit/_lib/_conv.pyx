# cython: language_level=3
"""Convolution kernels: direct forward/backward, im2col and col2im.

Callers (convkit/functional.py) validate arguments, make every array
C-contiguous with one float dtype, allocate outputs and pick the thread
count; these kernels trust that and run without the GIL.

Layouts: x (N, C, H, W), weight (K, C/G, R, S), y (N, K, P, Q).
Padding is implicit: reads outside the input count as zero, so the input is
never copied. Every output element is written by exactly one task, which
sums in a fixed order, so results do not depend on the thread count.
"""

from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memset

from convkit._lib._openmp cimport omp_get_thread_num

ctypedef fused floating:
    float
    double


cdef inline void _column_range(int64_t W, int64_t Q, int64_t stride, int64_t offset,
                               int64_t *q_lo, int64_t *q_hi) noexcept nogil:
    """Output columns q whose input column q*stride + offset lies in [0, W)."""
    cdef int64_t lo = 0, hi
    if offset < 0:
        lo = (-offset + stride - 1) // stride
    if W - 1 - offset < 0:
        hi = 0
    else:
        hi = (W - 1 - offset) // stride + 1
    if hi > Q:
        hi = Q
    if lo > hi:
        lo = hi
    q_lo[0] = lo
    q_hi[0] = hi


cdef inline void _axpy_strided(floating *out, const floating *src, floating a,
                               int64_t lo, int64_t hi, int64_t stride,
                               int64_t offset) noexcept nogil:
    """out[q] += a * src[q*stride + offset] for q in [lo, hi)."""
    cdef int64_t q
    if stride == 1:
        for q in range(lo, hi):
            out[q] += a * src[q + offset]
    else:
        for q in range(lo, hi):
            out[q] += a * src[q * stride + offset]


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


cdef inline void _mul_strided(floating *acc, const floating *a, const floating *b,
                              int64_t lo, int64_t hi, int64_t stride,
                              int64_t offset) noexcept nogil:
    """acc[q] += a[q] * b[q*stride + offset] for q in [lo, hi)."""
    cdef int64_t q
    if stride == 1:
        for q in range(lo, hi):
            acc[q] += a[q] * b[q + offset]
    else:
        for q in range(lo, hi):
            acc[q] += a[q] * b[q * stride + offset]


cdef enum:
    # Output channels one direct-forward task computes.
    K_BLOCK = 8


cdef void _forward_task(const floating *x, const floating *w, const floating *bias,
                        floating *y, int64_t n, int64_t g, int64_t k0, int64_t k_count,
                        int64_t C, int64_t H, int64_t W, int64_t K, int64_t Cg,
                        int64_t R, int64_t S, int64_t P, int64_t Q,
                        int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                        int64_t dh, int64_t dw) noexcept nogil:
    """y[n, k0:k0+k_count] for channels of group g, every output row."""
    cdef int64_t p, q, c, r, s, kb, ih, q_lo, q_hi, offset
    cdef floating *yrow
    cdef const floating *xrow
    cdef const floating *wk
    for p in range(P):
        for kb in range(k_count):
            yrow = y + ((n * K + k0 + kb) * P + p) * Q
            for q in range(Q):
                yrow[q] = bias[k0 + kb]
        for c in range(Cg):
            for r in range(R):
                ih = p * sh - pt + r * dh
                if ih < 0 or ih >= H:
                    continue
                xrow = x + ((n * C + g * Cg + c) * H + ih) * W
                for s in range(S):
                    offset = s * dw - pl
                    _column_range(W, Q, sw, offset, &q_lo, &q_hi)
                    for kb in range(k_count):
                        wk = w + (((k0 + kb) * Cg + c) * R + r) * S + s
                        yrow = y + ((n * K + k0 + kb) * P + p) * Q
                        _axpy_strided(yrow, xrow, wk[0], q_lo, q_hi, sw, offset)


def forward_direct(const floating[:, :, :, ::1] x,       # IN  (N, C, H, W)
                   const floating[:, :, :, ::1] weight,  # IN  (K, C/G, R, S)
                   const floating[::1] bias,             # IN  (K,) zeros if none
                   floating[:, :, :, ::1] y,             # OUT (N, K, P, Q)
                   int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                   int64_t dh, int64_t dw, int64_t groups, int n_threads):
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t K = weight.shape[0], Cg = weight.shape[1]
    cdef int64_t R = weight.shape[2], S = weight.shape[3]
    cdef int64_t P = y.shape[2], Q = y.shape[3]
    cdef int64_t Kg = K // groups
    cdef int64_t blocks = (Kg + K_BLOCK - 1) // K_BLOCK
    cdef int64_t task, n, g, b, k0, k_count
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef const floating *wp = &weight[0, 0, 0, 0]
    cdef const floating *bp = &bias[0]
    cdef floating *yp = &y[0, 0, 0, 0]
    for task in prange(N * groups * blocks, schedule="static", nogil=True,
                       num_threads=n_threads):
        n = task // (groups * blocks)
        g = (task // blocks) % groups
        b = task % blocks
        k0 = g * Kg + b * K_BLOCK
        k_count = Kg - b * K_BLOCK
        if k_count > K_BLOCK:
            k_count = K_BLOCK
        _forward_task(xp, wp, bp, yp, n, g, k0, k_count, C, H, W, K, Cg, R, S, P, Q,
                      sh, sw, pt, pl, dh, dw)


cdef void _grad_input_task(const floating *gy, const floating *w, floating *gx,
                           int64_t n, int64_t c, int64_t C, int64_t H, int64_t W,
                           int64_t K, int64_t Cg, int64_t Kg, int64_t R, int64_t S,
                           int64_t P, int64_t Q, int64_t sh, int64_t sw,
                           int64_t pt, int64_t pl, int64_t dh, int64_t dw) noexcept nogil:
    """gx[n, c]: the transposed convolution of gy with the taps that read channel c."""
    cdef int64_t g = c // Cg, cl = c % Cg
    cdef int64_t k, p, r, s, ih, q_lo, q_hi, offset
    cdef floating *plane = gx + (n * C + c) * H * W
    cdef const floating *gyrow
    memset(plane, 0, H * W * sizeof(floating))
    for k in range(g * Kg, (g + 1) * Kg):
        for p in range(P):
            gyrow = gy + ((n * K + k) * P + p) * Q
            for r in range(R):
                ih = p * sh - pt + r * dh
                if ih < 0 or ih >= H:
                    continue
                for s in range(S):
                    offset = s * dw - pl
                    _column_range(W, Q, sw, offset, &q_lo, &q_hi)
                    _scatter_strided(plane + ih * W, gyrow,
                                     w[((k * Cg + cl) * R + r) * S + s],
                                     q_lo, q_hi, sw, offset)


def grad_input_direct(const floating[:, :, :, ::1] grad_output,  # IN  (N, K, P, Q)
                      const floating[:, :, :, ::1] weight,       # IN  (K, C/G, R, S)
                      floating[:, :, :, ::1] grad_input,         # OUT (N, C, H, W)
                      int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                      int64_t dh, int64_t dw, int64_t groups, int n_threads):
    cdef int64_t N = grad_input.shape[0], C = grad_input.shape[1]
    cdef int64_t H = grad_input.shape[2], W = grad_input.shape[3]
    cdef int64_t K = weight.shape[0], Cg = weight.shape[1]
    cdef int64_t R = weight.shape[2], S = weight.shape[3]
    cdef int64_t P = grad_output.shape[2], Q = grad_output.shape[3]
    cdef int64_t task
    cdef const floating *gyp = &grad_output[0, 0, 0, 0]
    cdef const floating *wp = &weight[0, 0, 0, 0]
    cdef floating *gxp = &grad_input[0, 0, 0, 0]
    for task in prange(N * C, schedule="static", nogil=True, num_threads=n_threads):
        _grad_input_task(gyp, wp, gxp, task // C, task % C, C, H, W, K, Cg, K // groups,
                         R, S, P, Q, sh, sw, pt, pl, dh, dw)


cdef void _grad_weight_task(const floating *gy, const floating *x, floating *gw,
                            floating *acc, int64_t k, int64_t N, int64_t C, int64_t H,
                            int64_t W, int64_t K, int64_t Cg, int64_t Kg, int64_t R,
                            int64_t S, int64_t P, int64_t Q, int64_t sh, int64_t sw,
                            int64_t pt, int64_t pl, int64_t dh, int64_t dw) noexcept nogil:
    """gw[k]: per (tap, column) partial sums over images and rows, then per tap."""
    cdef int64_t g = k // Kg
    cdef int64_t c, n, p, r, s, q, ih, q_lo, q_hi, offset
    cdef const floating *gyrow
    cdef const floating *xrow
    cdef floating total
    for c in range(Cg):
        memset(acc, 0, R * S * Q * sizeof(floating))
        for n in range(N):
            for p in range(P):
                gyrow = gy + ((n * K + k) * P + p) * Q
                for r in range(R):
                    ih = p * sh - pt + r * dh
                    if ih < 0 or ih >= H:
                        continue
                    xrow = x + ((n * C + g * Cg + c) * H + ih) * W
                    for s in range(S):
                        offset = s * dw - pl
                        _column_range(W, Q, sw, offset, &q_lo, &q_hi)
                        _mul_strided(acc + (r * S + s) * Q, gyrow, xrow,
                                     q_lo, q_hi, sw, offset)
        for r in range(R * S):
            total = 0
            for q in range(Q):
                total = total + acc[r * Q + q]
            gw[(k * Cg + c) * R * S + r] = total


def grad_weight_direct(const floating[:, :, :, ::1] grad_output,  # IN  (N, K, P, Q)
                       const floating[:, :, :, ::1] x,            # IN  (N, C, H, W)
                       floating[:, :, :, ::1] grad_weight,        # OUT (K, C/G, R, S)
                       floating[:, ::1] scratch,                  # (n_threads, R*S*Q)
                       int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                       int64_t dh, int64_t dw, int64_t groups, int n_threads):
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t K = grad_weight.shape[0], Cg = grad_weight.shape[1]
    cdef int64_t R = grad_weight.shape[2], S = grad_weight.shape[3]
    cdef int64_t P = grad_output.shape[2], Q = grad_output.shape[3]
    cdef int64_t k
    cdef const floating *gyp = &grad_output[0, 0, 0, 0]
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *gwp = &grad_weight[0, 0, 0, 0]
    for k in prange(K, schedule="static", nogil=True, num_threads=n_threads):
        _grad_weight_task(gyp, xp, gwp, &scratch[omp_get_thread_num(), 0], k, N, C, H, W,
                          K, Cg, K // groups, R, S, P, Q, sh, sw, pt, pl, dh, dw)


def grad_bias(const floating[:, :, ::1] grad_output,  # IN  (N, K, P*Q)
              floating[::1] out,                     # OUT (K,)
              int n_threads):
    """out[k] = sum over n, then over p*q, of grad_output: fixed order per k."""
    cdef int64_t N = grad_output.shape[0], K = grad_output.shape[1]
    cdef int64_t L = grad_output.shape[2]
    cdef int64_t k, n, i
    cdef floating total
    for k in prange(K, schedule="static", nogil=True, num_threads=n_threads):
        total = 0
        for n in range(N):
            for i in range(L):
                total = total + grad_output[n, k, i]
        out[k] = total


def im2col(const floating[:, :, :, ::1] x,  # IN  (N, C, H, W)
           floating[:, :, ::1] cols,        # OUT (N, C*R*S, rows*Q)
           int64_t R, int64_t S, int64_t p0, int64_t Q,
           int64_t sh, int64_t sw, int64_t pt, int64_t pl,
           int64_t dh, int64_t dw, int n_threads):
    """cols[n, (c*R + r)*S + s, (p - p0)*Q + q] = padded x at tap (r, s) of output (p, q)."""
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t rows = cols.shape[2] // Q
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
                _column_range(W, Q, sw, offset, &q_lo, &q_hi)
                for p in range(rows):
                    out = &cols[n, (c * R + r) * S + s, p * Q]
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


def col2im(const floating[:, :, ::1] cols,  # IN     (N, C*R*S, rows*Q)
           floating[:, :, :, ::1] x,        # IN/OUT (N, C, H, W), accumulated into
           int64_t R, int64_t S, int64_t p0, int64_t Q,
           int64_t sh, int64_t sw, int64_t pt, int64_t pl,
           int64_t dh, int64_t dw, int n_threads):
    """Adjoint of im2col: add every column entry back to the pixel it was read from."""
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t rows = cols.shape[2] // Q
    cdef int64_t task, n, c, r, s, p, ih, q_lo, q_hi, offset
    cdef floating *xplane
    for task in prange(N * C, schedule="static", nogil=True, num_threads=n_threads):
        n = task // C
        c = task % C
        xplane = &x[n, c, 0, 0]
        for r in range(R):
            for s in range(S):
                offset = s * dw - pl
                _column_range(W, Q, sw, offset, &q_lo, &q_hi)
                for p in range(rows):
                    ih = (p0 + p) * sh - pt + r * dh
                    if ih < 0 or ih >= H:
                        continue
                    _scatter_strided(xplane + ih * W, &cols[n, (c * R + r) * S + s, p * Q],
                                     <floating> 1, q_lo, q_hi, sw, offset)
