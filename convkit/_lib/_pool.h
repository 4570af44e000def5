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

/* Per-thread scratch of pk_max_plane_*: one input row padded with -inf
 * (*row_len elements, from the start), then R ring rows of maxima and of
 * winners, one row of winners, and R row tags (int64, from byte *tag_at). */
static int64_t pk_max_scratch_layout(int64_t R, int64_t S, int64_t Q, int64_t W, int64_t sw,
                                     int64_t pl, int64_t itemsize, int64_t *row_len,
                                     int64_t *tag_at)
{
    int64_t span = (Q - 1) * sw + S, len = pl + W > span ? pl + W : span;
    /* slack for vector reads past the last window (two 64-byte vectors) */
    len += 128 / itemsize;
    *row_len = len;
    *tag_at = (((len + 2 * R * Q + Q) * itemsize + 7) / 8) * 8;
    return *tag_at + 8 * R + 64;
}

/* [lo, hi): the i in [0, count) with i*step + offset in [0, size). */
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
 * Row passes on vectors of VBYTES: PREFIX##_h computes horizontal maxima
 * hv[q] (winning column s*dw in ht[q]) of input row xr for the outputs
 * [q, q_hi) whose windows lie inside the row, as far as whole vectors
 * reach without reading past the row's end; the last vector overlaps the
 * one before rather than leaving a tail. It returns the first output it
 * left. PREFIX##_v folds one row of maxima (hv, ht + roff) into the output
 * row (y, mt) over [q, q_hi), the same way; folding twice changes nothing,
 * so overlapping vectors are safe.
 */
#define PK_DEFINE_ROW_PASSES(PREFIX, T, IT, VBYTES, ATTR)                               \
    ATTR static inline __attribute__((always_inline)) int64_t PREFIX##_h_impl(          \
        const T *xr, T *hv, IT *ht, int64_t W, int64_t S, int64_t sw, int64_t pl,       \
        int64_t q, int64_t q_hi, int with_idx)                                          \
    {                                                                                   \
        typedef T V __attribute__((vector_size(VBYTES)));                               \
        typedef IT IV __attribute__((vector_size(VBYTES)));                             \
        enum { VL = VBYTES / sizeof(T) };                                               \
        IV even, odd;                                                                   \
        int64_t l, s, q_max, last;                                                      \
        /* the last element a vector starting at output q reads: q*sw - pl + reach */   \
        int64_t reach = sw == 1 ? S - 1 + VL - 1 : ((S - 1) & ~(int64_t)1) + 2 * VL - 1; \
        if (W - 1 - reach + pl < 0)                                                     \
            return q;                                                                   \
        last = (W - 1 - reach + pl) / sw;                                               \
        q_max = q_hi - VL < last ? q_hi - VL : last;                                    \
        if (q_max < q)                                                                  \
            return q;                                                                   \
        for (l = 0; l < VL; l++) {                                                      \
            even[l] = (IT)(2 * l);                                                      \
            odd[l] = (IT)(2 * l + 1);                                                   \
        }                                                                               \
        for (;; q += VL) {                                                              \
            const T *base;                                                              \
            V m, v, lo, hi;                                                             \
            IV t = {0}, take;                                                           \
            if (q > q_max)                                                              \
                q = q_max;                                                              \
            base = xr + q * sw - pl;                                                    \
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
            memcpy(hv + q, &m, sizeof(V));                                              \
            if (with_idx)                                                               \
                memcpy(ht + q, &t, sizeof(IV));                                         \
            if (q == q_max)                                                             \
                return q_max + VL;                                                      \
        }                                                                               \
    }                                                                                   \
    /* constant (S, sw, with_idx) for the common kernels, so their taps unroll */     \
    ATTR static int64_t PREFIX##_h(const T *xr, T *hv, IT *ht, int64_t W, int64_t S,     \
                                   int64_t sw, int64_t pl, int64_t q, int64_t q_hi,      \
                                   int with_idx)                                         \
    {                                                                                   \
        if (S == 3 && sw == 2)                                                          \
            return with_idx ? PREFIX##_h_impl(xr, hv, ht, W, 3, 2, pl, q, q_hi, 1)      \
                            : PREFIX##_h_impl(xr, hv, ht, W, 3, 2, pl, q, q_hi, 0);     \
        if (S == 2 && sw == 2)                                                          \
            return with_idx ? PREFIX##_h_impl(xr, hv, ht, W, 2, 2, pl, q, q_hi, 1)      \
                            : PREFIX##_h_impl(xr, hv, ht, W, 2, 2, pl, q, q_hi, 0);     \
        if (S == 3 && sw == 1)                                                          \
            return with_idx ? PREFIX##_h_impl(xr, hv, ht, W, 3, 1, pl, q, q_hi, 1)      \
                            : PREFIX##_h_impl(xr, hv, ht, W, 3, 1, pl, q, q_hi, 0);     \
        if (sw == 2)                                                                    \
            return PREFIX##_h_impl(xr, hv, ht, W, S, 2, pl, q, q_hi, 1);                \
        return PREFIX##_h_impl(xr, hv, ht, W, S, 1, pl, q, q_hi, 1);                    \
    }                                                                                   \
    ATTR static inline __attribute__((always_inline)) int64_t PREFIX##_v_impl(          \
        T *y, IT *mt, const T *hv, const IT *ht, IT roff, int64_t q, int64_t q_hi,      \
        int with_idx)                                                                   \
    {                                                                                   \
        typedef T V __attribute__((vector_size(VBYTES)));                               \
        typedef IT IV __attribute__((vector_size(VBYTES)));                             \
        enum { VL = VBYTES / sizeof(T) };                                               \
        int64_t q_max = q_hi - VL;                                                      \
        if (q_max < q)                                                                  \
            return q;                                                                   \
        for (;; q += VL) {                                                              \
            V m, v;                                                                     \
            IV t, vt, take;                                                             \
            if (q > q_max)                                                              \
                q = q_max;                                                              \
            memcpy(&m, y + q, sizeof(V));                                               \
            memcpy(&v, hv + q, sizeof(V));                                              \
            take = (v > m) | (v != v);                                                  \
            m = (V)(((IV)v & take) | ((IV)m & ~take));                                  \
            memcpy(y + q, &m, sizeof(V));                                               \
            if (with_idx) {                                                             \
                memcpy(&t, mt + q, sizeof(IV));                                         \
                memcpy(&vt, ht + q, sizeof(IV));                                        \
                t = ((vt + roff) & take) | (t & ~take);                                 \
                memcpy(mt + q, &t, sizeof(IV));                                         \
            }                                                                           \
            if (q == q_max)                                                             \
                return q_max + VL;                                                      \
        }                                                                               \
    }                                                                                   \
    ATTR static int64_t PREFIX##_v(T *y, IT *mt, const T *hv, const IT *ht, IT roff,     \
                                   int64_t q, int64_t q_hi, int with_idx)               \
    {                                                                                   \
        return with_idx ? PREFIX##_v_impl(y, mt, hv, ht, roff, q, q_hi, 1)              \
                        : PREFIX##_v_impl(y, mt, hv, ht, roff, q, q_hi, 0);             \
    }

/*
 * NAME(x, y, idx, scratch, H, W, P, Q, R, S, sh, sw, pt, pl, dh, dw):
 * one (H, W) plane x -> one (P, Q) plane y, and the flat positions of the
 * winners in idx unless it is NULL. Every output row must have at least one
 * window row inside the input (the caller's geometry ensures it). The row
 * passes run at widths P1 (widest), P2 and P3 (narrower, for what is left),
 * then one output at a time.
 */
#define PK_DEFINE_MAX_PLANE(NAME, T, IT, P1, P2, P3, ATTR)                              \
    ATTR static void NAME(const T *x, T *y, int64_t *idx, void *scratch, int64_t H,     \
                          int64_t W, int64_t P, int64_t Q, int64_t R, int64_t S,        \
                          int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t dh,   \
                          int64_t dw)                                                   \
    {                                                                                   \
        int64_t row_len, tag_at;                                                        \
        T *prow = (T *)scratch, *hval;                                                  \
        IT *htap, *mtap;                                                                \
        int64_t *tag;                                                                   \
        int64_t p, q, r, s, r_lo, r_hi, ih;                                             \
        /* output columns whose windows lie inside the row */                           \
        int64_t q_in_lo, q_in_hi;                                                       \
        int vec = dw == 1 && (sw == 1 || sw == 2), wi = idx != NULL;                    \
        pk_max_scratch_layout(R, S, Q, W, sw, pl, sizeof(T), &row_len, &tag_at);         \
        hval = prow + row_len;                                                          \
        htap = (IT *)(hval + R * Q);                                                    \
        mtap = htap + R * Q;                                                            \
        tag = (int64_t *)((char *)scratch + tag_at);                                    \
        pk_valid_range(W - (S - 1) * dw, Q, sw, -pl, &q_in_lo, &q_in_hi);               \
        (void)q_in_hi;                                                                  \
        for (r = 0; r < R; r++)                                                         \
            tag[r] = -1;                                                                \
        if (vec) {                                                                      \
            /* row pads: padding never wins a window that has an input cell */          \
            for (q = 0; q < pl; q++)                                                    \
                prow[q] = -INFINITY;                                                    \
            for (q = pl + W; q < row_len; q++)                                          \
                prow[q] = -INFINITY;                                                    \
        }                                                                               \
        for (p = 0; p < P; p++) {                                                       \
            int64_t ih0 = p * sh - pt, first = 1;                                       \
            T *yrow = y + p * Q;                                                        \
            pk_valid_range(H, R, dh, ih0, &r_lo, &r_hi);                                \
            for (r = r_lo; r < r_hi; r++) {                                             \
                int64_t slot;                                                           \
                T *hv;                                                                  \
                IT *ht, roff = (IT)(r * dh * W);                                        \
                ih = ih0 + r * dh;                                                      \
                if (R <= 8) {                                                           \
                    /* rows come in increasing order: reuse a match, else the oldest */ \
                    int64_t k;                                                          \
                    slot = 0;                                                           \
                    for (k = 0; k < R; k++) {                                           \
                        if (tag[k] == ih) {                                             \
                            slot = k;                                                   \
                            break;                                                      \
                        }                                                               \
                        if (tag[k] < tag[slot])                                         \
                            slot = k;                                                   \
                    }                                                                   \
                } else {                                                                \
                    slot = ih % R;                                                      \
                }                                                                       \
                hv = hval + slot * Q;                                                   \
                ht = htap + slot * Q;                                                   \
                if (tag[slot] != ih) {                                                  \
                    /* horizontal pass over input row ih */                             \
                    const T *xr = x + ih * W;                                           \
                    tag[slot] = ih;                                                     \
                    if (vec) {                                                          \
                        /* the row between -inf pads: every window is whole */          \
                        memcpy(prow + pl, xr, W * sizeof(T));                           \
                        q = P1##_h(prow, hv, ht, row_len, S, sw, 0, 0, Q, wi);          \
                        q = P2##_h(prow, hv, ht, row_len, S, sw, 0, q, Q, wi);          \
                        q = P3##_h(prow, hv, ht, row_len, S, sw, 0, q, Q, wi);          \
                        for (; q < Q; q++) {                                            \
                            T m = prow[q * sw], v;                                      \
                            IT t = 0;                                                   \
                            for (s = 1; s < S; s++) {                                   \
                                v = prow[q * sw + s];                                   \
                                if (v > m || v != v) {                                  \
                                    m = v;                                              \
                                    t = (IT)s;                                          \
                                }                                                       \
                            }                                                           \
                            hv[q] = m;                                                  \
                            ht[q] = t;                                                  \
                        }                                                               \
                        /* a pad cell "wins" only a window of -inf: name its first */   \
                        /* input cell instead, as the row-major scan does */            \
                        for (q = 0; wi && q < q_in_lo; q++)                             \
                            if (ht[q] < pl - q * sw)                                    \
                                ht[q] = (IT)(pl - q * sw);                              \
                    }                                                                   \
                    for (q = 0; !vec && q < Q; q++) {                                   \
                        int64_t s_lo, s_hi, c0 = q * sw - pl;                           \
                        T m = -INFINITY, v;                                             \
                        IT t;                                                           \
                        int take;                                                       \
                        pk_valid_range(W, S, dw, c0, &s_lo, &s_hi);                     \
                        t = (IT)(s_lo * dw);                                            \
                        for (s = s_lo; s < s_hi; s++) {                                 \
                            v = xr[c0 + s * dw];                                        \
                            take = (v > m) | (v != v);                                  \
                            m = take ? v : m;                                           \
                            t = take ? (IT)(s * dw) : t;                                \
                        }                                                               \
                        hv[q] = m;                                                      \
                        ht[q] = t;                                                      \
                    }                                                                   \
                }                                                                       \
                /* vertical pass: fold row r into the output row */                     \
                if (first) {                                                            \
                    memcpy(yrow, hv, Q * sizeof(T));                                    \
                    if (wi)                                                             \
                        for (q = 0; q < Q; q++)                                         \
                            mtap[q] = ht[q] + roff;                                     \
                    first = 0;                                                          \
                    continue;                                                           \
                }                                                                       \
                q = P1##_v(yrow, mtap, hv, ht, roff, 0, Q, wi);                         \
                q = P2##_v(yrow, mtap, hv, ht, roff, q, Q, wi);                         \
                q = P3##_v(yrow, mtap, hv, ht, roff, q, Q, wi);                         \
                for (; q < Q; q++) {                                                    \
                    T v = hv[q];                                                        \
                    int take = (v > yrow[q]) | (v != v);                                \
                    yrow[q] = take ? v : yrow[q];                                       \
                    if (wi)                                                             \
                        mtap[q] = take ? ht[q] + roff : mtap[q];                        \
                }                                                                       \
            }                                                                           \
            if (idx != NULL) {                                                          \
                int64_t *irow = idx + p * Q, corner = ih0 * W - pl;                     \
                for (q = 0; q < Q; q++)                                                 \
                    irow[q] = corner + q * sw + (int64_t)mtap[q];                       \
            }                                                                           \
        }                                                                               \
    }

#if PK_X86
#define PK_AVX512 __attribute__((target("avx512f,avx2")))
#define PK_AVX2 __attribute__((target("avx2")))
#endif
#define PK_BASE

PK_DEFINE_ROW_PASSES(pk_f32_base16, float, int32_t, 16, PK_BASE)
PK_DEFINE_ROW_PASSES(pk_f64_base16, double, int64_t, 16, PK_BASE)
PK_DEFINE_MAX_PLANE(pk_max_plane_f32_base, float, int32_t, pk_f32_base16, pk_f32_base16,
                    pk_f32_base16, PK_BASE)
PK_DEFINE_MAX_PLANE(pk_max_plane_f64_base, double, int64_t, pk_f64_base16, pk_f64_base16,
                    pk_f64_base16, PK_BASE)
#if PK_X86
PK_DEFINE_ROW_PASSES(pk_f32_avx2_32, float, int32_t, 32, PK_AVX2)
PK_DEFINE_ROW_PASSES(pk_f64_avx2_32, double, int64_t, 32, PK_AVX2)
PK_DEFINE_ROW_PASSES(pk_f32_avx2_16, float, int32_t, 16, PK_AVX2)
PK_DEFINE_ROW_PASSES(pk_f64_avx2_16, double, int64_t, 16, PK_AVX2)
PK_DEFINE_MAX_PLANE(pk_max_plane_f32_avx2, float, int32_t, pk_f32_avx2_32, pk_f32_avx2_16,
                    pk_f32_avx2_16, PK_AVX2)
PK_DEFINE_MAX_PLANE(pk_max_plane_f64_avx2, double, int64_t, pk_f64_avx2_32, pk_f64_avx2_16,
                    pk_f64_avx2_16, PK_AVX2)
PK_DEFINE_ROW_PASSES(pk_f32_avx512_64, float, int32_t, 64, PK_AVX512)
PK_DEFINE_ROW_PASSES(pk_f64_avx512_64, double, int64_t, 64, PK_AVX512)
PK_DEFINE_ROW_PASSES(pk_f32_avx512_32, float, int32_t, 32, PK_AVX512)
PK_DEFINE_ROW_PASSES(pk_f64_avx512_32, double, int64_t, 32, PK_AVX512)
PK_DEFINE_ROW_PASSES(pk_f32_avx512_16, float, int32_t, 16, PK_AVX512)
PK_DEFINE_ROW_PASSES(pk_f64_avx512_16, double, int64_t, 16, PK_AVX512)
PK_DEFINE_MAX_PLANE(pk_max_plane_f32_avx512, float, int32_t, pk_f32_avx512_64,
                    pk_f32_avx512_32, pk_f32_avx512_16, PK_AVX512)
PK_DEFINE_MAX_PLANE(pk_max_plane_f64_avx512, double, int64_t, pk_f64_avx512_64,
                    pk_f64_avx512_32, pk_f64_avx512_16, PK_AVX512)
#endif

typedef void (*pk_max_plane_f32_t)(const float *, float *, int64_t *, void *, int64_t,
                                   int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                   int64_t, int64_t, int64_t, int64_t, int64_t);
typedef void (*pk_max_plane_f64_t)(const double *, double *, int64_t *, void *, int64_t,
                                   int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                   int64_t, int64_t, int64_t, int64_t, int64_t);

typedef struct {
    const char *isa;
    pk_max_plane_f32_t max_plane_f32;
    pk_max_plane_f64_t max_plane_f64;
} pk_kernels_t;

static pk_kernels_t pk_kernels = {"baseline", pk_max_plane_f32_base, pk_max_plane_f64_base};

/* Pick the widest variant this CPU runs; CONVKIT_ISA=avx2|baseline caps it. */
static void pk_select_kernels(const char *cap)
{
#if PK_X86
    int allow512 = !(cap && (strcmp(cap, "avx2") == 0 || strcmp(cap, "baseline") == 0));
    int allow2 = !(cap && strcmp(cap, "baseline") == 0);
    __builtin_cpu_init();
    if (allow512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2")) {
        pk_kernels_t k = {"avx512f", pk_max_plane_f32_avx512, pk_max_plane_f64_avx512};
        pk_kernels = k;
    } else if (allow2 && __builtin_cpu_supports("avx2")) {
        pk_kernels_t k = {"avx2", pk_max_plane_f32_avx2, pk_max_plane_f64_avx2};
        pk_kernels = k;
    }
#else
    (void)cap;
#endif
}

#endif
