/* Max-pooling forward plane kernel, with runtime ISA dispatch.
 *
 * A window's maximum is taken in two passes: each input row's horizontal
 * maxima over the window's S columns (one value, and the winning column,
 * per output column), then the vertical maximum of the R rows' results.
 * With PyTorch's rule (take v when v > max or v is NaN, taps in row-major
 * window order) the two passes pick exactly the element the row-major scan
 * picks: without NaNs, the first row that holds the window's maximum and
 * its first column that does; with NaNs, the last NaN of the last row that
 * holds one. Each input row's horizontal pass is kept in a ring of R rows,
 * so consecutive output rows that share input rows (stride < kernel) pass
 * over them once.
 *
 * The horizontal pass runs on whole vectors for strides 1 and 2 without
 * dilation (stride 2 loads two vectors and splits even and odd lanes); the
 * vertical pass always does. Variants for AVX-512, AVX2 and the baseline
 * ISA come from one body written with GCC/Clang vector extensions, picked
 * once at import (CONVKIT_ISA=avx2|baseline caps the choice, as for the
 * convolution kernels).
 *
 * Kernel 2 stride 2 with every window inside the input (the classic 2x2
 * pooling) has its own one-pass kernel, all four taps in registers, and
 * so has the backward of any outputs whose indices each lie in their own
 * 2x2 block (PK_DEFINE_MAX_BWD_2X2).
 *
 * Winners are tracked as offsets from the window's corner (r*dh*W + s*dw)
 * in integer lanes as wide as the float's: int32 for float32 (the caller
 * checks that the offsets fit), int64 for float64.
 */
#ifndef CONVKIT_POOL_H
#define CONVKIT_POOL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define PK_X86 1
#else
#define PK_X86 0
#endif

/* Per-thread scratch of pk_max_plane_*: one input row between pads
 * (*row_len elements), -inf in its pads and in a slack that covers vector
 * reads past the last window; R ring rows of maxima and of winners; a row
 * of winners and R row offsets; then, from byte *tag_at, R row tags (int64)
 * and 2R row pointers. */
static int64_t pk_max_scratch_layout(int64_t R, int64_t S, int64_t Q, int64_t W, int64_t sw,
                                     int64_t pl, int64_t dw, int64_t itemsize,
                                     int64_t *row_len, int64_t *tag_at)
{
    int64_t span = (Q - 1) * sw + (S - 1) * dw + 1, len = pl + W > span ? pl + W : span;
    /* slack: two 64-byte vectors */
    *row_len = len + 128 / itemsize;
    *tag_at = (((2 * *row_len + 2 * R * Q + Q + R) * itemsize + 7) / 8) * 8;
    return *tag_at + 8 * R + 2 * (int64_t)sizeof(void *) * R + 64;
}

/* [lo, hi): the i in [0, count) with i*step + offset in [0, size). The Cython
 * kernels of _pool.pyx use it too. */
static inline void pk_valid_range(int64_t size, int64_t count, int64_t step, int64_t offset,
                                  int64_t *lo, int64_t *hi)
{
    int64_t first = 0, last;
    if (offset < 0)
        first = (-offset + step - 1) / step;
    last = size - 1 - offset < 0 ? 0 : (size - 1 - offset) / step + 1;
    if (last > count)
        last = count;
    if (first > last)
        first = last;
    *lo = first;
    *hi = last;
}

/*
 * Shuffle patterns that split the 2*VL elements of two vectors (lo, hi) of
 * IT-sized lanes into even and odd ones within each 16-byte group, so that
 * each split is one in-group shuffle: lane l (group j, place k) takes the
 * even element k of lo's group j or, for k >= half a group, element k - half
 * of hi's; its stride-2 window is j*half + k, or VL/2 + j*half + k - half.
 * order[q] is the lane that holds window q: one more shuffle puts a result
 * back in window order.
 */
#define PK_SPLIT_LANES(IT, VL, even, odd, order)                                        \
    do {                                                                                \
        const int64_t e_ = 16 / (int64_t)sizeof(IT), h_ = e_ / 2;                       \
        int64_t l_;                                                                     \
        for (l_ = 0; l_ < (VL); l_++) {                                                 \
            int64_t j_ = l_ / e_, k_ = l_ % e_, o_ = l_ % ((VL) / 2);                   \
            (even)[l_] = (IT)(k_ < h_ ? j_ * e_ + 2 * k_ : (VL) + j_ * e_ + 2 * (k_ - h_)); \
            (odd)[l_] = (even)[l_] + 1;                                                 \
            (order)[l_] = (IT)(o_ / h_ * e_ + (l_ < (VL) / 2 ? 0 : h_) + o_ % h_);      \
        }                                                                               \
    } while (0)

/*
 * Row passes on vectors of VBYTES, over outputs [q, q_hi) when at least one
 * whole vector fits (the last vector overlaps the one before rather than
 * leaving a tail); each returns the first output it left (q_hi, or q).
 *
 * PREFIX##_h: horizontal maxima hv[q] of a padded row xr (window q starts at
 * xr[q*sw]; the padding after the row covers every vector's reads), and the
 * winning column s in ht[q] when with_idx. dw == 1, sw is 1 or 2 (stride 2
 * splits pairs of vectors with PK_SPLIT_LANES).
 * PREFIX##_v: vertical maxima of n rows of maxima (hr[k], winners tr[k] +
 * roff[k]) into the output row y (winners' offsets in mt).
 */
#define PK_DEFINE_ROW_PASSES(PREFIX, T, IT, VBYTES, ATTR)                               \
    ATTR static inline __attribute__((always_inline)) int64_t PREFIX##_h(               \
        const T *xr, T *hv, IT *ht, int64_t S, int64_t sw, int64_t q, int64_t q_hi,     \
        int with_idx)                                                                   \
    {                                                                                   \
        typedef T V __attribute__((vector_size(VBYTES)));                               \
        typedef IT IV __attribute__((vector_size(VBYTES)));                             \
        enum { VL = VBYTES / sizeof(T) };                                               \
        IV even, odd, order;                                                            \
        int64_t s, q_max = q_hi - VL;                                                   \
        if (q_max < q)                                                                  \
            return q;                                                                   \
        PK_SPLIT_LANES(IT, VL, even, odd, order);                                       \
        for (;; q += VL) {                                                              \
            const T *base;                                                              \
            V m, v, lo, hi;                                                             \
            IV t = {0}, take;                                                           \
            if (q > q_max)                                                              \
                q = q_max;                                                              \
            base = xr + q * sw;                                                         \
            if (sw == 1) {                                                              \
                memcpy(&m, base, sizeof(V));                                            \
            } else {                                                                    \
                memcpy(&lo, base, sizeof(V));                                           \
                memcpy(&hi, base + VL, sizeof(V));                                      \
                m = __builtin_shuffle(lo, hi, even);                                    \
            }                                                                           \
            for (s = 1; s < S; s++) {                                                   \
                if (sw == 1) {                                                          \
                    memcpy(&v, base + s, sizeof(V));                                    \
                } else if (s & 1) {                                                     \
                    v = __builtin_shuffle(lo, hi, odd);                                 \
                } else {                                                                \
                    memcpy(&lo, base + s, sizeof(V));                                   \
                    memcpy(&hi, base + s + VL, sizeof(V));                              \
                    v = __builtin_shuffle(lo, hi, even);                                \
                }                                                                       \
                take = (v > m) | (v != v);                                              \
                m = (V)(((IV)v & take) | ((IV)m & ~take));                              \
                if (with_idx)                                                           \
                    t = ((IT)s & take) | (t & ~take);                                   \
            }                                                                           \
            if (sw == 2) {                                                              \
                m = __builtin_shuffle(m, order);                                        \
                if (with_idx)                                                           \
                    t = __builtin_shuffle(t, order);                                    \
            }                                                                           \
            memcpy(hv + q, &m, sizeof(V));                                              \
            if (with_idx)                                                               \
                memcpy(ht + q, &t, sizeof(IV));                                         \
            if (q == q_max)                                                             \
                return q_hi;                                                            \
        }                                                                               \
    }                                                                                   \
    ATTR static inline __attribute__((always_inline)) int64_t PREFIX##_v(               \
        T *y, IT *mt, T *const *hr, IT *const *tr, const IT *roff, int64_t n,           \
        int64_t q, int64_t q_hi, int with_idx)                                          \
    {                                                                                   \
        typedef T V __attribute__((vector_size(VBYTES)));                               \
        typedef IT IV __attribute__((vector_size(VBYTES)));                             \
        enum { VL = VBYTES / sizeof(T) };                                               \
        int64_t k, q_max = q_hi - VL;                                                   \
        if (q_max < q)                                                                  \
            return q;                                                                   \
        for (;; q += VL) {                                                              \
            V m, v;                                                                     \
            IV t = {0}, vt, take;                                                       \
            if (q > q_max)                                                              \
                q = q_max;                                                              \
            memcpy(&m, hr[0] + q, sizeof(V));                                           \
            if (with_idx) {                                                             \
                memcpy(&t, tr[0] + q, sizeof(IV));                                      \
                t += roff[0];                                                           \
            }                                                                           \
            for (k = 1; k < n; k++) {                                                   \
                memcpy(&v, hr[k] + q, sizeof(V));                                       \
                take = (v > m) | (v != v);                                              \
                m = (V)(((IV)v & take) | ((IV)m & ~take));                              \
                if (with_idx) {                                                         \
                    memcpy(&vt, tr[k] + q, sizeof(IV));                                 \
                    t = ((vt + roff[k]) & take) | (t & ~take);                          \
                }                                                                       \
            }                                                                           \
            memcpy(y + q, &m, sizeof(V));                                               \
            if (with_idx)                                                               \
                memcpy(mt + q, &t, sizeof(IV));                                         \
            if (q == q_max)                                                             \
                return q_hi;                                                            \
        }                                                                               \
    }

/*
 * PREFIX##_2x2: outputs [q, q_hi) of one output row of kernel 2, stride 2
 * windows inside the input, from input rows a and b = a + W, in one pass:
 * the four taps of a vector of windows in registers. Each row's two vectors
 * split into even and odd lanes by PK_SPLIT_LANES, and the result goes back
 * to window order before the store. The taps meet in pairs, (a0, a1)
 * and (b0, b1), then the pairs: with the take rule (v > m or v is NaN) that
 * picks the element the row-major scan picks (the last NaN, else the first
 * maximum). With with_idx the winners' offsets (0, 1, W, W+1) go to mt.
 * Same overlap rule as the row passes.
 */
#define PK_DEFINE_2X2_ROW(PREFIX, T, IT, VBYTES, ATTR)                                  \
    ATTR static inline __attribute__((always_inline)) int64_t PREFIX##_2x2(             \
        const T *a, const T *b, T *y, IT *mt, IT W, int64_t q, int64_t q_hi,            \
        int with_idx)                                                                   \
    {                                                                                   \
        typedef T V __attribute__((vector_size(VBYTES)));                               \
        typedef IT IV __attribute__((vector_size(VBYTES)));                             \
        enum { VL = VBYTES / sizeof(T) };                                               \
        IV even, odd, order;                                                            \
        int64_t q_max = q_hi - VL;                                                      \
        if (q_max < q)                                                                  \
            return q;                                                                   \
        PK_SPLIT_LANES(IT, VL, even, odd, order);                                       \
        for (;; q += VL) {                                                              \
            V lo, hi, m0, v0, m1, v1;                                                   \
            IV take0, take1, take;                                                      \
            if (q > q_max)                                                              \
                q = q_max;                                                              \
            memcpy(&lo, a + 2 * q, sizeof(V));                                          \
            memcpy(&hi, a + 2 * q + VL, sizeof(V));                                     \
            m0 = __builtin_shuffle(lo, hi, even);                                       \
            v0 = __builtin_shuffle(lo, hi, odd);                                        \
            memcpy(&lo, b + 2 * q, sizeof(V));                                          \
            memcpy(&hi, b + 2 * q + VL, sizeof(V));                                     \
            m1 = __builtin_shuffle(lo, hi, even);                                       \
            v1 = __builtin_shuffle(lo, hi, odd);                                        \
            take0 = (v0 > m0) | (v0 != v0);                                             \
            m0 = (V)(((IV)v0 & take0) | ((IV)m0 & ~take0));                            \
            take1 = (v1 > m1) | (v1 != v1);                                             \
            m1 = (V)(((IV)v1 & take1) | ((IV)m1 & ~take1));                             \
            take = (m1 > m0) | (m1 != m1);                                              \
            m0 = (V)(((IV)m1 & take) | ((IV)m0 & ~take));                               \
            m0 = __builtin_shuffle(m0, order);                                          \
            memcpy(y + q, &m0, sizeof(V));                                              \
            if (with_idx) {                                                             \
                IV t = ((((IT)1 & take1) + W) & take) | ((IT)1 & take0 & ~take);        \
                t = __builtin_shuffle(t, order);                                        \
                memcpy(mt + q, &t, sizeof(IV));                                         \
            }                                                                           \
            if (q == q_max)                                                             \
                return q_hi;                                                            \
        }                                                                               \
    }

/*
 * NAME(x, y, idx, scratch, W, P, Q): kernel 2, stride 2, no padding or
 * dilation, every window inside the input (2P <= H, 2Q <= W); scratch
 * holds Q winners' offsets. Widths P1, P2, P3, then one output at a time.
 */
#define PK_DEFINE_MAX_PLANE_2X2(NAME, T, IT, P1, P2, P3, ATTR)                          \
    ATTR static inline __attribute__((always_inline)) void NAME##_impl(                 \
        const T *x, T *y, int64_t *idx, void *scratch, int64_t W, int64_t P, int64_t Q, \
        int wi)                                                                         \
    {                                                                                   \
        IT *mt = (IT *)scratch;                                                         \
        int64_t p, q;                                                                   \
        for (p = 0; p < P; p++) {                                                       \
            const T *a = x + 2 * p * W, *b = a + W;                                     \
            T *yrow = y + p * Q;                                                        \
            q = P1##_2x2(a, b, yrow, mt, (IT)W, 0, Q, wi);                              \
            q = P2##_2x2(a, b, yrow, mt, (IT)W, q, Q, wi);                              \
            q = P3##_2x2(a, b, yrow, mt, (IT)W, q, Q, wi);                              \
            for (; q < Q; q++) {                                                        \
                T m = a[2 * q], v;                                                      \
                IT t = 0;                                                               \
                v = a[2 * q + 1];                                                       \
                if (v > m || v != v) {                                                  \
                    m = v;                                                              \
                    t = 1;                                                              \
                }                                                                       \
                v = b[2 * q];                                                           \
                if (v > m || v != v) {                                                  \
                    m = v;                                                              \
                    t = (IT)W;                                                          \
                }                                                                       \
                v = b[2 * q + 1];                                                       \
                if (v > m || v != v) {                                                  \
                    m = v;                                                              \
                    t = (IT)(W + 1);                                                    \
                }                                                                       \
                yrow[q] = m;                                                            \
                mt[q] = t;                                                              \
            }                                                                           \
            if (wi) {                                                                   \
                int64_t *irow = idx + p * Q;                                            \
                for (q = 0; q < Q; q++)                                                 \
                    irow[q] = 2 * p * W + 2 * q + (int64_t)mt[q];                       \
            }                                                                           \
        }                                                                               \
    }                                                                                   \
    ATTR static void NAME(const T *x, T *y, int64_t *idx, void *scratch, int64_t W,     \
                          int64_t P, int64_t Q)                                         \
    {                                                                                   \
        if (idx != NULL)                                                                \
            NAME##_impl(x, y, idx, scratch, W, P, Q, 1);                                \
        else                                                                            \
            NAME##_impl(x, y, idx, scratch, W, P, Q, 0);                                \
    }

/*
 * NAME(x, y, idx, scratch, H, W, P, Q, R, S, sh, sw, pt, pl, dh, dw):
 * one (H, W) plane x -> one (P, Q) plane y, and the flat positions of the
 * winners in idx unless it is NULL. Every output row must have at least one
 * window row inside the input, and every window a column inside it (the
 * caller's geometry ensures both). NAME##_impl is inlined with constant
 * (S, sw, with_idx) for the common kernels, so their taps unroll. The row
 * passes run at widths P1 (widest), P2 and P3 (narrower, for what is
 * left), then one output at a time.
 */
#define PK_DEFINE_MAX_PLANE(NAME, T, IT, P1, P2, P3, ATTR)                              \
    ATTR static inline __attribute__((always_inline)) void NAME##_impl(                 \
        const T *x, T *y, int64_t *idx, void *scratch, int64_t H, int64_t W, int64_t P, \
        int64_t Q, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t pt,            \
        int64_t pl, int64_t dh, int64_t dw, int wi)                                     \
    {                                                                                   \
        int64_t row_len, tag_at;                                                        \
        T *prow = (T *)scratch, *hval;                                                  \
        IT *htap, *mtap, *roff;                                                         \
        T **hr;                                                                         \
        IT **tr;                                                                        \
        int64_t *tag;                                                                   \
        int64_t p, q, r, s, r_lo, r_hi, ih, q_left, ptag[2] = {-1, -1};                 \
        int vec = dw == 1 && (sw == 1 || sw == 2);                                      \
        /* rows are read in place where no window reaches the padding and no */        \
        /* vector reads past the row (stride 2 loads whole pairs) */                   \
        int in_place = pl == 0 && (Q - 1) * sw + (S - 1) * dw < W &&                    \
                       (!vec || sw == 1 || 2 * Q - 1 + ((S - 1) & ~(int64_t)1) < W);    \
        pk_max_scratch_layout(R, S, Q, W, sw, pl, dw, sizeof(T), &row_len, &tag_at);     \
        hval = prow + 2 * row_len;                                                      \
        htap = (IT *)(hval + R * Q);                                                    \
        mtap = htap + R * Q;                                                            \
        roff = mtap + Q;                                                                \
        tag = (int64_t *)((char *)scratch + tag_at);                                    \
        hr = (T **)(tag + R);                                                           \
        tr = (IT **)(hr + R);                                                           \
        /* outputs whose windows start in the left padding */                           \
        q_left = pl > 0 ? (pl + sw - 1) / sw : 0;                                       \
        q_left = q_left < Q ? q_left : Q;                                               \
        for (r = 0; r < R; r++)                                                         \
            tag[r] = -1;                                                                \
        /* pads: a pad never wins a window that has an input cell */                    \
        for (q = 0; q < pl; q++)                                                        \
            prow[q] = prow[row_len + q] = -INFINITY;                                    \
        for (q = pl + W; q < row_len; q++)                                              \
            prow[q] = prow[row_len + q] = -INFINITY;                                    \
        for (p = 0; p < P; p++) {                                                       \
            int64_t ih0 = p * sh - pt, n = 0;                                           \
            int64_t slot = 0;                                                           \
            pk_valid_range(H, R, dh, ih0, &r_lo, &r_hi);                                \
            /* rows ih of one output row land in distinct slots (ih/dh) % R; rows */    \
            /* shared with the output row before are found where they were left */      \
            if (r_lo < r_hi)                                                            \
                slot = ((ih0 + r_lo * dh) / dh) % R;                                    \
            for (r = r_lo; r < r_hi; r++, n++, slot = slot + 1 == R ? 0 : slot + 1) {   \
                T *hv;                                                                  \
                IT *ht;                                                                 \
                const T *xr;                                                            \
                ih = ih0 + r * dh;                                                      \
                hv = hval + slot * Q;                                                   \
                ht = htap + slot * Q;                                                   \
                hr[n] = hv;                                                             \
                tr[n] = ht;                                                             \
                roff[n] = (IT)(r * dh * W);                                             \
                if (tag[slot] == ih)                                                    \
                    continue;                                                           \
                tag[slot] = ih;                                                         \
                /* horizontal pass over input row ih, between its pads */               \
                if (in_place) {                                                         \
                    xr = x + ih * W;                                                    \
                } else {                                                                \
                    /* two padded rows: the next row is copied while this one */        \
                    /* is read, so no read waits on a copy's stores */                  \
                    int b = ptag[0] == ih ? 0 : ptag[1] == ih ? 1 : -1;                 \
                    if (b < 0) {                                                        \
                        b = (int)(ih & 1);                                              \
                        memcpy(prow + b * row_len + pl, x + ih * W, W * sizeof(T));     \
                        ptag[b] = ih;                                                   \
                    }                                                                   \
                    if (ih + 1 < H && ptag[1 - b] != ih + 1) {                          \
                        memcpy(prow + (1 - b) * row_len + pl, x + (ih + 1) * W,         \
                               W * sizeof(T));                                          \
                        ptag[1 - b] = ih + 1;                                           \
                    }                                                                   \
                    xr = prow + b * row_len;                                            \
                }                                                                       \
                q = 0;                                                                  \
                if (vec) {                                                              \
                    q = P1##_h(xr, hv, ht, S, sw, q, Q, wi);                            \
                    q = P2##_h(xr, hv, ht, S, sw, q, Q, wi);                            \
                    q = P3##_h(xr, hv, ht, S, sw, q, Q, wi);                            \
                }                                                                       \
                for (; q < Q; q++) {                                                    \
                    T m = xr[q * sw], v;                                                \
                    IT t = 0;                                                           \
                    for (s = 1; s < S; s++) {                                           \
                        v = xr[q * sw + s * dw];                                        \
                        if (v > m || v != v) {                                          \
                            m = v;                                                      \
                            t = (IT)(s * dw);                                           \
                        }                                                               \
                    }                                                                   \
                    hv[q] = m;                                                          \
                    ht[q] = t;                                                          \
                }                                                                       \
                /* a pad "wins" only a window of -inf: name its first input */          \
                /* cell instead, as the row-major scan does */                          \
                for (q = 0; wi && q < q_left; q++) {                                    \
                    int64_t first = (pl - q * sw + dw - 1) / dw * dw;                   \
                    if (ht[q] < first)                                                  \
                        ht[q] = (IT)first;                                              \
                }                                                                       \
            }                                                                           \
            /* vertical pass over the n rows */                                         \
            q = P1##_v(y + p * Q, mtap, hr, tr, roff, n, 0, Q, wi);                     \
            q = P2##_v(y + p * Q, mtap, hr, tr, roff, n, q, Q, wi);                     \
            q = P3##_v(y + p * Q, mtap, hr, tr, roff, n, q, Q, wi);                     \
            for (; q < Q; q++) {                                                        \
                T m = hr[0][q], v;                                                      \
                IT t = tr[0][q] + roff[0];                                              \
                int64_t k;                                                              \
                for (k = 1; k < n; k++) {                                               \
                    v = hr[k][q];                                                       \
                    if (v > m || v != v) {                                              \
                        m = v;                                                          \
                        t = tr[k][q] + roff[k];                                         \
                    }                                                                   \
                }                                                                       \
                y[p * Q + q] = m;                                                       \
                mtap[q] = t;                                                            \
            }                                                                           \
            if (wi) {                                                                   \
                int64_t *irow = idx + p * Q, corner = ih0 * W - pl;                     \
                for (q = 0; q < Q; q++)                                                 \
                    irow[q] = corner + q * sw + (int64_t)mtap[q];                       \
            }                                                                           \
        }                                                                               \
    }                                                                                   \
    ATTR static void NAME(const T *x, T *y, int64_t *idx, void *scratch, int64_t H,     \
                          int64_t W, int64_t P, int64_t Q, int64_t R, int64_t S,        \
                          int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t dh,   \
                          int64_t dw)                                                   \
    {                                                                                   \
        int wi = idx != NULL;                                                           \
        if (dw == 1 && S == 3 && sw == 2 && wi)                                         \
            NAME##_impl(x, y, idx, scratch, H, W, P, Q, R, 3, sh, 2, pt, pl, dh, 1, 1); \
        else if (dw == 1 && S == 3 && sw == 2)                                          \
            NAME##_impl(x, y, idx, scratch, H, W, P, Q, R, 3, sh, 2, pt, pl, dh, 1, 0); \
        else if (dw == 1 && S == 3 && sw == 1 && wi)                                    \
            NAME##_impl(x, y, idx, scratch, H, W, P, Q, R, 3, sh, 1, pt, pl, dh, 1, 1); \
        else if (dw == 1 && S == 3 && sw == 1)                                          \
            NAME##_impl(x, y, idx, scratch, H, W, P, Q, R, 3, sh, 1, pt, pl, dh, 1, 0); \
        else if (dw == 1 && S == 2 && sw == 2 && wi)                                    \
            NAME##_impl(x, y, idx, scratch, H, W, P, Q, R, 2, sh, 2, pt, pl, dh, 1, 1); \
        else if (dw == 1 && S == 2 && sw == 2)                                          \
            NAME##_impl(x, y, idx, scratch, H, W, P, Q, R, 2, sh, 2, pt, pl, dh, 1, 0); \
        else if (dw == 1 && S == 2 && sw == 1 && wi)                                    \
            NAME##_impl(x, y, idx, scratch, H, W, P, Q, R, 2, sh, 1, pt, pl, dh, 1, 1); \
        else if (dw == 1 && S == 2 && sw == 1)                                          \
            NAME##_impl(x, y, idx, scratch, H, W, P, Q, R, 2, sh, 1, pt, pl, dh, 1, 0); \
        else                                                                            \
            NAME##_impl(x, y, idx, scratch, H, W, P, Q, R, S, sh, sw, pt, pl, dh, dw,   \
                        wi);                                                            \
    }

/*
 * NAME(gy, idx, gx, H, W, P, Q): max pooling's gradient for one plane where
 * 2P <= H and 2Q <= W and every index names a cell of its own 2x2 block
 * (rows 2p, 2p+1, columns 2q, 2q+1), as kernel 2 stride 2 without padding
 * gives. Then no two outputs share a cell, and the scatter
 * (gx = 0; gx[idx[k]] += gy[k]) comes to: each block's cell at the index
 * takes 0 + gy (-0 becomes +0 there too), its three others and every cell
 * outside the blocks 0. This writes gx that way, a pair of rows at a time,
 * whole vectors of windows: each window's offset idx - (2p*W + 2q) in
 * {0, 1, W, W+1} picks its cell, and the windows' four masked values
 * interleave into the two rows. The last vector of a row overlaps the one
 * before (the same values again) rather than running scalar. Returns 1,
 * gx partly written, at the end of a row holding an index outside its
 * block (the caller then scatters the plane), else 0. W must fit IT.
 */
#define PK_DEFINE_MAX_BWD_2X2(NAME, T, IT, VBYTES, ATTR)                                \
    ATTR static int NAME(const T *gy, const int64_t *idx, T *gx, int64_t H, int64_t W,  \
                         int64_t P, int64_t Q)                                          \
    {                                                                                   \
        typedef T V __attribute__((vector_size(VBYTES)));                               \
        typedef IT IV __attribute__((vector_size(VBYTES)));                             \
        /* The indices in vectors of the same width: NH of them a vector of V. */      \
        typedef int64_t LV __attribute__((vector_size(VBYTES)));                        \
        enum { VL = VBYTES / sizeof(T), LL = VBYTES / 8, NH = VL / LL };                \
        IV lo_half, hi_half, narrow;                                                    \
        LV iota2[NH];                                                                   \
        int64_t p, q, l, h, q_max = Q - VL;                                             \
        for (l = 0; l < VL; l++) {                                                      \
            iota2[l / LL][l % LL] = 2 * l;                                              \
            /* lane l of a row's first vector: window l/2's cell l%2 */                 \
            lo_half[l] = (IT)(l / 2 + (l % 2) * VL);                                    \
            hi_half[l] = (IT)(VL / 2 + l / 2 + (l % 2) * VL);                           \
            /* the low halves of two vectors of int64 (little-endian) */                \
            narrow[l] = (IT)(2 * l);                                                    \
        }                                                                               \
        for (p = 0; p < P; p++) {                                                       \
            const T *g = gy + p * Q;                                                    \
            const int64_t *ix = idx + p * Q;                                            \
            T *a = gx + 2 * p * W, *b = a + W;                                          \
            int64_t bad = 0;                                                            \
            LV badv = {0};                                                              \
            q = 0;                                                                      \
            if (q_max >= 0)                                                             \
                for (;; q += VL) {                                                      \
                    V gv, zero = {0}, c0, c1, c2, c3, a0, a1, b0, b1;                   \
                    LV off[NH];                                                         \
                    IV r, c, o;                                                         \
                    if (q > q_max)                                                      \
                        q = q_max;                                                      \
                    memcpy(&gv, g + q, sizeof(V));                                      \
                    gv += zero; /* -0 becomes +0, as the scatter's 0 + g */             \
                    for (h = 0; h < NH; h++) {                                          \
                        LV iv, col;                                                     \
                        memcpy(&iv, ix + q + h * LL, sizeof(LV));                       \
                        off[h] = iv - (iota2[h] + (2 * p * W + 2 * q));                 \
                        /* in the block: off - (W if off >= W) is 0 or 1 */             \
                        col = off[h] - ((off[h] >= W) & W);                             \
                        badv |= (col < 0) | (col > 1);                                  \
                    }                                                                   \
                    if (NH == 1)                                                        \
                        memcpy(&o, &off[0], sizeof(IV));                                \
                    else                                                                \
                        o = __builtin_shuffle((IV)off[0], (IV)off[NH - 1], narrow);     \
                    r = o >= (IT)W;                                                     \
                    c = (o - (r & (IT)W)) == 1;                                         \
                    c0 = (V)((IV)gv & ~r & ~c);                                         \
                    c1 = (V)((IV)gv & ~r & c);                                          \
                    c2 = (V)((IV)gv & r & ~c);                                          \
                    c3 = (V)((IV)gv & r & c);                                           \
                    a0 = __builtin_shuffle(c0, c1, lo_half);                            \
                    a1 = __builtin_shuffle(c0, c1, hi_half);                            \
                    b0 = __builtin_shuffle(c2, c3, lo_half);                            \
                    b1 = __builtin_shuffle(c2, c3, hi_half);                            \
                    memcpy(a + 2 * q, &a0, sizeof(V));                                  \
                    memcpy(a + 2 * q + VL, &a1, sizeof(V));                             \
                    memcpy(b + 2 * q, &b0, sizeof(V));                                  \
                    memcpy(b + 2 * q + VL, &b1, sizeof(V));                             \
                    if (q == q_max) {                                                   \
                        q = Q;                                                          \
                        break;                                                          \
                    }                                                                   \
                }                                                                       \
            for (l = 0; l < LL; l++)                                                    \
                bad |= badv[l];                                                         \
            for (; q < Q; q++) {                                                        \
                int64_t o1 = ix[q] - (2 * p * W + 2 * q);                               \
                T v = 0;                                                                \
                v += g[q];                                                              \
                a[2 * q] = o1 == 0 ? v : 0;                                             \
                a[2 * q + 1] = o1 == 1 ? v : 0;                                         \
                b[2 * q] = o1 == W ? v : 0;                                             \
                b[2 * q + 1] = o1 == W + 1 ? v : 0;                                     \
                bad |= o1 != 0 && o1 != 1 && o1 != W && o1 != W + 1;                    \
            }                                                                           \
            if (bad)                                                                    \
                return 1;                                                               \
            for (q = 2 * Q; q < W; q++) /* at most one column, mostly */             \
                a[q] = b[q] = 0;                                                        \
        }                                                                               \
        if (2 * P < H)                                                                  \
            memset(gx + 2 * P * W, 0, (size_t)((H - 2 * P) * W) * sizeof(T));           \
        return 0;                                                                       \
    }

#if PK_X86
#define PK_AVX512 __attribute__((target("avx512f,avx2")))
#define PK_AVX2 __attribute__((target("avx2")))
#endif
#define PK_BASE

/* Every kernel at one vector width, and both plane kernels over widths P1-P3. */
#define PK_DEFINE_WIDTH(PREFIX, T, IT, VBYTES, ATTR)                                    \
    PK_DEFINE_ROW_PASSES(PREFIX, T, IT, VBYTES, ATTR)                                   \
    PK_DEFINE_2X2_ROW(PREFIX, T, IT, VBYTES, ATTR)
#define PK_DEFINE_PLANES(SUFFIX, T, IT, P1, P2, P3, ATTR)                               \
    PK_DEFINE_MAX_PLANE(pk_max_plane_##SUFFIX, T, IT, P1, P2, P3, ATTR)                 \
    PK_DEFINE_MAX_PLANE_2X2(pk_max_2x2_##SUFFIX, T, IT, P1, P2, P3, ATTR)

PK_DEFINE_WIDTH(pk_f32_base16, float, int32_t, 16, PK_BASE)
PK_DEFINE_WIDTH(pk_f64_base16, double, int64_t, 16, PK_BASE)
PK_DEFINE_PLANES(f32_base, float, int32_t, pk_f32_base16, pk_f32_base16, pk_f32_base16,
                 PK_BASE)
PK_DEFINE_PLANES(f64_base, double, int64_t, pk_f64_base16, pk_f64_base16, pk_f64_base16,
                 PK_BASE)
PK_DEFINE_MAX_BWD_2X2(pk_max_bwd_2x2_f32_base, float, int32_t, 16, PK_BASE)
PK_DEFINE_MAX_BWD_2X2(pk_max_bwd_2x2_f64_base, double, int64_t, 16, PK_BASE)
#if PK_X86
PK_DEFINE_WIDTH(pk_f32_avx2_32, float, int32_t, 32, PK_AVX2)
PK_DEFINE_WIDTH(pk_f64_avx2_32, double, int64_t, 32, PK_AVX2)
PK_DEFINE_WIDTH(pk_f32_avx2_16, float, int32_t, 16, PK_AVX2)
PK_DEFINE_WIDTH(pk_f64_avx2_16, double, int64_t, 16, PK_AVX2)
PK_DEFINE_PLANES(f32_avx2, float, int32_t, pk_f32_avx2_32, pk_f32_avx2_16, pk_f32_avx2_16,
                 PK_AVX2)
PK_DEFINE_PLANES(f64_avx2, double, int64_t, pk_f64_avx2_32, pk_f64_avx2_16, pk_f64_avx2_16,
                 PK_AVX2)
PK_DEFINE_MAX_BWD_2X2(pk_max_bwd_2x2_f32_avx2, float, int32_t, 32, PK_AVX2)
PK_DEFINE_MAX_BWD_2X2(pk_max_bwd_2x2_f64_avx2, double, int64_t, 32, PK_AVX2)
PK_DEFINE_WIDTH(pk_f32_avx512_64, float, int32_t, 64, PK_AVX512)
PK_DEFINE_WIDTH(pk_f64_avx512_64, double, int64_t, 64, PK_AVX512)
PK_DEFINE_WIDTH(pk_f32_avx512_32, float, int32_t, 32, PK_AVX512)
PK_DEFINE_WIDTH(pk_f64_avx512_32, double, int64_t, 32, PK_AVX512)
PK_DEFINE_WIDTH(pk_f32_avx512_16, float, int32_t, 16, PK_AVX512)
PK_DEFINE_WIDTH(pk_f64_avx512_16, double, int64_t, 16, PK_AVX512)
PK_DEFINE_PLANES(f32_avx512, float, int32_t, pk_f32_avx512_64, pk_f32_avx512_32,
                 pk_f32_avx512_16, PK_AVX512)
PK_DEFINE_PLANES(f64_avx512, double, int64_t, pk_f64_avx512_64, pk_f64_avx512_32,
                 pk_f64_avx512_16, PK_AVX512)
PK_DEFINE_MAX_BWD_2X2(pk_max_bwd_2x2_f32_avx512, float, int32_t, 64, PK_AVX512)
PK_DEFINE_MAX_BWD_2X2(pk_max_bwd_2x2_f64_avx512, double, int64_t, 64, PK_AVX512)
#endif

typedef void (*pk_max_plane_f32_t)(const float *, float *, int64_t *, void *, int64_t,
                                   int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                   int64_t, int64_t, int64_t, int64_t, int64_t);
typedef void (*pk_max_plane_f64_t)(const double *, double *, int64_t *, void *, int64_t,
                                   int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                   int64_t, int64_t, int64_t, int64_t, int64_t);

typedef void (*pk_max_2x2_f32_t)(const float *, float *, int64_t *, void *, int64_t, int64_t,
                                 int64_t);
typedef void (*pk_max_2x2_f64_t)(const double *, double *, int64_t *, void *, int64_t,
                                 int64_t, int64_t);

typedef int (*pk_max_bwd_2x2_f32_t)(const float *, const int64_t *, float *, int64_t,
                                    int64_t, int64_t, int64_t);
typedef int (*pk_max_bwd_2x2_f64_t)(const double *, const int64_t *, double *, int64_t,
                                    int64_t, int64_t, int64_t);

typedef struct {
    const char *isa;
    pk_max_plane_f32_t max_plane_f32;
    pk_max_plane_f64_t max_plane_f64;
    pk_max_2x2_f32_t max_2x2_f32;
    pk_max_2x2_f64_t max_2x2_f64;
    pk_max_bwd_2x2_f32_t max_bwd_2x2_f32;
    pk_max_bwd_2x2_f64_t max_bwd_2x2_f64;
} pk_kernels_t;

static pk_kernels_t pk_kernels = {"baseline", pk_max_plane_f32_base, pk_max_plane_f64_base,
                                  pk_max_2x2_f32_base, pk_max_2x2_f64_base,
                                  pk_max_bwd_2x2_f32_base, pk_max_bwd_2x2_f64_base};

/* Pick the widest variant this CPU runs; CONVKIT_ISA=avx2|baseline caps it. */
static void pk_select_kernels(const char *cap)
{
#if PK_X86
    int allow512 = !(cap && (strcmp(cap, "avx2") == 0 || strcmp(cap, "baseline") == 0));
    int allow2 = !(cap && strcmp(cap, "baseline") == 0);
    __builtin_cpu_init();
    if (allow512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2")) {
        pk_kernels_t k = {"avx512f", pk_max_plane_f32_avx512, pk_max_plane_f64_avx512,
                          pk_max_2x2_f32_avx512, pk_max_2x2_f64_avx512,
                          pk_max_bwd_2x2_f32_avx512, pk_max_bwd_2x2_f64_avx512};
        pk_kernels = k;
    } else if (allow2 && __builtin_cpu_supports("avx2")) {
        pk_kernels_t k = {"avx2", pk_max_plane_f32_avx2, pk_max_plane_f64_avx2,
                          pk_max_2x2_f32_avx2, pk_max_2x2_f64_avx2,
                          pk_max_bwd_2x2_f32_avx2, pk_max_bwd_2x2_f64_avx2};
        pk_kernels = k;
    }
#else
    (void)cap;
#endif
}

#endif
