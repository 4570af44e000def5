# cython: language_level=3
"""Pooling kernels: max and average, forward and backward.

Callers (convkit/_pooling.py) validate arguments, make every array
C-contiguous with one float dtype, allocate outputs and pick the thread
count; these kernels trust that and run without the GIL.

Layouts: x (N, C, H, W), y (N, C, P, Q); the N*C planes are independent and
each is owned by one task, so backward passes accumulate without atomics and
results do not depend on the thread count. Padding is implicit: taps outside
the input are skipped.

Two loop orders for average pooling. "Taps": for each output row, each
kernel tap updates the whole row, so the inner loop runs along q and
vectorises (small kernels). "Windows": each output scans its own window row
by row (kernels wider than the output, global pooling), where the taps order
would loop over one q. Max pooling runs the kernels of _pool.h on whole
vectors of the CPU's widest ISA: kernel 2 stride 2 inside the input in one
pass, any other the row passes (horizontal maxima of each input row, then
vertical maxima of R rows); the windows order where S > Q.
Max pooling follows PyTorch's CPU rule, taps in row-major window order:
take ``v`` when ``v > max or isnan(v)``, so ties keep the first maximum and
a NaN window reports its last NaN. A window starts at -inf pointing at its
first input cell, so padding never wins.
"""

from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.stdint cimport INT32_MAX, int32_t, int64_t
from libc.string cimport memset

from convkit._lib._openmp cimport omp_get_thread_num


cdef extern from "_pool.h" nogil:
    ctypedef void (*pk_max_plane_f32_t)(const float *, float *, int64_t *, void *, int64_t,
                                        int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                        int64_t, int64_t, int64_t, int64_t, int64_t)
    ctypedef void (*pk_max_plane_f64_t)(const double *, double *, int64_t *, void *, int64_t,
                                        int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                        int64_t, int64_t, int64_t, int64_t, int64_t)
    ctypedef void (*pk_max_2x2_f32_t)(const float *, float *, int64_t *, void *, int64_t,
                                      int64_t, int64_t)
    ctypedef void (*pk_max_2x2_f64_t)(const double *, double *, int64_t *, void *, int64_t,
                                      int64_t, int64_t)
    ctypedef int (*pk_max_bwd_2x2_f32_t)(const float *, const int64_t *, float *, int64_t,
                                         int64_t, int64_t, int64_t)
    ctypedef int (*pk_max_bwd_2x2_f64_t)(const double *, const int64_t *, double *, int64_t,
                                         int64_t, int64_t, int64_t)
    ctypedef struct pk_kernels_t:
        const char *isa
        pk_max_plane_f32_t max_plane_f32
        pk_max_plane_f64_t max_plane_f64
        pk_max_2x2_f32_t max_2x2_f32
        pk_max_2x2_f64_t max_2x2_f64
        pk_max_bwd_2x2_f32_t max_bwd_2x2_f32
        pk_max_bwd_2x2_f64_t max_bwd_2x2_f64
    pk_kernels_t pk_kernels
    void pk_select_kernels(const char *cap)
    void pk_valid_range(int64_t size, int64_t count, int64_t step, int64_t offset,
                        int64_t *lo, int64_t *hi)
    int64_t pk_max_scratch_layout(int64_t R, int64_t S, int64_t Q, int64_t W, int64_t sw,
                                  int64_t pl, int64_t dw, int64_t itemsize, int64_t *row_len,
                                  int64_t *tag_at)

import os as _os

# Smallest plane (bytes) that max_backward writes by 2x2 blocks.
cdef enum:
    MAX_BWD_BLOCK_MIN_BYTES = 8192


def _select_kernels():
    """Pick the kernel variant for this CPU; CONVKIT_ISA=avx2|baseline caps it."""
    cdef bytes cap = _os.environ.get("CONVKIT_ISA", "").strip().lower().encode()
    pk_select_kernels(cap)


_select_kernels()

ctypedef fused floating:
    float
    double


cdef inline floating _sum(const floating *a, int64_t n) noexcept nogil:
    """Sum of a[0:n] in eight interleaved partial sums (vectorises, and rounds less)."""
    cdef floating s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0
    cdef int64_t i = 0
    while i + 8 <= n:
        s0 += a[i]
        s1 += a[i + 1]
        s2 += a[i + 2]
        s3 += a[i + 3]
        s4 += a[i + 4]
        s5 += a[i + 5]
        s6 += a[i + 6]
        s7 += a[i + 7]
        i += 8
    s0 = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    while i < n:
        s0 += a[i]
        i += 1
    return s0


# ---------------------------------------------------------------- max forward

cdef inline void _max_window(const floating *x, floating *y, int64_t *idx, int64_t H,
                             int64_t W, int64_t R, int64_t S, int64_t dh, int64_t dw,
                             int64_t ih0, int64_t iw0) noexcept nogil:
    """y[0] (and idx[0] unless NULL) of the window with corner (ih0, iw0): PyTorch's loop."""
    cdef int64_t r, s, r_lo, r_hi, s_lo, s_hi, i, best
    cdef floating m = -INFINITY, v
    pk_valid_range(H, R, dh, ih0, &r_lo, &r_hi)
    pk_valid_range(W, S, dw, iw0, &s_lo, &s_hi)
    best = (ih0 + r_lo * dh) * W + iw0 + s_lo * dw
    for r in range(r_lo, r_hi):
        i = (ih0 + r * dh) * W + iw0
        for s in range(s_lo, s_hi):
            v = x[i + s * dw]
            if v > m or v != v:
                m = v
                best = i + s * dw
    y[0] = m
    if idx != NULL:
        idx[0] = best


cdef void _max_plane_windows(const floating *x, floating *y, int64_t *idx, int64_t H,
                             int64_t W, int64_t P, int64_t Q, int64_t R, int64_t S,
                             int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t dh,
                             int64_t dw) noexcept nogil:
    """One plane, windows order (indices when idx is not NULL)."""
    cdef int64_t p, q
    for p in range(P):
        for q in range(Q):
            _max_window(x, y + p * Q + q, idx + p * Q + q if idx != NULL else NULL,
                        H, W, R, S, dh, dw, p * sh - pt, q * sw - pl)


def max_scratch_bytes(int64_t R, int64_t S, int64_t Q, int64_t W, int64_t sw, int64_t pl,
                      int64_t dw, int64_t itemsize):
    """Bytes of per-thread scratch max_forward needs (a row of winners for kernel 2 stride 2)."""
    cdef int64_t row_len, tag_at
    return max(pk_max_scratch_layout(R, S, Q, W, sw, pl, dw, itemsize, &row_len, &tag_at),
               8 * Q)


def pool_kernel_isa():
    """Instruction set of the max-pooling kernel chosen for this CPU at import."""
    return pk_kernels.isa.decode()


def max_forward(const floating[:, :, :, ::1] x,     # IN  (N, C, H, W)
                floating[:, :, :, ::1] y,           # OUT (N, C, P, Q)
                int64_t[:, :, :, ::1] indices,      # OUT (N, C, P, Q) flat in H*W, or None
                unsigned char[:, ::1] scratch,      # (n_threads, max_scratch_bytes(...))
                int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                int64_t dh, int64_t dw, int n_threads):
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t P = y.shape[2], Q = y.shape[3]
    cdef int64_t plane
    cdef bint with_indices = indices is not None
    cdef bint fast_2x2 = (R == 2 and S == 2 and sh == 2 and sw == 2 and pt == 0 and pl == 0
                          and dh == 1 and dw == 1 and 2 * P <= H and 2 * Q <= W
                          and W < INT32_MAX)
    # the row passes keep float32 winners' window offsets in int32
    cdef bint windows_order = S > Q or (R - 1) * dh * W + (S - 1) * dw > INT32_MAX
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *yp = &y[0, 0, 0, 0]
    cdef int64_t *ip = &indices[0, 0, 0, 0] if with_indices else NULL
    cdef int64_t *plane_idx
    for plane in prange(N * C, schedule="static", nogil=True, num_threads=n_threads):
        plane_idx = ip + plane * P * Q if with_indices else NULL
        if fast_2x2:
            if floating is float:
                pk_kernels.max_2x2_f32(xp + plane * H * W, yp + plane * P * Q, plane_idx,
                                       &scratch[omp_get_thread_num(), 0], W, P, Q)
            else:
                pk_kernels.max_2x2_f64(xp + plane * H * W, yp + plane * P * Q, plane_idx,
                                       &scratch[omp_get_thread_num(), 0], W, P, Q)
        elif windows_order:
            _max_plane_windows(xp + plane * H * W, yp + plane * P * Q, plane_idx,
                               H, W, P, Q, R, S, sh, sw, pt, pl, dh, dw)
        elif floating is float:
            pk_kernels.max_plane_f32(xp + plane * H * W, yp + plane * P * Q, plane_idx,
                                     &scratch[omp_get_thread_num(), 0],
                                     H, W, P, Q, R, S, sh, sw, pt, pl, dh, dw)
        else:
            pk_kernels.max_plane_f64(xp + plane * H * W, yp + plane * P * Q, plane_idx,
                                     &scratch[omp_get_thread_num(), 0],
                                     H, W, P, Q, R, S, sh, sw, pt, pl, dh, dw)


# --------------------------------------------------------------- max backward

def max_backward(const floating[:, ::1] grad_output,  # IN  (N*C, P*Q)
                 const int64_t[:, ::1] indices,       # IN  (N*C, P*Q) flat in H*W
                 floating[:, ::1] grad_input,         # OUT (N*C, H*W)
                 int64_t H, int64_t W, int64_t P, int64_t Q, int n_threads):
    """grad_input[plane, indices[plane, k]] += grad_output[plane, k], in k order.

    Where the (P, Q) outputs fit 2x2 blocks of the (H, W) plane, a plane
    whose every index lies in its own block is written by the block kernel
    of _pool.h (the same values; no cell is shared); any other plane is
    zeroed and scattered. Returns how many indices fall outside [0, H*W);
    those are skipped (the caller raises, so grad_input is then garbage).
    """
    cdef int64_t planes = grad_output.shape[0], L = grad_output.shape[1]
    cdef int64_t HW = grad_input.shape[1]
    cdef int64_t plane, k, i
    cdef int64_t bad = 0
    cdef floating *gx
    # Planes that stay in L1 while zeroed and scattered gained nothing by
    # blocks (pool-2x2's 24x24: 0.95-0.98x; 25x25 0.76x), larger ones did.
    cdef bint blocks = (2 * P <= H and 2 * Q <= W and P * Q == L and W + 2 < INT32_MAX
                        and HW * <int64_t>sizeof(floating) >= MAX_BWD_BLOCK_MIN_BYTES)
    for plane in prange(planes, schedule="static", nogil=True, num_threads=n_threads):
        gx = &grad_input[plane, 0]
        if blocks:
            if floating is float:
                if pk_kernels.max_bwd_2x2_f32(&grad_output[plane, 0], &indices[plane, 0], gx,
                                              H, W, P, Q) == 0:
                    continue
            else:
                if pk_kernels.max_bwd_2x2_f64(&grad_output[plane, 0], &indices[plane, 0], gx,
                                              H, W, P, Q) == 0:
                    continue
        memset(gx, 0, HW * sizeof(floating))
        for k in range(L):
            i = indices[plane, k]
            if i < 0 or i >= HW:
                bad += 1
            else:
                gx[i] += grad_output[plane, k]
    return bad


# ---------------------------------------------------------------- avg forward

cdef void _avg_plane_taps(const floating *x, floating *y, const floating *row_count,
                          const floating *col_count, int64_t H, int64_t W, int64_t P,
                          int64_t Q, int64_t R, int64_t S, int64_t sh, int64_t sw,
                          int64_t pt, int64_t pl) noexcept nogil:
    """One plane, taps order: sums in row-major window order, as PyTorch does."""
    cdef int64_t p, q, r, s, r_lo, r_hi, q_lo, q_hi, offset
    cdef floating *yrow
    cdef const floating *xrow
    for p in range(P):
        yrow = y + p * Q
        for q in range(Q):
            yrow[q] = 0
        pk_valid_range(H, R, 1, p * sh - pt, &r_lo, &r_hi)
        for r in range(r_lo, r_hi):
            xrow = x + (p * sh - pt + r) * W
            for s in range(S):
                offset = s - pl
                pk_valid_range(W, Q, sw, offset, &q_lo, &q_hi)
                if sw == 1:
                    for q in range(q_lo, q_hi):
                        yrow[q] += xrow[q + offset]
                else:
                    for q in range(q_lo, q_hi):
                        yrow[q] += xrow[q * sw + offset]
        for q in range(Q):
            yrow[q] = yrow[q] / (row_count[p] * col_count[q])


cdef void _avg_plane_windows(const floating *x, floating *y, const floating *row_count,
                             const floating *col_count, int64_t H, int64_t W, int64_t P,
                             int64_t Q, int64_t R, int64_t S, int64_t sh, int64_t sw,
                             int64_t pt, int64_t pl) noexcept nogil:
    """One plane, windows order: each window summed in contiguous runs."""
    cdef int64_t p, q, r, r_lo, r_hi, s_lo, s_hi, ih0, iw0
    cdef floating total
    for p in range(P):
        ih0 = p * sh - pt
        pk_valid_range(H, R, 1, ih0, &r_lo, &r_hi)
        for q in range(Q):
            iw0 = q * sw - pl
            pk_valid_range(W, S, 1, iw0, &s_lo, &s_hi)
            if s_hi - s_lo == W:
                total = _sum(x + (ih0 + r_lo) * W, (r_hi - r_lo) * W)
            else:
                total = 0
                for r in range(r_lo, r_hi):
                    total = total + _sum(x + (ih0 + r) * W + iw0 + s_lo, s_hi - s_lo)
            y[p * Q + q] = total / (row_count[p] * col_count[q])


cdef void _avg_plane_2x2(const floating *x, floating *y, const floating *row_count,
                         const floating *col_count, int64_t W, int64_t P,
                         int64_t Q) noexcept nogil:
    """Kernel 2, stride 2, no padding, every window inside the input."""
    cdef int64_t p, q
    cdef const floating *a
    cdef const floating *b
    for p in range(P):
        a = x + 2 * p * W
        b = a + W
        for q in range(Q):
            y[p * Q + q] = (((a[2 * q] + a[2 * q + 1]) + b[2 * q]) + b[2 * q + 1]) / (
                row_count[p] * col_count[q])


def avg_forward(const floating[:, :, :, ::1] x,  # IN  (N, C, H, W)
                floating[:, :, :, ::1] y,        # OUT (N, C, P, Q)
                const floating[::1] row_count,   # IN  (P,) divisor = row_count[p]*col_count[q]
                const floating[::1] col_count,   # IN  (Q,)
                int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                int n_threads):
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t P = y.shape[2], Q = y.shape[3]
    cdef int64_t plane
    cdef bint windows_order = S > Q
    cdef bint fast_2x2 = (R == 2 and S == 2 and sh == 2 and sw == 2 and pt == 0 and pl == 0
                          and 2 * P <= H and 2 * Q <= W)
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *yp = &y[0, 0, 0, 0]
    for plane in prange(N * C, schedule="static", nogil=True, num_threads=n_threads):
        if fast_2x2:
            _avg_plane_2x2(xp + plane * H * W, yp + plane * P * Q, &row_count[0],
                           &col_count[0], W, P, Q)
        elif windows_order:
            _avg_plane_windows(xp + plane * H * W, yp + plane * P * Q, &row_count[0],
                               &col_count[0], H, W, P, Q, R, S, sh, sw, pt, pl)
        else:
            _avg_plane_taps(xp + plane * H * W, yp + plane * P * Q, &row_count[0],
                            &col_count[0], H, W, P, Q, R, S, sh, sw, pt, pl)


# --------------------------------------------------------------- avg backward

cdef void _avg_backward_plane_taps(const floating *gy, floating *gx, floating *scratch,
                                   const floating *row_count, const floating *col_count,
                                   int64_t H, int64_t W, int64_t P, int64_t Q, int64_t R,
                                   int64_t S, int64_t sh, int64_t sw, int64_t pt,
                                   int64_t pl) noexcept nogil:
    """One plane, taps order, separably (scratch: Q + W values).

    A window's share reaches the same columns in each of its rows, so each
    output row first spreads its shares along one row (S strided adds per
    output), then adds that row to the R input rows it covers (contiguous,
    vectorised): P*(S*Q + R*W) adds instead of P*R*S*Q strided ones.
    """
    cdef int64_t p, q, r, s, r_lo, r_hi, q_lo, q_hi, offset, iw
    cdef floating *share = scratch
    cdef floating *spread = scratch + Q
    cdef floating *gxrow
    for p in range(P):
        for q in range(Q):
            share[q] = gy[p * Q + q] / (row_count[p] * col_count[q])
        for iw in range(W):
            spread[iw] = 0
        for s in range(S):
            offset = s - pl
            pk_valid_range(W, Q, sw, offset, &q_lo, &q_hi)
            if sw == 1:
                for q in range(q_lo, q_hi):
                    spread[q + offset] += share[q]
            else:
                for q in range(q_lo, q_hi):
                    spread[q * sw + offset] += share[q]
        pk_valid_range(H, R, 1, p * sh - pt, &r_lo, &r_hi)
        for r in range(r_lo, r_hi):
            gxrow = gx + (p * sh - pt + r) * W
            for iw in range(W):
                gxrow[iw] += spread[iw]


cdef void _avg_backward_plane_windows(const floating *gy, floating *gx,
                                      const floating *row_count, const floating *col_count,
                                      int64_t H, int64_t W, int64_t P, int64_t Q, int64_t R,
                                      int64_t S, int64_t sh, int64_t sw, int64_t pt,
                                      int64_t pl) noexcept nogil:
    """One plane, windows order: each window's share added to its contiguous runs."""
    cdef int64_t p, q, r, i, r_lo, r_hi, s_lo, s_hi, ih0, iw0
    cdef floating share
    cdef floating *run
    for p in range(P):
        ih0 = p * sh - pt
        pk_valid_range(H, R, 1, ih0, &r_lo, &r_hi)
        for q in range(Q):
            iw0 = q * sw - pl
            pk_valid_range(W, S, 1, iw0, &s_lo, &s_hi)
            share = gy[p * Q + q] / (row_count[p] * col_count[q])
            for r in range(r_lo, r_hi):
                run = gx + (ih0 + r) * W + iw0 + s_lo
                for i in range(s_hi - s_lo):
                    run[i] += share


cdef void _avg_backward_plane_2x2(const floating *gy, floating *gx,
                                  const floating *row_count, const floating *col_count,
                                  int64_t W, int64_t P, int64_t Q) noexcept nogil:
    """Kernel 2, stride 2, no padding, every window inside the input: no overlaps."""
    cdef int64_t p, q
    cdef floating *a
    cdef floating *b
    cdef floating share
    for p in range(P):
        a = gx + 2 * p * W
        b = a + W
        for q in range(Q):
            share = gy[p * Q + q] / (row_count[p] * col_count[q])
            a[2 * q] = share
            a[2 * q + 1] = share
            b[2 * q] = share
            b[2 * q + 1] = share


cdef void _avg_backward_plane_global(const floating *gy, floating *gx,
                                     const floating *row_count, const floating *col_count,
                                     int64_t HW) noexcept nogil:
    """One window covering the whole plane (global pooling): every cell gets its share."""
    cdef int64_t i
    cdef floating share = gy[0] / (row_count[0] * col_count[0])
    for i in range(HW):
        gx[i] = share


def avg_backward(const floating[:, :, :, ::1] grad_output,  # IN  (N, C, P, Q)
                 floating[:, :, :, ::1] grad_input,         # OUT (N, C, H, W)
                 floating[:, ::1] scratch,                  # (n_threads, Q + W)
                 const floating[::1] row_count,             # IN  (P,) as in avg_forward
                 const floating[::1] col_count,             # IN  (Q,)
                 int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                 int n_threads):
    cdef int64_t N = grad_input.shape[0], C = grad_input.shape[1]
    cdef int64_t H = grad_input.shape[2], W = grad_input.shape[3]
    cdef int64_t P = grad_output.shape[2], Q = grad_output.shape[3]
    cdef int64_t plane
    cdef bint windows_order = S > Q
    cdef bint fast_2x2 = (R == 2 and S == 2 and sh == 2 and sw == 2 and pt == 0 and pl == 0
                          and 2 * P <= H and 2 * Q <= W)
    # one window per plane that covers all of it: nothing to zero or add up
    cdef bint global_window = P == 1 and Q == 1 and pt == 0 and pl == 0 and R >= H and S >= W
    cdef const floating *gyp = &grad_output[0, 0, 0, 0]
    cdef floating *gxp = &grad_input[0, 0, 0, 0]
    for plane in prange(N * C, schedule="static", nogil=True, num_threads=n_threads):
        if global_window:
            _avg_backward_plane_global(gyp + plane, gxp + plane * H * W, &row_count[0],
                                       &col_count[0], H * W)
            continue
        memset(gxp + plane * H * W, 0, H * W * sizeof(floating))
        if fast_2x2:
            _avg_backward_plane_2x2(gyp + plane * P * Q, gxp + plane * H * W,
                                    &row_count[0], &col_count[0], W, P, Q)
        elif windows_order:
            _avg_backward_plane_windows(gyp + plane * P * Q, gxp + plane * H * W,
                                        &row_count[0], &col_count[0],
                                        H, W, P, Q, R, S, sh, sw, pt, pl)
        else:
            _avg_backward_plane_taps(gyp + plane * P * Q, gxp + plane * H * W,
                                     &scratch[omp_get_thread_num(), 0],
                                     &row_count[0], &col_count[0],
                                     H, W, P, Q, R, S, sh, sw, pt, pl)
