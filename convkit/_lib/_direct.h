/* Register-blocked direct convolution micro-kernels, with runtime ISA dispatch.
 *
 * The caller packs each input channel into stride-phase planes: plane
 * (a, b) holds padded_x[i*sh + a, j*sw + b] as a row-major Hph x Wph grid,
 * zero outside the input, flattened, with zero slack at the end. Output
 * (p, q) is then computed on the flat grid j = p*Wph + q, and every tap
 * (r, s) of the kernel is one fixed offset into one phase plane, so stride,
 * dilation and padding cost nothing inside the loops. Grid columns q >= Q
 * are computed and thrown away (Wph - Q of every Wph).
 *
 * forward:     out[k][j]  = sum_c sum_t w[c][t][k] * plane(c, t)[j + off(t)]
 *              (the grid kernels may sum c in passes, the partial sums kept
 *              exactly in the grid between them: the same sums in the same
 *              order)
 * grad_weight: gw[k][c][t] = sum_j gy[k][j] * plane(c, t)[j + off(t)]
 *
 * The forward writes whole vectors into a per-thread grid buffer of KB rows
 * (gstride elements apart, gstride >= P*Wph + the widest chunk) and then
 * copies the Q valid columns of every row out, adding the bias. Output
 * channel k, position (p, q) goes to out[k*out_kstride + p*out_rstride +
 * q*out_cstride], so a strided view (one stride phase of grad_input) can be
 * written in place. When the grid has no spare column (Wph == Q, as in the
 * column-shifted layout of functional._shifted_layout, where every input
 * channel is packed as S*sh planes of Hph x Q) and the output is contiguous,
 * the forward stores the outputs straight from its registers instead.
 *
 * Each kernel holds a block of output channels times a few vectors of grid
 * positions in registers. Variants for AVX-512, AVX2+FMA and the baseline
 * ISA are compiled from one body with GCC/Clang vector extensions and picked
 * once at run time, so a portable build still uses the machine's widest
 * vector unit. Sums run in a fixed order, whatever the variant's width, for
 * a given machine.
 */
#ifndef CONVKIT_DIRECT_H
#define CONVKIT_DIRECT_H

#include <stdint.h>
#include <string.h>

/* Output channels per forward block (the packed weight layout's last axis). */
#define CK_KB 8
/* Reductions (C/G * R*S terms) shorter than this take the fwds_* kernels;
 * on AVX-512, whose fwds_* is the 8 x 2 vector block and fwd_* 8 x 3,
 * shorter than CK_SHORT_AVX512. */
#define CK_SHORT 16
#define CK_SHORT_AVX512 32
/* Zero slack after each packed plane, in elements: covers over-reads of the
 * widest vector chunk. */
#define CK_SLACK 128

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define CK_X86 1
#else
#define CK_X86 0
#endif
#if CK_X86
/* The masked forward's AVX-512 loads and stores (in target-attributed functions). */
#include <immintrin.h>
#endif

/* Hide how pointer P was computed, so that the compiler keeps it as a base
 * register instead of rebuilding base + index arithmetic in an inner loop. */
#if defined(__GNUC__) || defined(__clang__)
#define CK_OPAQUE(P) __asm__("" : "+r"(P))
#else
#define CK_OPAQUE(P) ((void)0)
#endif

/* Fully unroll a loop over a register block, so its arrays stay in registers. */
#if defined(__clang__)
#define CK_UNROLL _Pragma("unroll")
#define CK_UNROLL32 _Pragma("unroll")
#elif defined(__GNUC__)
#define CK_UNROLL _Pragma("GCC unroll 16")
#define CK_UNROLL32 _Pragma("GCC unroll 32")
#else
#define CK_UNROLL
#define CK_UNROLL32
#endif

/* The first N (< VL <= 16) elements of type T from SRC to DST, in
 * fixed-size pieces (8, 4, 2, 1), none as wide as VL: GCC turns an element
 * loop into a call of memcpy, whose call and size dispatch cost more than
 * these few stores (perf: 3.3% of mnist-conv2's grad_input went to
 * col2im's calls for its 12-wide rows). */
#define CK_STORE_FIRST(T, VL, DST, SRC, N)                                             \
    do {                                                                               \
        int64_t n_ = (N), o_ = 0;                                                      \
        if ((VL) > 8 && (n_ & 8)) {                                                    \
            memcpy((DST) + o_, (SRC) + o_, 8 * sizeof(T));                             \
            o_ += 8;                                                                   \
        }                                                                              \
        if ((VL) > 4 && (n_ & 4)) {                                                    \
            memcpy((DST) + o_, (SRC) + o_, 4 * sizeof(T));                             \
            o_ += 4;                                                                   \
        }                                                                              \
        if ((VL) > 2 && (n_ & 2)) {                                                    \
            memcpy((DST) + o_, (SRC) + o_, 2 * sizeof(T));                             \
            o_ += 2;                                                                   \
        }                                                                              \
        if (n_ & 1)                                                                    \
            (DST)[o_] = (SRC)[o_];                                                     \
    } while (0)

/* ---- forward ----------------------------------------------------------- */

/* One tap of CK_DEFINE_FORWARD's register block: QB vectors of positions
 * from XP, times the KS weights at WT, into acc. */
#define CK_FWD_TAP(XP, WT, KS, QB)                                                     \
    do {                                                                               \
        V xv[QB];                                                                      \
        CK_UNROLL for (b = 0; b < QB; b++)                                             \
            memcpy(&xv[b], (XP) + b * VL, sizeof(V));                                  \
        CK_UNROLL for (kb = 0; kb < KS; kb++)                                          \
            CK_UNROLL for (b = 0; b < QB; b++)                                         \
                acc[kb][b] += xv[b] * (WT)[kb];                                        \
    } while (0)

#define CK_DEFINE_FORWARD(NAME, T, VBYTES, KB, KS, QB, ATTR)                          \
    ATTR static void NAME(const T *x, const T *w, const int64_t *tap_off,              \
                          int64_t Cg, int64_t RS, int64_t chan_stride,                 \
                          int64_t Wph, int64_t Q, int64_t P, T *grid, int64_t gstride, \
                          T *out, int64_t out_kstride, int64_t out_rstride,            \
                          int64_t out_cstride, int64_t kcount,                         \
                          const T *bias, int64_t c_pass)                               \
    {                                                                                  \
        typedef T V __attribute__((vector_size(VBYTES)));                              \
        enum { VL = VBYTES / sizeof(T), QW = VL * QB };                                \
        int64_t j0, k0, c, t, kb, b, p, q, grid_len = P * Wph, c0, c1;                 \
        /* Exact positions (Wph == Q) into a contiguous output: store from        \
         * the registers, no grid. */                                             \
        int direct = Wph == Q && out_cstride == 1 && out_rstride == Q, last = 1;     \
        if (c_pass <= 0 || c_pass > Cg)                                                \
            c_pass = Cg;                                                               \
        /* Input channels in passes of c_pass, the partial sums waiting in the    \
         * grid between passes: the same sums, in the same order, as one pass. */ \
        for (c0 = 0; c0 < Cg; c0 += c_pass) {                                          \
        c1 = c0 + c_pass < Cg ? c0 + c_pass : Cg;                                      \
        last = c1 == Cg;                                                               \
        for (j0 = 0; j0 < grid_len; j0 += QW)                                          \
            /* KS of the block's KB channels at a time: a narrower register       \
             * block leaves room for more position vectors (16 registers). */     \
            for (k0 = 0; k0 < kcount; k0 += KS) {                                      \
                V acc[KS][QB];                                                         \
                if (c0 == 0)                                                           \
                    CK_UNROLL for (kb = 0; kb < KS; kb++)                              \
                        CK_UNROLL for (b = 0; b < QB; b++)                             \
                            acc[kb][b] = (V){0};                                       \
                else                                                                   \
                    CK_UNROLL for (kb = 0; kb < KS; kb++)                              \
                        CK_UNROLL for (b = 0; b < QB; b++)                             \
                            memcpy(&acc[kb][b], grid + (k0 + kb) * gstride + j0 + b * VL, \
                                   sizeof(V));                                         \
                if (RS == 1) {                                                         \
                    /* One tap (1x1, the scatter product, a 1x1 stride phase):   \
                     * no tap loop around each channel's few instructions,      \
                     * the same sum (1.3-1.6x on AVX2, kernel alone). */         \
                    const T *xp = x + c0 * chan_stride + tap_off[0] + j0;              \
                    const T *wt = w + c0 * KB + k0;                                    \
                    for (c = c0; c < c1; c++, xp += chan_stride, wt += KB)             \
                        CK_FWD_TAP(xp, wt, KS, QB);                                    \
                } else if (RS == 9 && (VBYTES) == 32) {                                \
                    /* AVX2, 3x3: the taps unrolled, their weights at fixed         \
                     * displacements, a compiler barrier after each so that the     \
                     * next tap's loads wait (hoisted, they spilled accumulators:   \
                     * 0.9x). The same terms in the same order. On a Zen 3 EPYC,   \
                     * where the 12-FMA tap loop carried 5 instructions of its own \
                     * (a microbenchmark of it ran at 61% of the FMA peak with 7,  \
                     * 91% with none), alternated call by call: resnet-3x3-n1's    \
                     * forward 1.12x-1.16x, resnet-3x3-s2 1.06x-1.11x,             \
                     * resnet-3x3 1.02x-1.22x, 8x128x28x28 -> 128 1.16x-1.19x. */  \
                    for (c = c0; c < c1; c++) {                                        \
                        const T *xc = x + c * chan_stride + j0;                        \
                        const T *wc = w + c * 9 * KB + k0;                             \
                        CK_OPAQUE(xc);                                                 \
                        CK_UNROLL for (t = 0; t < 9; t++) {                            \
                            CK_FWD_TAP(xc + tap_off[t], wc + t * KB, KS, QB);          \
                            __asm__ volatile("" ::: "memory");                         \
                        }                                                              \
                    }                                                                  \
                } else                                                                 \
                for (c = c0; c < c1; c++) {                                            \
                    const T *xc = x + c * chan_stride + j0;                            \
                    const T *wc = w + c * RS * KB + k0;                                \
                    CK_OPAQUE(xc);                                                     \
                    for (t = 0; t < RS; t++) {                                         \
                        const T *xp = xc + tap_off[t];                                 \
                        const T *wt = wc + t * KB;                                     \
                        CK_FWD_TAP(xp, wt, KS, QB);                                    \
                    }                                                                  \
                }                                                                      \
                if (direct && last)                                                    \
                    CK_UNROLL for (kb = 0; kb < KS; kb++) {                            \
                        T *o = out + (k0 + kb) * out_kstride;                          \
                        if (k0 + kb >= kcount)                                         \
                            break;                                                     \
                        CK_UNROLL for (b = 0; b < QB; b++) {                           \
                            int64_t j = j0 + b * VL;                                   \
                            V r = acc[kb][b] + bias[k0 + kb];                          \
                            if (j + VL <= grid_len)                                    \
                                memcpy(o + j, &r, sizeof(V));                          \
                            else if (j < grid_len) {                                   \
                                T lanes[VL];                                           \
                                memcpy(lanes, &r, sizeof(V));                          \
                                CK_STORE_FIRST(T, VL, o + j, lanes, grid_len - j);     \
                            }                                                          \
                        }                                                              \
                    }                                                                  \
                else                                                                   \
                    CK_UNROLL for (kb = 0; kb < KS; kb++)                              \
                        CK_UNROLL for (b = 0; b < QB; b++) {                           \
                            V r = acc[kb][b];                                          \
                            memcpy(grid + (k0 + kb) * gstride + j0 + b * VL, &r,       \
                                   sizeof(V));                                         \
                        }                                                              \
            }                                                                          \
        }                                                                              \
        for (kb = 0; kb < (direct ? 0 : kcount); kb++)                                 \
            for (p = 0; p < P; p++) {                                                  \
                const T *src = grid + kb * gstride + p * Wph;                          \
                T *dst = out + kb * out_kstride + p * out_rstride;                     \
                if (out_cstride == 1 && Q >= VL) {                                     \
                    /* Whole vectors, the last one overlapping its neighbour:        \
                     * the overlap is written twice with the same values. */          \
                    for (q = 0;; q += VL) {                                            \
                        V v;                                                           \
                        if (q + VL > Q)                                                \
                            q = Q - VL;                                                \
                        memcpy(&v, src + q, sizeof(V));                                \
                        v += bias[kb];                                                 \
                        memcpy(dst + q, &v, sizeof(V));                                \
                        if (q + VL >= Q)                                               \
                            break;                                                     \
                    }                                                                  \
                } else if (out_cstride == 1)                                           \
                    for (q = 0; q < Q; q++)                                            \
                        dst[q] = src[q] + bias[kb];                                    \
                else                                                                   \
                    for (q = 0; q < Q; q++)                                            \
                        dst[q * out_cstride] = src[q] + bias[kb];                      \
            }                                                                          \
    }

/* Input channels per pass of the channel-vector forward: as many as keep
 * the block's weights for them (per_channel bytes each) within
 * ck_kvec_chunk_bytes, so that they stay near L1 while every position block
 * of the pass reads them, where one pass over all C/G channels streams the
 * whole block's weights from L2 for every block of positions
 * (resnet-3x3-c256: 147 KB). The partial sums wait in the grid buffer
 * ((P*Q + 16) * VL*KV elements) between passes, stored exactly: any chunk
 * gives one pass's bits. CK_KVEC_CHUNK_BYTES, measured on an AVX2 EPYC:
 * 16 and 32 KB both gain 6-10% on c256's forward and grad_input; 32 KB
 * costs mnist-conv2 (51 KB of weights, two passes) about 1%, 16 KB 4%; on
 * an AVX-512 Xeon (Sapphire Rapids class) 32 KB beats 16 KB by 5-8% and
 * 64 KB by 6-11%. The AVX-512 kernels on Zen 4 take one pass
 * (CK_ONE_PASS, set in ck_select_kernels): on a Zen 4 EPYC, alternated
 * call by call with 32 KB, one pass ran mnist-conv2's forward 1.10x as fast
 * (float64 too), c256's forward and grad_input 1.04-1.07x, where 16 KB ran
 * them 0.94-0.96x and 64 KB 1.03-1.06x. Zen 5 (48 KB of L1, like the Xeon)
 * keeps 32 KB until measured. */
#define CK_KVEC_CHUNK_BYTES 32768
/* Either setting below: every input channel in one pass. */
#define CK_ONE_PASS INT64_MAX
static int64_t ck_kvec_chunk_bytes = CK_KVEC_CHUNK_BYTES;
/* Bytes of one packed grid position across a pass's channels and phase
 * planes in the grid forward (its c_pass comes from this in
 * functional._grid_channel_pass, which documents the measurements); one
 * pass on Zen 4, where passes of 256 bytes ran the forward of
 * resnet-3x3-s2 and of 8x128x28x28 -> 256 at stride 2 3.5-5% slower
 * (alternated call by call, 2 threads) and 8x256x28x28 -> 256 at stride 1
 * within 1%. The AVX2 kernels take passes of 128 bytes (32 channels at
 * stride 1, 8 at stride 2; CK_GRID_PASS_BYTES_AVX2): on a Zen 3 EPYC (32 KB
 * of L1 data cache), alternated call by call with 256 bytes, they ran the
 * forward of resnet-3x3 1.11x as fast, resnet-3x3-n1 1.11x, resnet-3x3-s2
 * 1.14x and 8x128x28x28 -> 128 1.07x; 96 and 192 bytes did no better. */
#define CK_GRID_PASS_BYTES 256
#define CK_GRID_PASS_BYTES_AVX2 128
static int64_t ck_grid_pass_bytes = CK_GRID_PASS_BYTES;
/* Fields of a block of the channel-vector forward's plan (see
 * CK_DEFINE_FORWARD_KVEC). */
#define CK_KVEC_PLAN_FIELDS 7
static inline int64_t ck_kvec_chunk(int64_t per_channel, int64_t Cg)
{
    int64_t cb = ck_kvec_chunk_bytes / per_channel;
    return cb < 1 ? 1 : cb > Cg ? Cg : cb;
}

/* Tap t of input channel c for a block of QBX positions (CK_KVEC_POSITIONS). */
#define CK_KVEC_TAP(QBX)                                                               \
    do {                                                                               \
        int64_t xo = c * chan_stride + tap_off[t];                                     \
        const TK_ *wt = w + (c * RS + t) * KBW;                                        \
        V wv[KV_];                                                                     \
        for (v = 0; v < KV_; v++)                                                      \
            memcpy(&wv[v], wt + v * VL, sizeof(V));                                    \
        for (i = 0; i < (QBX); i++) {                                                  \
            TK_ xs = xq[i][xo];                                                        \
            for (v = 0; v < KV_; v++)                                                  \
                acc[i][v] += wv[v] * xs;                                               \
        }                                                                              \
    } while (0)

/* One block of CK_DEFINE_FORWARD_KVEC's plan (bk: its row of `blocks`) in a
 * register block of QBX positions, every input channel of the pass
 * [c0, c1). */
#define CK_KVEC_POSITIONS(QBX)                                                         \
    do {                                                                               \
        int64_t j0 = bk[0], count = bk[1], jj[QBX];                                    \
        const TK_ *xq[QBX];                                                            \
        V acc[QBX][KV_];                                                               \
        TK_ *part = grid + j0 * KBW;                                                   \
        for (i = 0; i < (QBX); i++) {                                                  \
            int64_t j = order[j0 + (i < count ? i : 0)];                               \
            jj[i] = j;                                                                 \
            xq[i] = x + (j / Q) * Wph + j % Q;                                         \
            for (v = 0; v < KV_; v++) {                                                \
                if (c0 == 0 || i >= count)                                             \
                    acc[i][v] = (V){0};                                                \
                else                                                                   \
                    memcpy(&acc[i][v], part + i * KBW + v * VL, sizeof(V));            \
            }                                                                          \
        }                                                                              \
        if (bk[5] == 0 && bk[6] == S) {                                                \
            /* Whole kernel rows: one run of taps. */                                  \
            for (c = c0; c < c1; c++)                                                  \
                for (t = bk[3] * S; t < bk[4] * S; t++)                                \
                    CK_KVEC_TAP(QBX);                                                  \
        } else                                                                         \
            for (c = c0; c < c1; c++)                                                  \
                for (r = bk[3]; r < bk[4]; r++)                                        \
                    for (t = r * S + bk[5]; t < r * S + bk[6]; t++)                    \
                        CK_KVEC_TAP(QBX);                                              \
        if (c1 < Cg) {                                                                 \
            /* A partial sum, stored exactly: the next chunk goes on                   \
             * from it, so the sum's order is that of one pass. */                     \
            for (i = 0; i < count; i++)                                                \
                for (v = 0; v < KV_; v++)                                              \
                    memcpy(part + i * KBW + v * VL, &acc[i][v], sizeof(V));            \
        } else                                                                         \
            for (i = 0; i < count; i++) {                                              \
                TK_ *o = out + (jj[i] / Q) * out_rstride + (jj[i] % Q) * out_cstride;  \
                for (v = 0; v < KV_; v++) {                                            \
                    TK_ lanes[VL];                                                     \
                    memcpy(lanes, &acc[i][v], sizeof(lanes));                          \
                    for (l = 0; l < VL && v * VL + l < kcount; l++)                    \
                        o[(v * VL + l) * out_kstride] = lanes[l] + bias[v * VL + l];   \
                }                                                                      \
            }                                                                          \
    } while (0)

/* Channel-vector forward: a block of VL*KV output channels lies in the vector
 * lanes and the output positions p*Q + q are enumerated exactly, so no grid
 * column is wasted; input values are broadcast. The caller's plan
 * (functional._channel_vector_plan) lists the positions in `order` and cuts
 * that list into `nblocks` blocks, each a row of `blocks`: (start in order,
 * count, register block QB or QT, r_lo, r_hi, s_lo, s_hi). A block sums the
 * taps (r, s) of that box only (t = r*S + s): the plan leaves out the taps
 * that read only zero padding for every position of the block, and groups
 * positions with the same box (the columns and rows at the edges), so that
 * a small map's padding costs no multiply-adds (resnet-3x3-c256's 14x14:
 * 9.3% of them). A block of count < QB positions repeats its first in the
 * lanes left over. The sum over (c, t) runs in the same order as in
 * CK_DEFINE_FORWARD, less the terms the box leaves out (zeros times finite
 * weights: the plan keeps every tap for weights that are not). Weights are
 * packed [c][t][VL*KV]. Worth it where the grid wastes much (Wph - Q large
 * against Q) and C*R*S is large enough to hide the transposed stores. */
#define CK_DEFINE_FORWARD_KVEC(NAME, T, VBYTES, KV, QB, QT, ATTR)                      \
    ATTR static void NAME(const T *x, const T *w, const int64_t *tap_off,              \
                          int64_t Cg, int64_t RS, int64_t chan_stride,                 \
                          int64_t Wph, int64_t Q, int64_t P, T *grid, int64_t gstride, \
                          T *out, int64_t out_kstride, int64_t out_rstride,            \
                          int64_t out_cstride, int64_t kcount,                         \
                          const T *bias, int64_t S, const int64_t *order,              \
                          const int64_t *blocks, int64_t nblocks)                      \
    {                                                                                  \
        typedef T V __attribute__((vector_size(VBYTES)));                              \
        typedef T TK_;                                                                 \
        enum { VL = VBYTES / sizeof(T), KBW = VL * KV, KV_ = KV };                     \
        int64_t b, i, c, c0, c1, r, t, v, l;                                           \
        int64_t cb = ck_kvec_chunk(RS * KBW * (int64_t)sizeof(T), Cg);                 \
        (void)gstride;                                                                 \
        (void)P;                                                                       \
        for (c0 = 0; c0 < Cg; c0 = c1) {                                               \
            c1 = c0 + cb < Cg ? c0 + cb : Cg;                                          \
            for (b = 0; b < nblocks; b++) {                                            \
                const int64_t *bk = blocks + b * CK_KVEC_PLAN_FIELDS;                  \
                if ((QT) < (QB) && bk[2] == (QT))                                      \
                    CK_KVEC_POSITIONS(QT);                                             \
                else                                                                   \
                    CK_KVEC_POSITIONS(QB);                                             \
            }                                                                          \
        }                                                                              \
    }

/* ---- grad_weight ------------------------------------------------------- */

/* gw[kb][t] = sum_n sum_j gy[n][kb][j] * x[n][off(t) + j] for KB2 channels and
 * TB taps at a time, lanes reduced once at the end in a fixed order. The
 * caller zeroes the grid columns q >= Q of gy so they contribute nothing. */
#define CK_GW_KB 4
#define CK_DEFINE_GRAD_WEIGHT(NAME, T, VBYTES, KB2, TB, ATTR)                          \
    ATTR static void NAME(const T *gy, int64_t gy_kstride, int64_t gy_nstride,         \
                          int64_t kcount, const T *x, int64_t x_nstride,               \
                          const int64_t *tap_off, int64_t RS, int64_t N,               \
                          int64_t grid_len, T *gw, int64_t gw_kstride)                 \
    {                                                                                  \
        typedef T V __attribute__((vector_size(VBYTES)));                              \
        enum { VL = VBYTES / sizeof(T) };                                              \
        int64_t t0, kb, tb, j, l, n;                                                   \
        int64_t full = grid_len - grid_len % VL;                                       \
        for (t0 = 0; t0 < RS; t0 += TB) {                                              \
            V acc[KB2][TB];                                                            \
            T tail[KB2][TB];                                                           \
            int64_t tcount = RS - t0 < TB ? RS - t0 : TB;                              \
            int64_t off[TB];                                                           \
            for (tb = 0; tb < TB; tb++)                                                \
                off[tb] = tap_off[t0 + (tb < tcount ? tb : 0)];                        \
            for (kb = 0; kb < KB2; kb++)                                               \
                for (tb = 0; tb < TB; tb++) {                                          \
                    acc[kb][tb] = (V){0};                                              \
                    tail[kb][tb] = 0;                                                  \
                }                                                                      \
            for (n = 0; n < N; n++) {                                                  \
                const T *g = gy + n * gy_nstride;                                      \
                const T *xn = x + n * x_nstride;                                       \
                for (j = 0; j < full; j += VL) {                                       \
                    V gv[KB2], xv[TB];                                                 \
                    for (kb = 0; kb < KB2; kb++) {                                     \
                        if (kb < kcount)                                               \
                            memcpy(&gv[kb], g + kb * gy_kstride + j, sizeof(V));       \
                        else                                                           \
                            gv[kb] = (V){0};                                           \
                    }                                                                  \
                    for (tb = 0; tb < TB; tb++)                                        \
                        memcpy(&xv[tb], xn + off[tb] + j, sizeof(V));                  \
                    for (kb = 0; kb < KB2; kb++)                                       \
                        for (tb = 0; tb < TB; tb++)                                    \
                            acc[kb][tb] += gv[kb] * xv[tb];                            \
                }                                                                      \
                for (kb = 0; kb < kcount; kb++)                                        \
                    for (tb = 0; tb < tcount; tb++)                                    \
                        for (j = full; j < grid_len; j++)                              \
                            tail[kb][tb] += g[kb * gy_kstride + j] * xn[off[tb] + j];  \
            }                                                                          \
            for (kb = 0; kb < kcount; kb++)                                            \
                for (tb = 0; tb < tcount; tb++) {                                      \
                    T lanes[VL], total = 0;                                            \
                    memcpy(lanes, &acc[kb][tb], sizeof(lanes));                        \
                    for (l = 0; l < VL; l++)                                           \
                        total += lanes[l];                                             \
                    gw[kb * gw_kstride + t0 + tb] = total + tail[kb][tb];              \
                }                                                                      \
        }                                                                              \
    }

/* Channel-vector grad_weight: a block of VL*KV output channels lies in the
 * vector lanes, so no lane reduction is needed and every output position is
 * enumerated exactly; input values are broadcast, read from x where it lies
 * (no packed copy, no padding written out):
 *
 *   gw[k][col] = sum_n sum_(p,q) gy[n][k][p*Q + q] * x[n][c][h][w],
 *   h = p*sh + roff[t], w = q*sw + soff[t], the term 0 outside the input,
 *
 * for the columns col = c*RS + t in [col0, col0 + ncols), TB at a time
 * (roff[t] = r*dh - pt, soff[t] = s*dw - pl for tap t = r*S + s). A kernel
 * row outside the input reads `zrow` (W zeros) instead; the output columns
 * [q_lo, q_hi) read inside the input for every tap, the few outside that
 * range check each column. With `exact` the columns go tap-major instead
 * (col = t*Cg + c, so that a block of TB is mostly of one tap) and a block
 * visits only the output rows and columns where one of its taps reads
 * inside the input: the padding's terms (gy * 0) are left out, which the
 * caller allows only for finite gy (an inf must meet the padding's zeros
 * as in the reference), and a block of one tap checks nothing. Positions are visited in chunks of chunk_rows
 * output rows: each chunk of grad_output is first transposed into scratch
 * as [position][channel] (channels >= kcount zero), where it stays in L1
 * while every column block of the task passes over it; the accumulators of
 * all blocks live in scratch between chunks. Each lane sums over n, then
 * p, then q, in order, whatever the ISA or thread count, the padding's
 * terms included unless `exact` (gy * 0, as a packed zero-padded copy
 * would give). scratch
 * holds ceil(ncols/TB)*TB*KBW + chunk_rows*Q*KBW elements. x points at
 * channel 0 of image 0, channels chan_stride apart. */
/* (Helpers of CK_DEFINE_GRAD_WEIGHT_KVEC, using its TK_, KV_ and TB_.) */
#define CK_GWK_TERM(XS)                                                                 \
    do {                                                                                \
        TK_ xs_ = (XS);                                                                 \
        for (v = 0; v < KV_; v++)                                                       \
            acc[i][v] += gv[v] * xs_;                                                   \
    } while (0)
/* Output columns [0, Q) of one row: column i reads (BASE)[q*sw + (OFF)], both
 * expressions of i, the term 0 where input column q*sw + so[i] lies outside
 * [0, W) (checked only outside [q_lo, q_hi)). */
#define CK_GWK_COLUMNS(BASE, OFF, QA, QB_, CHECK)                                       \
    for (q = (QA); q < (QB_); q++) {                                                    \
        V gv[KV_];                                                                      \
        for (v = 0; v < KV_; v++)                                                       \
            memcpy(&gv[v], g + q * KBW + v * VL, sizeof(V));                            \
        for (i = 0; i < TB_; i++) {                                                     \
            if (CHECK) {                                                                \
                /* Outside: a zero of zrow instead (a select, no branch). */           \
                int64_t w_ = q * sw + so[i];                                            \
                const TK_ *a_ = (uint64_t)w_ < (uint64_t)W ? &(BASE)[q * sw + (OFF)] : zrow; \
                CK_GWK_TERM(*a_);                                                       \
            } else                                                                      \
                CK_GWK_TERM((BASE)[q * sw + (OFF)]);                                    \
        }                                                                               \
    }
#define CK_GWK_ROW(BASE, OFF)                                                           \
    do {                                                                                \
        CK_GWK_COLUMNS(BASE, OFF, qu_lo, qi_lo, 1)                                      \
        CK_GWK_COLUMNS(BASE, OFF, qi_lo, qi_hi, 0)                                      \
        CK_GWK_COLUMNS(BASE, OFF, qi_hi, qu_hi, 1)                                      \
    } while (0)
/* [*LO, *HI): the outputs i < COUNT with 0 <= i*STRIDE + OFF < SIZE. */
#define CK_GWK_INSIDE(OFF, STRIDE, SIZE, COUNT, LO, HI)                                 \
    do {                                                                                \
        int64_t lo_ = (OFF) < 0 ? (-(OFF) + (STRIDE) - 1) / (STRIDE) : 0;               \
        int64_t hi_ = (SIZE) - (OFF) <= 0 ? 0 : ((SIZE) - (OFF) + (STRIDE) - 1) / (STRIDE); \
        *(LO) = lo_ < (COUNT) ? lo_ : (COUNT);                                          \
        *(HI) = hi_ < *(LO) ? *(LO) : hi_ < (COUNT) ? hi_ : (COUNT);                    \
    } while (0)
/* The parameters of CK_DEFINE_GRAD_WEIGHT_KVEC's functions, but `exact`. */
#define CK_GWK_PARAMS(T)                                                                \
    const T *gy, int64_t gy_nstride, int64_t gy_kstride, int64_t kcount, const T *x,    \
    int64_t x_nstride, int64_t chan_stride, int64_t H, int64_t W, int64_t sh,           \
    int64_t sw, const int64_t *roff, const int64_t *soff, int64_t RS, int64_t col0,     \
    int64_t ncols, int64_t N, int64_t P, int64_t Q, int64_t p_lo, int64_t p_hi,         \
    int64_t q_lo, int64_t q_hi, const T *zrow, int64_t chunk_rows, T *scratch, T *gw,   \
    int64_t gw_kstride, int64_t Cg
#define CK_DEFINE_GRAD_WEIGHT_KVEC(NAME, T, VBYTES, KV, TB, ATTR)                       \
    /* A function for each value of `exact`: sharing one, the other's per-block \
     * bounds cost the plain path's hot loop a register (resnet-3x3's           \
     * grad_weight 0.93-0.97x). */                                              \
    CK_DEFINE_GRAD_WEIGHT_KVEC_BODY(NAME##_plain, T, VBYTES, KV, TB, ATTR, 0)           \
    CK_DEFINE_GRAD_WEIGHT_KVEC_BODY(NAME##_exact, T, VBYTES, KV, TB, ATTR, 1)           \
    ATTR static void NAME(CK_GWK_PARAMS(T), int exact)                                  \
    {                                                                                   \
        (exact ? NAME##_exact : NAME##_plain)(                                          \
            gy, gy_nstride, gy_kstride, kcount, x, x_nstride, chan_stride, H, W, sh,    \
            sw, roff, soff, RS, col0, ncols, N, P, Q, p_lo, p_hi, q_lo, q_hi, zrow,     \
            chunk_rows, scratch, gw, gw_kstride, Cg);                                   \
    }
#define CK_DEFINE_GRAD_WEIGHT_KVEC_BODY(NAME, T, VBYTES, KV, TB, ATTR, EXACT)           \
    ATTR static void NAME(CK_GWK_PARAMS(T))                                             \
    {                                                                                   \
        enum { exact = EXACT };                                                         \
        typedef T V __attribute__((vector_size(VBYTES)));                               \
        typedef T TK_;                                                                  \
        enum { VL = VBYTES / sizeof(T), KBW = VL * KV, KV_ = KV, TB_ = TB };            \
        int64_t nblk = (ncols + TB - 1) / TB;                                           \
        int64_t n, p0, p1, p, q, b, i, v, l, k, j, npos;                                \
        T *gt = scratch + nblk * TB * KBW;                                              \
        memset(scratch, 0, (size_t)(nblk * TB * KBW) * sizeof(T));                      \
        /* Columns col = mj*DIV + mn; (c, t) = (mj, mn), or (mn, mj) with exact. */      \
        const int64_t DIV = exact ? Cg : RS;                                            \
        for (n = 0; n < N; n++) {                                                       \
            const T *xn = x + n * x_nstride;                                            \
            for (p0 = 0; p0 < P; p0 = p1) {                                             \
                int64_t mj = col0 / DIV, mn = col0 % DIV;                               \
                p1 = p0 + chunk_rows < P ? p0 + chunk_rows : P;                         \
                npos = (p1 - p0) * Q;                                                   \
                for (k = 0; k < KBW; k++) {                                             \
                    const T *src = gy + n * gy_nstride + k * gy_kstride + p0 * Q;       \
                    if (k < kcount)                                                     \
                        for (j = 0; j < npos; j++)                                      \
                            gt[j * KBW + k] = src[j];                                   \
                    else                                                                \
                        for (j = 0; j < npos; j++)                                      \
                            gt[j * KBW + k] = 0;                                        \
                }                                                                       \
                for (b = 0; b < nblk; b++) {                                            \
                    V acc[TB][KV];                                                      \
                    const T *xc[TB];                                                    \
                    int64_t ro[TB], so[TB], xd[TB];                                     \
                    /* Output rows and columns visited (u: some tap of the block       \
                     * reads inside the input) and read unchecked (i: every tap). */   \
                    int64_t pu_lo = 0, pu_hi = P, pi_lo = p_lo, pi_hi = p_hi;           \
                    int64_t qu_lo = 0, qu_hi = Q, qi_lo = q_lo, qi_hi = q_hi;           \
                    T *slot = scratch + b * TB * KBW;                                   \
                    int64_t c0_ = exact ? mn : mj, t0_ = exact ? mj : mn;               \
                    for (i = 0; i < TB; i++) {                                          \
                        /* Past ncols: the block's first column again. */              \
                        int64_t in_ = b * TB + i < ncols;                               \
                        int64_t c_ = in_ ? (exact ? mn : mj) : c0_;                     \
                        int64_t t_ = in_ ? (exact ? mj : mn) : t0_;                     \
                        if (++mn == DIV) {                                              \
                            mn = 0;                                                     \
                            mj++;                                                       \
                        }                                                               \
                        xc[i] = xn + c_ * chan_stride;                                  \
                        ro[i] = roff[t_];                                               \
                        so[i] = soff[t_];                                               \
                        /* Tap i at output (p, q) reads xn[p*sh*W + q*sw + xd[i]]. */   \
                        xd[i] = c_ * chan_stride + ro[i] * W + so[i];                   \
                        if (exact) {                                                    \
                            int64_t a_, b_, e_, f_;                                     \
                            CK_GWK_INSIDE(ro[i], sh, H, P, &a_, &b_);                   \
                            CK_GWK_INSIDE(so[i], sw, W, Q, &e_, &f_);                   \
                            if (i == 0) {                                               \
                                pu_lo = pi_lo = a_;                                     \
                                pu_hi = pi_hi = b_;                                     \
                                qu_lo = qi_lo = e_;                                     \
                                qu_hi = qi_hi = f_;                                     \
                            } else {                                                    \
                                pu_lo = a_ < pu_lo ? a_ : pu_lo;                        \
                                pu_hi = b_ > pu_hi ? b_ : pu_hi;                        \
                                pi_lo = a_ > pi_lo ? a_ : pi_lo;                        \
                                pi_hi = b_ < pi_hi ? b_ : pi_hi;                        \
                                qu_lo = e_ < qu_lo ? e_ : qu_lo;                        \
                                qu_hi = f_ > qu_hi ? f_ : qu_hi;                        \
                                qi_lo = e_ > qi_lo ? e_ : qi_lo;                        \
                                qi_hi = f_ < qi_hi ? f_ : qi_hi;                        \
                            }                                                           \
                        }                                                               \
                    }                                                                   \
                    if (exact) {                                                        \
                        /* The unchecked columns within the visited ones. */           \
                        qi_lo = qi_lo < qu_lo ? qu_lo : qi_lo > qu_hi ? qu_hi : qi_lo;  \
                        qi_hi = qi_hi < qi_lo ? qi_lo : qi_hi > qu_hi ? qu_hi : qi_hi;  \
                        pu_lo = pu_lo < p0 ? p0 : pu_lo;                                \
                        pu_hi = pu_hi > p1 ? p1 : pu_hi;                                \
                    } else {                                                            \
                        pu_lo = p0;                                                     \
                        pu_hi = p1;                                                     \
                    }                                                                   \
                    /* Vector by vector: a whole-array copy becomes rep movs. */       \
                    for (i = 0; i < TB; i++)                                            \
                        for (v = 0; v < KV; v++)                                        \
                            memcpy(&acc[i][v], slot + (i * KV + v) * VL, sizeof(V));    \
                    if (!exact && pu_lo >= pi_lo && pu_hi <= pi_hi && qi_lo == 0       \
                        && qi_hi == Q) {                                                \
                        /* Every tap reads inside for every position of the chunk:     \
                         * plain loops over its rows and columns, without the checks   \
                         * and the three column runs of a row (short rows spent much   \
                         * of their time there). Same order, same sums. */            \
                        const T *g = gt;                                                \
                        for (p = pu_lo; p < pu_hi; p++) {                               \
                            const T *xp = xn + p * sh * W;                              \
                            for (q = 0; q < Q; q++, g += KBW) {                         \
                                V gv[KV_];                                              \
                                for (v = 0; v < KV_; v++)                               \
                                    memcpy(&gv[v], g + v * VL, sizeof(V));              \
                                for (i = 0; i < TB_; i++)                               \
                                    CK_GWK_TERM(xp[q * sw + xd[i]]);                    \
                            }                                                           \
                        }                                                               \
                        pu_hi = pu_lo; /* done */                                       \
                    }                                                                   \
                    for (p = pu_lo; p < pu_hi; p++) {                                   \
                        const T *g = gt + (p - p0) * Q * KBW;                           \
                        if (p >= pi_lo && p < pi_hi) {                                  \
                            /* Every tap's row lies in the input: one pointer moves,   \
                             * the taps lie at fixed offsets from it. */               \
                            const T *xp = xn + p * sh * W;                              \
                            CK_GWK_ROW(xp, xd[i]);                                      \
                        } else {                                                        \
                            const T *xr[TB];                                            \
                            for (i = 0; i < TB; i++) {                                  \
                                int64_t h_ = p * sh + ro[i];                            \
                                xr[i] = (const T *)((uintptr_t)(h_ >= 0 && h_ < H ?     \
                                                                xc[i] + h_ * W : zrow) + \
                                                    (uintptr_t)(so[i] * (int64_t)sizeof(T))); \
                            }                                                           \
                            CK_GWK_ROW(xr[i], 0);                                       \
                        }                                                               \
                    }                                                                   \
                    for (i = 0; i < TB; i++)                                            \
                        for (v = 0; v < KV; v++)                                        \
                            memcpy(slot + (i * KV + v) * VL, &acc[i][v], sizeof(V));    \
                }                                                                       \
            }                                                                           \
        }                                                                               \
        for (i = 0; i < ncols; i++) {                                                   \
            int64_t col = col0 + i, dst = exact ? (col % Cg) * RS + col / Cg : col;     \
            for (v = 0; v < KV; v++)                                                    \
                for (l = 0; l < VL && v * VL + l < kcount; l++)                         \
                    gw[(v * VL + l) * gw_kstride + dst] =                               \
                        scratch[((i / TB) * TB * KV + (i % TB) * KV + v) * VL + l];    \
        }                                                                               \
    }

/* Depthwise grad_weight by rows, for column stride and dilation 1: one channel's
 *
 *   gw[r*S + s] = sum_n sum_p sum_q gy[n][p][q] * x[n][p*sh - pt + r*dh][q - pl + s]
 *
 * read where gy and x lie, with no packing. Taps go in blocks of up to
 * RB x SB (kernel rows x columns). Each block makes one run over the output
 * rows whose input rows exist for all its kernel rows, then one run per
 * kernel row over the output rows left at the top and bottom edges where
 * that row alone exists. Runs go in chunks of up to `rows` output rows:
 * where an output row advances the input by as much as grad_output
 * (Q == sh*W) a chunk's rows are one flat run in both arrays, otherwise
 * rows == 1. Each vector of grad_output is loaded once and multiplied by
 * the input at every tap of the block. Lanes past the chunk, or whose
 * input column falls in the padding, are cleared in grad_output (bitwise,
 * with masks[s][i]: all ones where i < rows*Q and input column
 * i % Q - pl + s exists, rows*Q + VL or more columns mask_stride apart)
 * instead of being skipped, so loads run across row ends into neighbouring
 * rows: those hold finite values, since the caller sends finite x only,
 * and loads that would leave the arrays (x_len, gy_len elements from x and
 * gy) fetch only their in-range lanes. Returns 1, leaving gw undefined, if
 * grad_output holds an inf or a NaN (its 0 * inf products with the padding
 * are then NaN and must not be cleared away), else 0. Each tap sums its
 * runs' vector accumulators and then its lanes, in an order fixed by the
 * shape and the variant. */
#define CK_GWR_RB 3
#define CK_GWR_SB 3
#define CK_DEFINE_GRAD_WEIGHT_ROWS(NAME, T, TI, VBYTES, ATTR)                            \
    ATTR static int NAME(const T *gy, int64_t gy_len, int64_t gy_off, int64_t gy_nstride, \
                         const T *x, int64_t x_len, int64_t x_off, int64_t x_nstride,     \
                         int64_t N, int64_t H, int64_t W, int64_t P, int64_t Q,           \
                         int64_t R, int64_t S, int64_t sh, int64_t pt, int64_t pl,        \
                         int64_t dh, int64_t rows, const T *masks,                        \
                         int64_t mask_stride, T *gw)                                      \
    {                                                                                     \
        typedef T V __attribute__((vector_size(VBYTES)));                                 \
        typedef TI VI __attribute__((vector_size(VBYTES)));                               \
        enum { VL = VBYTES / sizeof(T), RB = CK_GWR_RB, SB = CK_GWR_SB };                 \
        int64_t r0, s0, rr, sb, n, p, l, rbc, sbc;                                        \
        int64_t seen_lo = P, seen_hi = 0;                                                 \
        VI iota;                                                                          \
        V bad = {0};                                                                      \
        for (l = 0; l < VL; l++)                                                          \
            iota[l] = (TI)l;                                                              \
        for (r0 = 0; r0 < R; r0 += RB) {                                                  \
            rbc = R - r0 < RB ? R - r0 : RB;                                              \
            for (s0 = 0; s0 < S; s0 += SB) {                                              \
                V tot[RB][SB];                                                            \
                int64_t pa, pb;                                                           \
                sbc = S - s0 < SB ? S - s0 : SB;                                          \
                memset(tot, 0, sizeof(tot));                                              \
                /* Output rows whose input rows exist for the block's every row. */      \
                {                                                                         \
                    int64_t lo_a, hi_a, lo_b, hi_b;                                       \
                    CK_GWR_ROWS(r0, lo_a, hi_a);                                          \
                    CK_GWR_ROWS(r0 + rbc - 1, lo_b, hi_b);                                \
                    pa = lo_a > lo_b ? lo_a : lo_b;                                       \
                    pb = hi_a < hi_b ? hi_a : hi_b;                                       \
                }                                                                         \
                if (pa < pb)                                                              \
                    CK_GWR_SWITCH(rbc, pa, pb, r0, 0);                                    \
                else                                                                      \
                    pa = pb = 0;                                                          \
                for (rr = 0; rr < rbc; rr++) {                                            \
                    int64_t lo, hi;                                                       \
                    CK_GWR_ROWS(r0 + rr, lo, hi);                                         \
                    if (lo < hi) {                                                        \
                        seen_lo = lo < seen_lo ? lo : seen_lo;                            \
                        seen_hi = hi > seen_hi ? hi : seen_hi;                            \
                    }                                                                     \
                    if (pa >= pb) {                                                       \
                        if (lo < hi)                                                      \
                            CK_GWR_SWITCH(1, lo, hi, r0 + rr, rr);                        \
                        continue;                                                         \
                    }                                                                     \
                    if (lo < pa)                                                          \
                        CK_GWR_SWITCH(1, lo, pa, r0 + rr, rr);                            \
                    if (pb < hi)                                                          \
                        CK_GWR_SWITCH(1, pb, hi, r0 + rr, rr);                            \
                }                                                                         \
                for (rr = 0; rr < rbc; rr++)                                              \
                    for (sb = 0; sb < sbc; sb++) {                                        \
                        T lanes[VL], total = 0;                                           \
                        memcpy(lanes, &tot[rr][sb], sizeof(lanes));                       \
                        for (l = 0; l < VL; l++)                                          \
                            total += lanes[l];                                            \
                        gw[(r0 + rr) * S + s0 + sb] = total;                              \
                    }                                                                     \
            }                                                                             \
        }                                                                                 \
        /* Rows no tap reaches were never loaded: look at them here. */                  \
        for (n = 0; n < N; n++)                                                           \
            for (p = 0; p < P; p++)                                                       \
                if (p < seen_lo || p >= seen_hi)                                          \
                    for (l = 0; l < Q; l++) {                                             \
                        T g = gy[gy_off + n * gy_nstride + p * Q + l];                    \
                        bad[0] += g - g;                                                  \
                    }                                                                     \
        {                                                                                 \
            T lanes[VL], total = 0;                                                       \
            memcpy(lanes, &bad, sizeof(lanes));                                           \
            for (l = 0; l < VL; l++)                                                      \
                total += lanes[l];                                                        \
            return total != 0;                                                            \
        }                                                                                 \
    }

/* [LO, HI): the output rows p whose input row p*sh - pt + R_*dh exists. */
#define CK_GWR_ROWS(R_, LO, HI)                                                           \
    do {                                                                                  \
        int64_t base_ = (R_) * dh - pt;                                                   \
        int64_t lo_ = base_ >= 0 ? 0 : (-base_ + sh - 1) / sh;                            \
        int64_t hi_ = H - 1 - base_ < 0 ? 0 : (H - 1 - base_) / sh + 1;                   \
        if (hi_ > P)                                                                      \
            hi_ = P;                                                                      \
        (LO) = lo_;                                                                       \
        (HI) = hi_;                                                                       \
    } while (0)

/* A run with constant block sizes, so that the accumulators stay in
 * registers: RBC kernel rows from R_ (RBC == 1 for edge runs, whose sums go
 * to row T_ of the block's totals) by sbc kernel columns from s0. */
#define CK_GWR_SWITCH(RBC, PA, PB, R_, T_)                                                \
    do {                                                                                  \
        if ((RBC) == 3) {                                                                 \
            if (sbc == 3) CK_GWR_RUN(3, 3, PA, PB, R_, T_);                               \
            else if (sbc == 2) CK_GWR_RUN(3, 2, PA, PB, R_, T_);                          \
            else CK_GWR_RUN(3, 1, PA, PB, R_, T_);                                        \
        } else if ((RBC) == 2) {                                                          \
            if (sbc == 3) CK_GWR_RUN(2, 3, PA, PB, R_, T_);                               \
            else if (sbc == 2) CK_GWR_RUN(2, 2, PA, PB, R_, T_);                          \
            else CK_GWR_RUN(2, 1, PA, PB, R_, T_);                                        \
        } else {                                                                          \
            if (sbc == 3) CK_GWR_RUN(1, 3, PA, PB, R_, T_);                               \
            else if (sbc == 2) CK_GWR_RUN(1, 2, PA, PB, R_, T_);                          \
            else CK_GWR_RUN(1, 1, PA, PB, R_, T_);                                        \
        }                                                                                 \
    } while (0)

/* Output rows [PA, PB) of every image for taps (R_ + rr, s0 + sb), rr < RBC,
 * sb < SBC, added to tot[T_ + rr][sb] at the end. g - g is 0 for finite g
 * and NaN otherwise: `bad` collects it over every grad_output vector. */
#define CK_GWR_RUN(RBC, SBC, PA, PB, R_, T_)                                              \
    do {                                                                                  \
        V acc_[RBC][SBC];                                                                 \
        int64_t n_, p_, p1_, v_, i_, j_, xrow_ = dh * W;                                  \
        for (i_ = 0; i_ < (RBC); i_++)                                                    \
            for (j_ = 0; j_ < (SBC); j_++)                                                \
                acc_[i_][j_] = (V){0};                                                    \
        for (n_ = 0; n_ < N; n_++)                                                        \
            for (p_ = (PA); p_ < (PB); p_ = p1_) {                                        \
                int64_t len_, gi_, xi_, last_;                                            \
                int safe_;                                                                \
                p1_ = p_ + rows < (PB) ? p_ + rows : (PB);                                \
                len_ = (p1_ - p_) * Q;                                                    \
                last_ = (len_ - 1) / VL;                                                  \
                gi_ = gy_off + n_ * gy_nstride + p_ * Q;                                  \
                xi_ = x_off + n_ * x_nstride + (p_ * sh + (R_) * dh - pt) * W - pl + s0;  \
                safe_ = gi_ + (last_ + 1) * VL <= gy_len && xi_ >= 0                      \
                        && xi_ + ((RBC) - 1) * xrow_ + ((SBC) - 1)                        \
                           + (last_ + 1) * VL <= x_len;                                   \
                for (v_ = 0; v_ <= last_; v_++) {                                         \
                    V gv_, gm_[SBC];                                                      \
                    CK_GWR_LOAD(gv_, gy, gi_ + v_ * VL, gy_len, safe_);                   \
                    bad += gv_ - gv_;                                                     \
                    _Pragma("GCC unroll 4")                                               \
                    for (j_ = 0; j_ < (SBC); j_++) {                                      \
                        VI m_;                                                            \
                        memcpy(&m_, masks + (s0 + j_) * mask_stride + v_ * VL, sizeof(m_)); \
                        if (v_ == last_)                                                  \
                            m_ &= iota < (__typeof__(iota[0]))(len_ - v_ * VL);           \
                        gm_[j_] = (V)((VI)gv_ & m_);                                      \
                    }                                                                     \
                    _Pragma("GCC unroll 4")                                               \
                    for (i_ = 0; i_ < (RBC); i_++)                                        \
                        _Pragma("GCC unroll 4")                                           \
                        for (j_ = 0; j_ < (SBC); j_++) {                                  \
                            V xv_;                                                        \
                            CK_GWR_LOAD(xv_, x, xi_ + i_ * xrow_ + j_ + v_ * VL, x_len,   \
                                        safe_);                                           \
                            acc_[i_][j_] += gm_[j_] * xv_;                                \
                        }                                                                 \
                }                                                                         \
            }                                                                             \
        for (i_ = 0; i_ < (RBC); i_++)                                                    \
            for (j_ = 0; j_ < (SBC); j_++)                                                \
                tot[(T_) + i_][j_] += acc_[i_][j_];                                       \
    } while (0)

/* One vector from a[i : i + VL]; unless `safe`, lanes outside [0, len) read 0. */
#define CK_GWR_LOAD(DST, A, I, LEN, SAFE)                                                \
    do {                                                                                  \
        int64_t at_ = (I);                                                                \
        if ((SAFE) || (at_ >= 0 && at_ + VL <= (LEN))) {                                  \
            memcpy(&(DST), (A) + at_, sizeof(DST));                                       \
        } else {                                                                          \
            int64_t l_;                                                                   \
            for (l_ = 0; l_ < VL; l_++)                                                   \
                (DST)[l_] = at_ + l_ >= 0 && at_ + l_ < (LEN) ? (A)[at_ + l_] : 0;        \
        }                                                                                 \
    } while (0)

/* ---- row accumulation (col2im) ----------------------------------------- */

/* out[i] += src[i] for i < n, the two not overlapping: 16-byte vectors, no
 * alignment peeling (the rows are short: a feature map's width). */
#define CK_DEFINE_ADD_ROWS(NAME, T)                                                    \
    static inline void NAME(T *out, const T *src, int64_t n)                           \
    {                                                                                  \
        typedef T V __attribute__((vector_size(16)));                                  \
        enum { VL = 16 / sizeof(T) };                                                  \
        int64_t i = 0;                                                                 \
        for (; i + VL <= n; i += VL) {                                                 \
            V a, b;                                                                    \
            memcpy(&a, out + i, sizeof(V));                                            \
            memcpy(&b, src + i, sizeof(V));                                            \
            a += b;                                                                    \
            memcpy(out + i, &a, sizeof(V));                                            \
        }                                                                              \
        for (; i < n; i++)                                                             \
            out[i] += src[i];                                                          \
    }
CK_DEFINE_ADD_ROWS(ck_add_rows_f32, float)
CK_DEFINE_ADD_ROWS(ck_add_rows_f64, double)

/* col2im at column stride 1, by output pixel, for C channels:
 *
 *   plane[c][h][w] = sum_s sum_r cols[c][r*S + s][p*Q + w + pl - s*dw]
 *
 * over the kernel rows r for which h = p*sh - pt + r*dh with 0 <= p < P, and
 * the kernel columns s whose column w + pl - s*dw lies in [0, Q). cols holds
 * C*R*S rows of P*Q elements, one after the other; the planes are H*W
 * elements apart. A vector of VL pixels of a row sums its terms in
 * registers and is stored once: no pixel is loaded back, and every pixel of
 * every plane is written (zero where no term reaches it). Channels go 4,
 * then 2, then 1 at a time, and each keeps two sums, of the even and of the
 * odd kernel columns, so that several additions are in flight. For each
 * kernel column, the terms of every kernel row are added up (r in order)
 * before its lanes outside the grad_output row are cleared bitwise: those
 * lanes load whole vectors across the neighbouring row (or up to VL
 * elements before cols or after its end, which the caller keeps readable),
 * and whatever lies there never enters a sum. A pixel's sums start from +0
 * and add the same terms in the same order whatever the variant; a cleared
 * lane adds +0, which leaves such a sum unchanged. */
#define CK_DEFINE_COL2IM_PASS(NAME, T, TI, VBYTES, CB, ATTR)                             \
    ATTR static inline void NAME(const T *cols, int64_t cstride, int64_t P, int64_t Q,    \
                                 int64_t R, int64_t S, int64_t sh, int64_t pt,            \
                                 int64_t pl, int64_t dh, int64_t dw, T *plane,            \
                                 int64_t H, int64_t W)                                    \
    {                                                                                     \
        typedef T V __attribute__((vector_size(VBYTES)));                                 \
        typedef TI VI __attribute__((vector_size(VBYTES)));                               \
        enum { VL = VBYTES / sizeof(T) };                                                 \
        int64_t h, w0, r, s, i, l, L = P * Q;                                             \
        VI iota;                                                                          \
        for (l = 0; l < VL; l++)                                                          \
            iota[l] = (TI)l;                                                              \
        for (h = 0; h < H; h++) {                                                         \
            /* At row stride 1 the kernel rows that reach row h are a run,              \
             * r_lo <= r < r_hi: no test per kernel row below. */                         \
            int64_t r_lo = 0, r_hi = R;                                                   \
            if (sh == 1) {                                                                \
                int64_t top = h + pt, low = h + pt - P + 1;                               \
                r_hi = top < 0 ? 0 : top / dh + 1;                                        \
                r_lo = low <= 0 ? 0 : (low + dh - 1) / dh;                                \
                if (r_hi > R)                                                             \
                    r_hi = R;                                                             \
            }                                                                             \
            for (w0 = 0; w0 < W; w0 += VL) {                                              \
                int64_t start = W >= VL && w0 + VL > W ? W - VL : w0;                     \
                V even[CB], odd[CB];                                                      \
                for (i = 0; i < CB; i++)                                                  \
                    even[i] = odd[i] = (V){0};                                            \
                for (s = 0; s < S; s++) {                                                 \
                    int64_t off = start + pl - s * dw;                                    \
                    V part[CB];                                                           \
                    int any = 0;                                                          \
                    if (off >= Q || off + VL <= 0)                                        \
                        continue;                                                         \
                    for (r = r_lo; r < r_hi; r++) {                                       \
                        int64_t num = h + pt - r * dh;                                    \
                        const T *at;                                                      \
                        if (sh != 1 && (num < 0 || num >= P * sh || num % sh != 0))       \
                            continue;                                                     \
                        at = cols + (r * S + s) * L + (sh == 1 ? num : num / sh) * Q + off; \
                        for (i = 0; i < CB; i++) {                                        \
                            V v;                                                          \
                            memcpy(&v, at + i * cstride, sizeof(V));                      \
                            part[i] = any ? part[i] + v : v;                              \
                        }                                                                 \
                        any = 1;                                                          \
                    }                                                                     \
                    if (!any)                                                             \
                        continue;                                                         \
                    if (off < 0 || off + VL > Q) {                                        \
                        /* Keep lanes [lo, hi): the columns [0, Q) of the row. */        \
                        TI lo = (TI)(off < 0 ? -off : 0);                                 \
                        TI hi = (TI)(Q - off < VL ? Q - off : VL);                        \
                        VI keep = (iota >= lo) & (iota < hi);                             \
                        for (i = 0; i < CB; i++)                                          \
                            part[i] = (V)((VI)part[i] & keep);                            \
                    }                                                                     \
                    if (s & 1)                                                            \
                        for (i = 0; i < CB; i++)                                          \
                            odd[i] += part[i];                                            \
                    else                                                                  \
                        for (i = 0; i < CB; i++)                                          \
                            even[i] += part[i];                                           \
                }                                                                         \
                for (i = 0; i < CB; i++) {                                                \
                    T *row = plane + i * H * W + h * W;                                   \
                    V sum = even[i] + odd[i];                                             \
                    if (start + VL <= W) {                                                \
                        memcpy(row + start, &sum, sizeof(V));                             \
                    } else {                                                              \
                        T lanes[VL];                                                      \
                        memcpy(lanes, &sum, sizeof(lanes));                               \
                        CK_STORE_FIRST(T, VL, row + start, lanes, W - start);             \
                    }                                                                     \
                }                                                                         \
                if (start != w0)                                                          \
                    break;                                                                \
            }                                                                             \
        }                                                                                 \
    }
#define CK_DEFINE_COL2IM(NAME, T, TI, VBYTES, ATTR)                                      \
    CK_DEFINE_COL2IM_PASS(NAME##_c4, T, TI, VBYTES, 4, ATTR)                              \
    CK_DEFINE_COL2IM_PASS(NAME##_c2, T, TI, VBYTES, 2, ATTR)                              \
    CK_DEFINE_COL2IM_PASS(NAME##_c1, T, TI, VBYTES, 1, ATTR)                              \
    ATTR static void NAME(const T *cols, int64_t C, int64_t P, int64_t Q, int64_t R,      \
                          int64_t S, int64_t sh, int64_t pt, int64_t pl, int64_t dh,      \
                          int64_t dw, T *plane, int64_t H, int64_t W)                     \
    {                                                                                     \
        int64_t c = 0, cstride = R * S * P * Q;                                           \
        for (; c + 4 <= C; c += 4)                                                        \
            NAME##_c4(cols + c * cstride, cstride, P, Q, R, S, sh, pt, pl, dh, dw,        \
                      plane + c * H * W, H, W);                                           \
        if (c + 2 <= C) {                                                                 \
            NAME##_c2(cols + c * cstride, cstride, P, Q, R, S, sh, pt, pl, dh, dw,        \
                      plane + c * H * W, H, W);                                           \
            c += 2;                                                                       \
        }                                                                                 \
        if (c < C)                                                                        \
            NAME##_c1(cols + c * cstride, cstride, P, Q, R, S, sh, pt, pl, dh, dw,        \
                      plane + c * H * W, H, W);                                           \
    }

/* col2im at column stride sw > 1, for C channels:
 *
 *   plane[c][h][w] = sum over (s, r) in that order, where w = q*sw + s*dw - pl
 *                    and h = p*sh - pt + r*dh for some 0 <= q < Q, 0 <= p < P,
 *                    of cols[(c*R + r)*S + s][p*Q + q]
 *
 * (every pixel written, 0 where no tap reaches it). A channel's sw column
 * phases (w % sw) are summed apart in `buf` (H rows of sw phases of
 * ceil(W/sw) elements), so each tap adds contiguous runs of its column rows
 * to contiguous runs of a phase, then the phases are interleaved into the
 * plane: no read-modify-write of single strided pixels. Each pixel's terms
 * are added to zero in the same (s, r) order as a scatter of the column
 * rows, tap by tap, into a zeroed plane would add them. */
#define CK_DEFINE_COL2IM_STRIDED(NAME, T, ATTR)                                           \
    ATTR static void NAME(const T *cols, int64_t C, int64_t P, int64_t Q, int64_t R,      \
                          int64_t S, int64_t sh, int64_t sw, int64_t pt, int64_t pl,      \
                          int64_t dh, int64_t dw, T *plane, int64_t H, int64_t W, T *buf) \
    {                                                                                     \
        int64_t c, h, r, s, p, q, j, Wj = (W + sw - 1) / sw, L = P * Q;                  \
        int64_t rowlen = sw * Wj;                                                         \
        for (c = 0; c < C; c++) {                                                         \
            T *out = plane + c * H * W;                                                   \
            memset(buf, 0, (size_t)(H * rowlen) * sizeof(T));                             \
            for (s = 0; s < S; s++) {                                                     \
                int64_t off = s * dw - pl, b = ((off % sw) + sw) % sw;                    \
                /* Column q lands in phase b at index q + k, inside the row for    \
                 * q in [q_lo, q_hi). */                                             \
                int64_t k = (off - b) / sw;                                               \
                int64_t q_lo = off < 0 ? (-off + sw - 1) / sw : 0;                        \
                int64_t q_hi = W - off <= 0 ? 0 : (W - off + sw - 1) / sw;                \
                if (q_hi > Q)                                                             \
                    q_hi = Q;                                                             \
                for (r = 0; r < R; r++) {                                                 \
                    const T *src = cols + ((c * R + r) * S + s) * L;                      \
                    for (p = 0; p < P; p++) {                                             \
                        int64_t ih = p * sh - pt + r * dh;                                \
                        if (ih < 0 || ih >= H)                                            \
                            continue;                                                     \
                        T *restrict dst = buf + ih * rowlen + b * Wj + k;                 \
                        const T *restrict sp = src + p * Q;                               \
                        for (q = q_lo; q < q_hi; q++)                                     \
                            dst[q] += sp[q];                                              \
                    }                                                                     \
                }                                                                         \
            }                                                                             \
            for (h = 0; h < H; h++) {                                                     \
                const T *restrict ph = buf + h * rowlen;                                  \
                T *restrict row = out + h * W;                                            \
                if (sw == 2) {                                                            \
                    for (j = 0; j < W / 2; j++) {                                         \
                        row[2 * j] = ph[j];                                               \
                        row[2 * j + 1] = ph[Wj + j];                                      \
                    }                                                                     \
                    if (W % 2)                                                            \
                        row[W - 1] = ph[W / 2];                                           \
                } else                                                                    \
                    for (j = 0; j < W; j++)                                               \
                        row[j] = ph[(j % sw) * Wj + j / sw];                              \
            }                                                                             \
        }                                                                                 \
    }

/* ---- grad_input by rows ------------------------------------------------ */

/* grad_input of an unpadded convolution at stride and dilation 1 with S
 * kernel columns, a whole input row in registers: for one (image, group)
 * and a vector of VL input channels,
 *
 *   rows[h][w][l] = sum_k sum_r sum_s w[k][r][s][l] * gy[k][h - r][w - s]
 *
 * over the kernel rows r with 0 <= h - r < P and the columns s with
 * 0 <= w - s < Q: only the real terms, none on padding (the gather form of
 * grad_input multiplies the zeros around gy, the scatter form pays a col2im
 * pass). The row's W = Q + S - 1 pixels are W registers; each grad_output
 * value, broadcast once, meets the S weight vectors of its kernel row in S
 * multiply-adds into S neighbouring pixels, so every register index is a
 * constant: Q is one too, through a switch over the widths up to QM, each
 * case its own copy of the loops (a runtime bound per column cost 4%, a
 * jump into one unrolled copy 4-6%, on mnist-conv2's grad_input). Kernel
 * rows go outermost, so that the sums stay in registers over the K/G
 * channels (with channels outermost GCC kept them in memory around the
 * run of up to R kernel rows: 1.03-1.27x slower). A pixel sums its terms
 * in the order (r, k, s), whatever the thread count. w holds the weights
 * as (K/G, R, S, VL), input channels side by side; rows is H x W x VL,
 * H = P + R - 1. */
#define CK_GIR_CASES(NAME, QM)                                                            \
    CK_GIR_CASE(NAME, 1, QM) CK_GIR_CASE(NAME, 2, QM) CK_GIR_CASE(NAME, 3, QM)            \
    CK_GIR_CASE(NAME, 4, QM) CK_GIR_CASE(NAME, 5, QM) CK_GIR_CASE(NAME, 6, QM)            \
    CK_GIR_CASE(NAME, 7, QM) CK_GIR_CASE(NAME, 8, QM) CK_GIR_CASE(NAME, 9, QM)            \
    CK_GIR_CASE(NAME, 10, QM) CK_GIR_CASE(NAME, 11, QM) CK_GIR_CASE(NAME, 12, QM)         \
    CK_GIR_CASE(NAME, 13, QM) CK_GIR_CASE(NAME, 14, QM) CK_GIR_CASE(NAME, 15, QM)         \
    CK_GIR_CASE(NAME, 16, QM) CK_GIR_CASE(NAME, 17, QM) CK_GIR_CASE(NAME, 18, QM)         \
    CK_GIR_CASE(NAME, 19, QM) CK_GIR_CASE(NAME, 20, QM) CK_GIR_CASE(NAME, 21, QM)         \
    CK_GIR_CASE(NAME, 22, QM) CK_GIR_CASE(NAME, 23, QM) CK_GIR_CASE(NAME, 24, QM)
#define CK_DEFINE_GRAD_INPUT_ROWS(NAME, T, VBYTES, S, QM, ATTR)                           \
    ATTR static inline __attribute__((always_inline)) void NAME##_row(                    \
        const T *gy, int64_t kstride, int64_t Q, const T *w, int64_t K, int64_t R,        \
        int64_t r_lo, int64_t r_hi, T *out, const int QC)                                \
    {                                                                                     \
        typedef T V __attribute__((vector_size(VBYTES)));                                 \
        enum { VL = VBYTES / sizeof(T) };                                                 \
        V acc[QC + S - 1];                                                                \
        int64_t k, r;                                                                     \
        int i, q, s;                                                                      \
        CK_UNROLL32 for (i = 0; i < QC + S - 1; i++)                                      \
            acc[i] = (V){0};                                                              \
        for (r = r_lo; r < r_hi; r++)                                                     \
            for (k = 0; k < K; k++) {                                                     \
                /* gy's row h - r of channel k, the weights' row r. */                    \
                const T *g = gy + k * kstride - r * Q;                                    \
                const T *wr = w + (k * R + r) * S * VL;                                   \
                V wv[S];                                                                  \
                CK_UNROLL32 for (s = 0; s < S; s++)                                       \
                    memcpy(&wv[s], wr + s * VL, sizeof(V));                               \
                CK_UNROLL32 for (q = 0; q < QC; q++) {                                    \
                    T b = g[q];                                                           \
                    CK_UNROLL32 for (s = 0; s < S; s++)                                   \
                        acc[q + s] += b * wv[s];                                          \
                }                                                                         \
            }                                                                             \
        CK_UNROLL32 for (i = 0; i < QC + S - 1; i++)                                      \
            memcpy(out + i * VL, &acc[i], sizeof(V));                                     \
    }                                                                                     \
    ATTR static void NAME(const T *gy, int64_t kstride, const T *w, int64_t K, int64_t P,  \
                          int64_t Q, int64_t R, T *rows)                                  \
    {                                                                                     \
        enum { VL = VBYTES / sizeof(T) };                                                 \
        int64_t h, H = P + R - 1, W = Q + S - 1;                                          \
        for (h = 0; h < H; h++) {                                                         \
            int64_t r_lo = h - P + 1 > 0 ? h - P + 1 : 0, r_hi = h + 1 < R ? h + 1 : R;   \
            const T *g = gy + h * Q;                                                      \
            T *out = rows + h * W * VL;                                                   \
            switch (Q) {                                                                  \
            CK_GIR_CASES(NAME, QM)                                                        \
            default:                                                                      \
                break;                                                                    \
            }                                                                             \
        }                                                                                 \
    }
/* One case of the switch above (QC is a constant; widths past QM compile to
 * nothing and are never asked for). */
#define CK_GIR_CASE(NAME, QC, QM)                                                         \
    case QC:                                                                              \
        if ((QC) <= (QM))                                                                 \
            NAME##_row(g, kstride, Q, w, K, R, r_lo, r_hi, out, (QC) <= (QM) ? (QC) : 1); \
        break;

/* ---- depthwise forward, in place ---------------------------------------- */

/* One output plane of a convolution with one input channel per group, at
 * column stride 1, read from x where it lies and written to y directly: no
 * packing, no grid.
 *
 *   y[p*y_rstride + q] = bias + sum_r sum_s w[r*S + s] * x[x_off + h*W + c]
 *
 * with h = p*sh - pt + r*dh and c = q - pl + s*dw, S <= CK_DW_SMAX. 3x3
 * kernels at row stride and dilations 1 with rows of at least VL outputs go
 * to CK_DEFINE_FORWARD_DW3 (below), the same sums by a leaner schedule:
 * with their weights in registers and no per-block bookkeeping it runs
 * 1.4x-1.8x as fast on an AVX2 EPYC (tools/ab.py, 2 threads:
 * 8x128x28x28 1.75x, 8x256x14x14 1.55x, 1x32x112x112 1.44x). Kernel
 * rows whose input row h lies outside [0, H) are skipped; for the others,
 * every kernel column runs in order. Output rows that every kernel row
 * reaches go 6 at a time by 2 vectors of VL columns, the others one at a
 * time by up to 4 vectors, so that up to 12 sums are in flight; for 3x3
 * kernels at row stride and dilation 1 the 6 rows read their 8 input rows
 * once each (CK_DW_ROWS) instead of once per kernel row. The
 * vectors whose reads all fall inside the row go together and load as
 * they are; the others (the first and last few of a row) go together too,
 * load whole vectors across the neighbouring row and clear bitwise the
 * lanes whose column lies outside [0, W), so that whatever lies there (an
 * inf included) adds +0. A block that would read past an end of x (x_len
 * elements in all) sums term by term instead, skipping those columns: the
 * same sums, as a sum from +0 never turns -0 and adding +0 leaves it
 * unchanged. Every output's terms are added in the same order, whatever
 * the block or the variant. The weights must be finite: a skipped kernel
 * row or a cleared lane stands for a padding zero, and 0 * inf is NaN.
 * Rows of fewer than VL columns store their columns one by one; a row's
 * last vector overlaps its neighbour and writes the same values again. */
/* 3x3 kernels at row stride and dilations 1, output rows at least a vector
 * wide: CK_DEFINE_FORWARD_DW hands these to CK_DEFINE_FORWARD_DW3, a
 * simpler schedule. Output rows go in bands of CK_DW3_T. A band runs its
 * vectors of VL columns one after the other, each reading the band's T + 2
 * input rows once (3 shifted loads a row) into T sums, with the 9 weights
 * held as vectors throughout: 3 (T + 2) loads for 9 T multiply-adds, and
 * the interior vectors of a band in one tight loop (CK_DEFINE_DW3_BAND, its
 * own function so that the weights keep their registers). Vectors whose reads
 * cross the row's ends clear the lanes outside [0, W) bitwise. Output rows
 * that the kernel's top or bottom row misses, and any vector that would
 * read past an end of x, go one output row at a time (CK_DW3_ROW),
 * skipping the missing kernel rows and loading lane by lane where a vector
 * crosses an end of x. Each output adds its 9 terms kernel row by kernel
 * row, column by column, from +0, then the bias: the same sums, bit for
 * bit, as CK_DEFINE_FORWARD_DW's own blocks. */
#define CK_DW3_T 4

/* The lanes l of a vector whose column l + C lies in [0, W): all ones there,
 * zeros elsewhere (IOTA holds 0, 1, ..., VL - 1 as TI). */
#define CK_LANES_INSIDE(IOTA, TI, C, W)                                                \
    (((IOTA) + (TI)(C) >= 0) & ((IOTA) + (TI)(C) < (TI)(W)))

/* Output rows [0, NT) at the vectors [v0, v1) and [v2, v3) of columns
 * (vector v at column min(v VL, Q - VL)), reading input rows from xrow (the
 * input row of output row 0 and kernel row 0, column 0) as they are (MODE
 * 0, every read inside the row) or with the lanes outside [0, W) cleared
 * (MODE 1). With NT 1, kernel rows [r_lo, r_hi) only (the others' input
 * rows lie outside [0, H)); bands of more rows take all 3. */
#define CK_DEFINE_DW3_BAND(NAME, T, TI, VBYTES, NT, MODE, ATTR)                        \
    ATTR __attribute__((noinline)) static void NAME(                                   \
        const T *xrow, int64_t W, const T *w, T *yrow, int64_t y_rstride, int64_t v0,  \
        int64_t v1, int64_t v2, int64_t v3, int64_t Q, int64_t pl, int64_t r_lo,       \
        int64_t r_hi, T bias)                                                          \
    {                                                                                  \
        typedef T V __attribute__((vector_size(VBYTES)));                              \
        typedef TI VI __attribute__((vector_size(VBYTES)));                            \
        enum { VL = VBYTES / sizeof(T) };                                              \
        V wv[9];                                                                       \
        VI iota;                                                                       \
        int64_t v, l;                                                                  \
        for (l = 0; l < 9; l++)                                                        \
            wv[l] = (V){0} + w[l];                                                     \
        for (l = 0; l < VL; l++)                                                       \
            iota[l] = (TI)l;                                                           \
        for (v = v0; v < v3; v++) {                                                    \
            int64_t q0, c0, t, s, r, i;                                                \
            const T *xr;                                                               \
            V acc[NT];                                                                 \
            VI mk[3];                                                                  \
            if (v == v1)                                                               \
                v = v2;                                                                \
            if (v >= v3)                                                               \
                break;                                                                 \
            q0 = v * VL < Q - VL ? v * VL : Q - VL;                                    \
            c0 = q0 - pl;                                                              \
            xr = xrow + c0;                                                            \
            if (MODE)                                                                  \
                for (s = 0; s < 3; s++)                                                \
                    mk[s] = CK_LANES_INSIDE(iota, TI, c0 + s, W);                      \
            CK_UNROLL for (i = 0; i < (NT); i++)                                       \
                acc[i] = (V){0};                                                       \
            if ((NT) == 1 && (r_lo > 0 || r_hi < 3)) {                                 \
                for (r = r_lo; r < r_hi; r++)                                          \
                    CK_UNROLL for (s = 0; s < 3; s++) {                                \
                        V xv;                                                          \
                        memcpy(&xv, xr + r * W + s, sizeof(V));                        \
                        if (MODE)                                                      \
                            xv = (V)((VI)xv & mk[s]);                                  \
                        acc[0] += xv * wv[r * 3 + s];                                  \
                    }                                                                  \
            } else {                                                                   \
                CK_UNROLL for (t = 0; t < (NT) + 2; t++)                               \
                    CK_UNROLL for (s = 0; s < 3; s++) {                                \
                        V xv;                                                          \
                        memcpy(&xv, xr + t * W + s, sizeof(V));                        \
                        if (MODE)                                                      \
                            xv = (V)((VI)xv & mk[s]);                                  \
                        CK_UNROLL for (r = 0; r < 3; r++)                              \
                            if (t - r >= 0 && t - r < (NT))                            \
                                acc[t - r] += xv * wv[r * 3 + s];                      \
                    }                                                                  \
            }                                                                          \
            CK_UNROLL for (i = 0; i < (NT); i++) {                                     \
                V o = acc[i] + bias;                                                   \
                memcpy(yrow + i * y_rstride + q0, &o, sizeof(V));                      \
            }                                                                          \
        }                                                                              \
    }

#define CK_DEFINE_FORWARD_DW3(NAME, T, TI, VBYTES, ATTR)                               \
    CK_DEFINE_DW3_BAND(NAME##_bt0, T, TI, VBYTES, CK_DW3_T, 0, ATTR)                   \
    CK_DEFINE_DW3_BAND(NAME##_bt1, T, TI, VBYTES, CK_DW3_T, 1, ATTR)                   \
    CK_DEFINE_DW3_BAND(NAME##_b10, T, TI, VBYTES, 1, 0, ATTR)                          \
    CK_DEFINE_DW3_BAND(NAME##_b11, T, TI, VBYTES, 1, 1, ATTR)                          \
    ATTR static void NAME(const T *x, int64_t x_len, int64_t x_off, int64_t H,         \
                          int64_t W, const T *w, int64_t pt, int64_t pl, T *y,         \
                          int64_t y_rstride, int64_t P, int64_t Q, T bias)             \
    {                                                                                  \
        typedef T V __attribute__((vector_size(VBYTES)));                              \
        typedef TI VI __attribute__((vector_size(VBYTES)));                            \
        typedef TI EI; /* for CK_DW3_ROW */                                            \
        enum { VL = VBYTES / sizeof(T) };                                              \
        int64_t nvec = (Q + VL - 1) / VL, p, l, p_lo, p_hi, vi0, vi1;                  \
        V wv[9];                                                                       \
        VI iota;                                                                       \
        for (l = 0; l < 9; l++)                                                        \
            wv[l] = (V){0} + w[l];                                                     \
        for (l = 0; l < VL; l++)                                                       \
            iota[l] = (TI)l;                                                           \
        /* [p_lo, p_hi): output rows whose 3 input rows all lie in [0, H). */        \
        p_lo = pt > 0 ? pt : 0;                                                        \
        p_hi = H - 2 + pt < P ? H - 2 + pt : P;                                        \
        /* [vi0, vi1): the vectors whose reads fall inside the row. */              \
        for (vi0 = 0; vi0 < nvec && !CK_DW3_INSIDE(vi0); vi0++)                        \
            ;                                                                          \
        for (vi1 = vi0; vi1 < nvec && CK_DW3_INSIDE(vi1); vi1++)                       \
            ;                                                                          \
        for (p = 0; p < P;) {                                                          \
            int rows_in = p >= p_lo && p < p_hi;                                       \
            int64_t nt = rows_in && p + CK_DW3_T <= p_hi ? CK_DW3_T : 1;               \
            int64_t base = p - pt, r_lo = 0, r_hi = 3, lo, hi;                         \
            const T *xrow = x + x_off + base * W;                                      \
            T *yrow = y + p * y_rstride;                                               \
            if (!rows_in) {                                                            \
                r_lo = base >= 0 ? 0 : -base < 3 ? -base : 3;                          \
                r_hi = H - base < 3 ? (H - base > 0 ? H - base : 0) : 3;               \
            }                                                                          \
            if (rows_in && vi0 < vi1) {                                                \
                if (nt == CK_DW3_T)                                                    \
                    NAME##_bt0(xrow, W, w, yrow, y_rstride, vi0, vi1, vi1, vi1, Q, pl, \
                               0, 3, bias);                                            \
                else                                                                   \
                    NAME##_b10(xrow, W, w, yrow, y_rstride, vi0, vi1, vi1, vi1, Q, pl, \
                               0, 3, bias);                                            \
            }                                                                          \
            /* The rest (all the row's vectors, where some kernel row's input \
             * row lies outside [0, H)), if their reads stay inside x. */      \
            lo = x_off + (base + r_lo) * W + CK_DW_COLUMN(0) - pl;                     \
            hi = x_off + (base + nt - 1 + r_hi - 1) * W + CK_DW_COLUMN(nvec - 1) - pl  \
                 + VL + 2;                                                             \
            if (r_lo >= r_hi) {                                                        \
                int64_t i;                                                             \
                for (i = 0; i < nvec; i++)                                             \
                    CK_DW3_ROW(p, i);                                                  \
            } else if (lo >= 0 && hi <= x_len) {                                       \
                if (nt == CK_DW3_T)                                                    \
                    NAME##_bt1(xrow, W, w, yrow, y_rstride, 0, vi0, vi1, nvec, Q, pl,  \
                               0, 3, bias);                                            \
                else if (rows_in)                                                      \
                    NAME##_b11(xrow, W, w, yrow, y_rstride, 0, vi0, vi1, nvec, Q, pl,  \
                               0, 3, bias);                                            \
                else                                                                   \
                    NAME##_b11(xrow, W, w, yrow, y_rstride, 0, nvec, nvec, nvec, Q,    \
                               pl, r_lo, r_hi, bias);                                  \
            } else {                                                                   \
                int64_t i, v;                                                          \
                for (i = 0; i < nt; i++)                                               \
                    for (v = 0; v < nvec; v++)                                         \
                        if (!rows_in || v < vi0 || v >= vi1)                           \
                            CK_DW3_ROW(p + i, v);                                      \
            }                                                                          \
            p += nt;                                                                   \
        }                                                                              \
    }

/* Whether CK_DEFINE_FORWARD_DW3's vector V_ reads inside the row. */
#define CK_DW3_INSIDE(V_)                                                              \
    (CK_DW_COLUMN(V_) - pl >= 0 && CK_DW_COLUMN(V_) - pl + VL + 2 <= W)

/* Output row PR at vector V_ of CK_DEFINE_FORWARD_DW3, kernel rows whose
 * input row lies in [0, H) only, loading lane by lane where a vector
 * crosses an end of x: the first and last planes' corners. */
#define CK_DW3_ROW(PR, V_)                                                             \
    do {                                                                               \
        V acc_ = (V){0}, o_;                                                           \
        VI mk_;                                                                        \
        int64_t s_, r_, q0_ = CK_DW_COLUMN(V_), c0_ = q0_ - pl;                        \
        for (r_ = 0; r_ < 3; r_++) {                                                   \
            int64_t h_ = (PR) - pt + r_;                                               \
            if (h_ < 0 || h_ >= H)                                                     \
                continue;                                                              \
            for (s_ = 0; s_ < 3; s_++) {                                               \
                int64_t a_ = x_off + h_ * W + c0_ + s_, l_;                            \
                V xv_ = (V){0};                                                        \
                if (a_ >= 0 && a_ + VL <= x_len)                                       \
                    memcpy(&xv_, x + a_, sizeof(V));                                   \
                else                                                                   \
                    for (l_ = 0; l_ < VL; l_++)                                        \
                        if (a_ + l_ >= 0 && a_ + l_ < x_len)                           \
                            xv_[l_] = x[a_ + l_];                                      \
                mk_ = CK_LANES_INSIDE(iota, EI, c0_ + s_, W);                          \
                xv_ = (V)((VI)xv_ & mk_);                                              \
                acc_ += xv_ * wv[r_ * 3 + s_];                                         \
            }                                                                          \
        }                                                                              \
        o_ = acc_ + bias;                                                              \
        memcpy(y + (PR) * y_rstride + q0_, &o_, sizeof(V));                            \
    } while (0)

#define CK_DW_SMAX 16
#define CK_DEFINE_FORWARD_DW(NAME, T, TI, VBYTES, ATTR)                                \
    CK_DEFINE_FORWARD_DW3(NAME##_3x3, T, TI, VBYTES, ATTR)                             \
    ATTR static void NAME(const T *x, int64_t x_len, int64_t x_off, int64_t H,         \
                          int64_t W, const T *w, int64_t R, int64_t S, int64_t sh,     \
                          int64_t pt, int64_t pl, int64_t dh, int64_t dw, T *y,        \
                          int64_t y_rstride, int64_t P, int64_t Q, T bias)             \
    {                                                                                  \
        typedef T V __attribute__((vector_size(VBYTES)));                              \
        typedef TI VI __attribute__((vector_size(VBYTES)));                            \
        typedef T E; /* the types, for CK_DW_BLOCK */                                 \
        typedef TI EI;                                                                 \
        enum { VL = VBYTES / sizeof(T) };                                              \
        int64_t p, l, vi0, vi1, full_lo, full_hi;                                      \
        if (R == 3 && S == 3 && sh == 1 && dh == 1 && dw == 1 && Q >= VL) {           \
            NAME##_3x3(x, x_len, x_off, H, W, w, pt, pl, y, y_rstride, P, Q, bias);    \
            return;                                                                    \
        }                                                                              \
        int64_t nvec = Q >= VL ? (Q + VL - 1) / VL : 1;                                \
        /* 3x3 kernels at row stride and dilation 1: CK_DW_ROWS. */               \
        int rows3 = R == 3 && S == 3 && sh == 1 && dh == 1;                            \
        /* Vectors starting at column q in [in_lo, in_hi] read inside the row. */     \
        int64_t in_lo = pl, in_hi = W - VL + pl - (S - 1) * dw;                        \
        VI iota;                                                                       \
        for (l = 0; l < VL; l++)                                                       \
            iota[l] = (TI)l;                                                           \
        /* [full_lo, full_hi): output rows that every kernel row reaches. */          \
        full_lo = pt <= 0 ? 0 : (pt + sh - 1) / sh;                                    \
        full_hi = H - 1 - (R - 1) * dh + pt < 0 ? 0                                    \
                  : (H - 1 - (R - 1) * dh + pt) / sh + 1;                              \
        if (full_hi > P)                                                               \
            full_hi = P;                                                               \
        if (full_lo > full_hi)                                                         \
            full_lo = full_hi;                                                         \
        /* [vi0, vi1): the vectors whose reads fall inside the row (q(v) grows  \
         * with v, so they are consecutive). */                                \
        for (vi0 = 0; vi0 < nvec && !CK_DW_INSIDE(vi0); vi0++)                         \
            ;                                                                          \
        for (vi1 = vi0; vi1 < nvec && CK_DW_INSIDE(vi1); vi1++)                        \
            ;                                                                          \
        for (p = 0; p < P;) {                                                          \
            int64_t v, nr, nv_max, r_lo = 0, r_hi = R, base = p * sh - pt, qs[4], n = 0; \
            int inside;                                                                \
            if (p >= full_lo && p + 6 <= full_hi) {                                    \
                nr = 6;                                                                \
                nv_max = 2;                                                            \
            } else {                                                                   \
                nr = 1;                                                                \
                nv_max = 4;                                                            \
                r_lo = base >= 0 ? 0 : (-base + dh - 1) / dh;                          \
                r_hi = H - 1 - base < 0 ? 0 : (H - 1 - base) / dh + 1;                 \
                r_hi = r_hi < R ? r_hi : R;                                            \
            }                                                                          \
            /* Edge vectors first, then interior ones, in blocks of up to    \
             * nv_max (qs holds a block's columns). */                         \
            inside = 0;                                                                \
            for (v = 0; v < nvec; v++) {                                               \
                if (v == vi0)                                                          \
                    v = vi1;                                                           \
                if (v == nvec)                                                         \
                    break;                                                             \
                qs[n++] = CK_DW_COLUMN(v);                                             \
                if (n == nv_max)                                                       \
                    CK_DW_FLUSH();                                                     \
            }                                                                          \
            CK_DW_FLUSH();                                                             \
            inside = 1;                                                                \
            for (v = vi0; v < vi1; v++) {                                              \
                qs[n++] = CK_DW_COLUMN(v);                                             \
                if (n == nv_max)                                                       \
                    CK_DW_FLUSH();                                                     \
            }                                                                          \
            CK_DW_FLUSH();                                                             \
            p += nr;                                                                   \
        }                                                                              \
    }

/* The first column of CK_DEFINE_FORWARD_DW's vector V_ (none past Q - VL, nor
 * before 0), and whether its reads fall inside the row. */
#define CK_DW_COLUMN(V_) ((V_) * VL < Q - VL ? (V_) * VL : Q - VL > 0 ? Q - VL : 0)
#define CK_DW_INSIDE(V_) (CK_DW_COLUMN(V_) >= in_lo && CK_DW_COLUMN(V_) <= in_hi)

/* The n columns in qs as blocks of CK_DEFINE_FORWARD_DW's current rows. */
#define CK_DW_FLUSH()                                                                  \
    do {                                                                               \
        int64_t at = 0;                                                                \
        while (at < n) {                                                               \
            int64_t nv = n - at >= 4 ? 4 : n - at >= 2 ? 2 : 1;                        \
            const int64_t *qb = qs + at;                                               \
            if (nr == 6 && nv == 2 && rows3) CK_DW_KIND_BY(6, 2, CK_DW_ROWS3);         \
            else if (nr == 6 && rows3) CK_DW_KIND_BY(6, 1, CK_DW_ROWS3);               \
            else if (nr == 6 && nv == 2) CK_DW_BLOCK_KIND(6, 2);                       \
            else if (nr == 6) CK_DW_BLOCK_KIND(6, 1);                                  \
            else if (nv == 4) CK_DW_BLOCK_KIND(1, 4);                                  \
            else if (nv == 2) CK_DW_BLOCK_KIND(1, 2);                                  \
            else CK_DW_BLOCK_KIND(1, 1);                                               \
            at += nv;                                                                  \
        }                                                                              \
        n = 0;                                                                         \
    } while (0)

/* A block by its kind: interior (plain loads) or near an edge (masked
 * loads); one whose vectors would also cross an end of x goes term by term.
 * BLOCK is CK_DW_BLOCK or CK_DW_ROWS3. */
#define CK_DW_BLOCK_KIND(NR, NV) CK_DW_KIND_BY(NR, NV, CK_DW_BLOCK)
#define CK_DW_KIND_BY(NR, NV, BLOCK)                                                   \
    do {                                                                               \
        if (inside) {                                                                  \
            BLOCK(NR, NV, 0);                                                          \
        } else {                                                                       \
            int64_t j_, lo_ = x_len, hi_ = 0;                                          \
            for (j_ = 0; j_ < (NV); j_++) {                                            \
                int64_t a_ = x_off + (base + r_lo * dh) * W + qb[j_] - pl;             \
                int64_t b_ = x_off + (base + ((NR) - 1) * sh + (r_hi - 1) * dh) * W    \
                             + qb[j_] - pl + (S - 1) * dw + VL;                        \
                lo_ = a_ < lo_ ? a_ : lo_;                                             \
                hi_ = b_ > hi_ ? b_ : hi_;                                             \
            }                                                                          \
            if (r_lo >= r_hi || (lo_ >= 0 && hi_ <= x_len))                            \
                BLOCK(NR, NV, 1);                                                      \
            else                                                                       \
                CK_DW_SCALAR((NR), (NV));                                              \
        }                                                                              \
    } while (0)

/* CK_DW_BLOCK for row stride and dilation 1 and all R == RR kernel rows,
 * input row by input row: the S vectors of input row base + t load once
 * each and feed every output row i = t - r of the block, where CK_DW_BLOCK
 * loads them once per (output row, kernel row): NR + RR - 1 loads for
 * NR * RR products per column. Each output still adds its terms kernel
 * row by kernel row, column by column within a row, as CK_DW_BLOCK does:
 * the same sums in the same order. */
#define CK_DW_ROWS(NR, NV, MODE, RR, SS)                                               \
    do {                                                                               \
        V acc_[NR][NV];                                                                \
        VI mk_[(MODE) ? (NV) * CK_DW_SMAX : 1];                                        \
        int64_t t_, s_, i_, j_, r_, l_;                                                \
        CK_UNROLL for (i_ = 0; i_ < (NR); i_++)                                        \
            CK_UNROLL for (j_ = 0; j_ < (NV); j_++)                                    \
                acc_[i_][j_] = (V){0};                                                 \
        CK_DW_MASKS(NV, MODE);                                                         \
        CK_UNROLL for (t_ = 0; t_ < (NR) + (RR) - 1; t_++) {                           \
            const E *xr_ = x + x_off + (base + t_) * W - pl;                           \
            CK_UNROLL for (s_ = 0; s_ < (SS); s_++, xr_ += dw)                         \
                CK_UNROLL for (j_ = 0; j_ < (NV); j_++) {                              \
                    V xv_;                                                             \
                    memcpy(&xv_, xr_ + qb[j_], sizeof(V));                             \
                    if (MODE)                                                          \
                        xv_ = (V)((VI)xv_ & mk_[s_ * (NV) + j_]);                      \
                    CK_UNROLL for (r_ = 0; r_ < (RR); r_++)                            \
                        if (t_ - r_ >= 0 && t_ - r_ < (NR))                            \
                            acc_[t_ - r_][j_] += xv_ * w[r_ * (SS) + s_];              \
                }                                                                      \
        }                                                                              \
        CK_DW_STORE(NR, NV);                                                           \
    } while (0)

/* CK_DW_BLOCK's sums one output at a time, skipping the columns outside the
 * row (whose terms the vector blocks add as +0), for blocks at an end of x. */
#define CK_DW_SCALAR(NR, NV)                                                           \
    do {                                                                               \
        int64_t i_, j_, l_, r_, s_;                                                    \
        for (i_ = 0; i_ < (NR); i_++)                                                  \
            for (j_ = 0; j_ < (NV); j_++)                                              \
                for (l_ = 0; l_ < VL && qb[j_] + l_ < Q; l_++) {                       \
                    E sum_ = 0;                                                        \
                    for (r_ = r_lo; r_ < r_hi; r_++)                                   \
                        for (s_ = 0; s_ < S; s_++) {                                   \
                            int64_t c_ = qb[j_] + l_ - pl + s_ * dw;                   \
                            if (c_ >= 0 && c_ < W)                                     \
                                sum_ += x[x_off + (base + i_ * sh + r_ * dh) * W + c_] \
                                        * w[r_ * S + s_];                              \
                        }                                                              \
                    y[(p + i_) * y_rstride + qb[j_] + l_] = sum_ + bias;               \
                }                                                                      \
    } while (0)

/* Output rows [p, p + NR) by the NV vectors from columns qb[0:NV] of
 * CK_DEFINE_FORWARD_DW, kernel rows [r_lo, r_hi). MODE 0 loads as they
 * are; 1 clears the lanes outside the row, with masks made once per block. */
#define CK_DW_BLOCK(NR, NV, MODE)                                                      \
    do {                                                                               \
        V acc_[NR][NV];                                                                \
        VI mk_[(MODE) ? (NV) * CK_DW_SMAX : 1];                                        \
        int64_t r_, s_, i_, j_, l_;                                                    \
        CK_UNROLL for (i_ = 0; i_ < (NR); i_++)                                        \
            CK_UNROLL for (j_ = 0; j_ < (NV); j_++)                                    \
                acc_[i_][j_] = (V){0};                                                 \
        CK_DW_MASKS(NV, MODE);                                                         \
        for (r_ = r_lo; r_ < r_hi; r_++) {                                             \
            int64_t xi_ = x_off + (base + r_ * dh) * W - pl;                           \
            for (s_ = 0; s_ < S; s_++, xi_ += dw) {                                    \
                E wv_ = w[r_ * S + s_];                                                \
                CK_UNROLL for (j_ = 0; j_ < (NV); j_++)                                \
                    CK_UNROLL for (i_ = 0; i_ < (NR); i_++) {                          \
                        V xv_;                                                         \
                        int64_t ix_ = xi_ + i_ * sh * W + qb[j_];                      \
                        memcpy(&xv_, x + ix_, sizeof(V));                              \
                        if (MODE)                                                      \
                            xv_ = (V)((VI)xv_ & mk_[s_ * (NV) + j_]);                  \
                        acc_[i_][j_] += xv_ * wv_;                                     \
                    }                                                                  \
            }                                                                          \
        }                                                                              \
        CK_DW_STORE(NR, NV);                                                           \
    } while (0)

/* With MODE 1, mk_[s*NV + j] clears the lanes of tap column s of vector j
 * whose input column lies outside [0, W). */
#define CK_DW_MASKS(NV, MODE)                                                          \
        if (MODE)                                                                      \
            for (s_ = 0; s_ < S; s_++)                                                 \
                CK_UNROLL for (j_ = 0; j_ < (NV); j_++) {                              \
                    mk_[s_ * (NV) + j_] =                                              \
                        CK_LANES_INSIDE(iota, EI, qb[j_] - pl + s_ * dw, W);           \
                }

/* CK_DW_ROWS for 3x3 kernels. */
#define CK_DW_ROWS3(NR, NV, MODE) CK_DW_ROWS(NR, NV, MODE, 3, 3)

/* Stores CK_DW_BLOCK's or CK_DW_ROWS's sums plus the bias. */
#define CK_DW_STORE(NR, NV)                                                            \
        CK_UNROLL for (i_ = 0; i_ < (NR); i_++)                                        \
            CK_UNROLL for (j_ = 0; j_ < (NV); j_++) {                                  \
                E *yr_ = y + (p + i_) * y_rstride + qb[j_];                            \
                V o_ = acc_[i_][j_] + bias;                                            \
                if (Q >= VL) /* then no vector passes Q */                             \
                    memcpy(yr_, &o_, sizeof(V));                                       \
                else                                                                   \
                    for (l_ = 0; qb[j_] + l_ < Q; l_++)                                \
                        yr_[l_] = o_[l_];                                              \
            }

/* ---- finiteness scan --------------------------------------------------- */

/* 1 if a[0:n] holds an inf or a NaN, else 0: x - x is +0 for finite x and NaN
 * otherwise, and a sum of such terms is 0 exactly when all of them are. */
#define CK_DEFINE_NONFINITE(NAME, T, VBYTES, ATTR)                                     \
    ATTR static int NAME(const T *a, int64_t n)                                        \
    {                                                                                  \
        typedef T V __attribute__((vector_size(VBYTES)));                              \
        enum { VL = VBYTES / sizeof(T) };                                              \
        V s0 = {0}, s1 = {0};                                                          \
        T lanes[VL], tail = 0;                                                         \
        int64_t i, l;                                                                  \
        for (i = 0; i + 2 * VL <= n; i += 2 * VL) {                                    \
            V v0, v1;                                                                  \
            memcpy(&v0, a + i, sizeof(V));                                             \
            memcpy(&v1, a + i + VL, sizeof(V));                                        \
            s0 += v0 - v0;                                                             \
            s1 += v1 - v1;                                                             \
        }                                                                              \
        for (; i < n; i++)                                                             \
            tail += a[i] - a[i];                                                       \
        s0 += s1;                                                                      \
        memcpy(lanes, &s0, sizeof(lanes));                                             \
        for (l = 0; l < VL; l++)                                                       \
            tail += lanes[l];                                                          \
        return tail != 0;                                                              \
    }

/* ---- transpose --------------------------------------------------------- */

/* dst[j*ldd + i] = src[i*lds + j] for i < rows, j < cols (strides may be
 * negative): blocks of 8 x 8 float32 or 4 x 4 float64 go through 256-bit
 * vectors and three rounds of shuffles (pairs of rows interleaved, then
 * pairs of pairs, then halves), the edges element by element, for the
 * weight packing. (The channel-vector grad_weight's transposes of
 * grad_output, 3% of its kernel's time for resnet-3x3-c256, ran 5-7% slower
 * with it on a Zen 4 EPYC, for no reason found: they keep their loop.) */
typedef float ck_v8f __attribute__((vector_size(32)));
typedef int32_t ck_v8i __attribute__((vector_size(32)));
typedef double ck_v4d __attribute__((vector_size(32)));
typedef int64_t ck_v4l __attribute__((vector_size(32)));
#define CK_TRANSPOSE_EDGES(B)                                                          \
    for (i = 0; i < rows - rows % (B); i++)                                            \
        for (j = cols - cols % (B); j < cols; j++)                                     \
            dst[j * ldd + i] = src[i * lds + j];                                       \
    for (i = rows - rows % (B); i < rows; i++)                                         \
        for (j = 0; j < cols; j++)                                                     \
            dst[j * ldd + i] = src[i * lds + j];
/* One block at (i0, j0): 8 rows of float32 in, 8 columns out. */
#define CK_TRANSPOSE_BLOCK_F32                                                         \
    do {                                                                               \
        ck_v8f r[8], t[8], u[8];                                                       \
        for (i = 0; i < 8; i++)                                                        \
            memcpy(&r[i], src + (i0 + i) * lds + j0, sizeof(ck_v8f));                  \
        for (i = 0; i < 8; i += 2) {                                                   \
            t[i] = __builtin_shuffle(r[i], r[i + 1], (ck_v8i){0, 8, 1, 9, 4, 12, 5, 13}); \
            t[i + 1] = __builtin_shuffle(r[i], r[i + 1], (ck_v8i){2, 10, 3, 11, 6, 14, 7, 15}); \
        }                                                                              \
        for (i = 0; i < 8; i += 4) {                                                   \
            u[i] = __builtin_shuffle(t[i], t[i + 2], (ck_v8i){0, 1, 8, 9, 4, 5, 12, 13}); \
            u[i + 1] = __builtin_shuffle(t[i], t[i + 2], (ck_v8i){2, 3, 10, 11, 6, 7, 14, 15}); \
            u[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], (ck_v8i){0, 1, 8, 9, 4, 5, 12, 13}); \
            u[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3],                           \
                                         (ck_v8i){2, 3, 10, 11, 6, 7, 14, 15});        \
        }                                                                              \
        /* u[c] holds columns c and c + 4 of rows 0-3 and 4-7 (halves). */             \
        for (i = 0; i < 4; i++) {                                                      \
            ck_v8f lo = __builtin_shuffle(u[i], u[i + 4], (ck_v8i){0, 1, 2, 3, 8, 9, 10, 11}); \
            ck_v8f hi = __builtin_shuffle(u[i], u[i + 4], (ck_v8i){4, 5, 6, 7, 12, 13, 14, 15}); \
            memcpy(dst + (j0 + i) * ldd + i0, &lo, sizeof(ck_v8f));                    \
            memcpy(dst + (j0 + i + 4) * ldd + i0, &hi, sizeof(ck_v8f));                \
        }                                                                              \
    } while (0)
/* 4 rows of float64 in, 4 columns out. */
#define CK_TRANSPOSE_BLOCK_F64                                                         \
    do {                                                                               \
        ck_v4d r[4], t[4];                                                             \
        for (i = 0; i < 4; i++)                                                        \
            memcpy(&r[i], src + (i0 + i) * lds + j0, sizeof(ck_v4d));                  \
        for (i = 0; i < 4; i += 2) {                                                   \
            t[i] = __builtin_shuffle(r[i], r[i + 1], (ck_v4l){0, 4, 2, 6});            \
            t[i + 1] = __builtin_shuffle(r[i], r[i + 1], (ck_v4l){1, 5, 3, 7});        \
        }                                                                              \
        for (i = 0; i < 2; i++) {                                                      \
            ck_v4d lo = __builtin_shuffle(t[i], t[i + 2], (ck_v4l){0, 1, 4, 5});       \
            ck_v4d hi = __builtin_shuffle(t[i], t[i + 2], (ck_v4l){2, 3, 6, 7});       \
            memcpy(dst + (j0 + i) * ldd + i0, &lo, sizeof(ck_v4d));                    \
            memcpy(dst + (j0 + i + 2) * ldd + i0, &hi, sizeof(ck_v4d));                \
        }                                                                              \
    } while (0)
/* The transpose of T in BxB blocks (BLOCK one of the two above). */
#define CK_DEFINE_TRANSPOSE(NAME, T, B, BLOCK, ATTR)                                   \
    ATTR static void NAME(const T *src, int64_t lds, T *dst, int64_t ldd, int64_t rows, \
                          int64_t cols)                                                \
    {                                                                                  \
        int64_t i0, j0, i, j;                                                          \
        for (i0 = 0; i0 + (B) <= rows; i0 += (B))                                      \
            for (j0 = 0; j0 + (B) <= cols; j0 += (B))                                  \
                BLOCK;                                                                 \
        CK_TRANSPOSE_EDGES(B)                                                          \
    }

/* The widest grad_output row each grad_input-by-rows kernel takes: its
 * W = QM + S - 1 sums, S weights and a broadcast fill at most the 16 or 32
 * vector registers. */
#define CK_GIR3_QM_AVX2 10
#define CK_GIR5_QM_AVX2 6
#define CK_GIR3_QM_AVX512 24
#define CK_GIR5_QM_AVX512 16
#if CK_X86
#define CK_AVX512 __attribute__((target("avx512f,avx2,fma")))
#define CK_AVX2 __attribute__((target("avx2,fma")))
#endif
#define CK_BASE

/* ---- forward on the input where it lies (AVX-512 masks) ---------------- */

/* Taps of the masked forward at most (its per-block masks live on the stack). */
#define CK_MASKED_TAPS 64

/* Lanes [lo, hi) of a VL-lane mask, clipped to [0, VL). */
static inline uint64_t ck_lane_range(int64_t lo, int64_t hi, int64_t VL)
{
    if (lo < 0)
        lo = 0;
    if (hi > VL)
        hi = VL;
    return hi > lo ? (((uint64_t)1 << hi) - ((uint64_t)1 << lo)) : 0;
}

/* The channel loop of CK_DEFINE_FORWARD_MASKED (element type TT), LOAD giving
 * tap t's vector b of positions at xp + b*VL, or a plain load where WHOLE. */
#define CK_MASKED_SUM(TT, LOAD, WHOLE)                                                 \
    for (c = 0; c < Cg; c++) {                                                         \
        const TT *xc = x + c * chan_stride + j0;                                       \
        const TT *wc = w + c * RS * KB;                                                \
        for (t = 0; t < RS; t++) {                                                     \
            const TT *xp = xc + tap_off[t];                                            \
            const TT *wt = wc + t * KB;                                                \
            V xv[NQ];                                                                  \
            if (WHOLE) {                                                               \
                CK_UNROLL for (b = 0; b < NQ; b++)                                     \
                    memcpy(&xv[b], xp + b * VL, sizeof(V));                            \
            } else                                                                     \
                CK_UNROLL for (b = 0; b < NQ; b++)                                     \
                    xv[b] = LOAD;                                                      \
            CK_UNROLL for (kb = 0; kb < KB; kb++)                                      \
                CK_UNROLL for (b = 0; b < NQ; b++)                                     \
                    acc[kb][b] += xv[b] * wt[kb];                                      \
        }                                                                              \
    }

/* The grid forward's sums for a stride-1 convolution whose output is the
 * input's size (P == H, Q == W: "same" padding), read from x where it lies:
 * no packed copy, and the H x W grid wastes no column. Tap t = (r, s) reads
 * output position j = p*W + q at x + j + row_off[r]*W + col_off[s]. A lane whose (p + row_off[r], q + col_off[s])
 * falls outside the input is zeroed: it holds the zero the padding would,
 * so every sum is the grid kernel's on the padded planes, term for term
 * (the same bits, inf and NaN included). Blocks of positions whose every
 * tap reads inside the channel's plane, in rows of the input, load whole
 * vectors and AND them with the column masks (a column off the edge reads
 * the neighbouring row). The others (near the first and last rows, the
 * tail) use masked loads, which never touch a masked lane's address but
 * cost more on Zen 4: n1's kernel ran 8% slower with every block on them.
 * Outputs go straight from the registers to out[k*out_kstride + j]
 * (contiguous rows), plus the bias. MASKVEC turns a lane mask into a vector
 * of all-ones lanes. */
#define CK_DEFINE_FORWARD_MASKED(NAME, T, TI, MT, LOADZ, STOREM, MASKVEC, QB, ATTR)     \
    ATTR static void NAME(const T *x, const T *w,                                      \
                          const int64_t *row_off, const int64_t *col_off, int64_t R,   \
                          int64_t S, int64_t Cg, int64_t chan_stride, int64_t H,       \
                          int64_t W, T *out, int64_t out_kstride, int64_t kcount,      \
                          const T *bias)                                               \
    {                                                                                  \
        typedef T V __attribute__((vector_size(64)));                                  \
        typedef TI VI __attribute__((vector_size(64)));                                \
        enum { VL = 64 / sizeof(T), QW = VL * QB, KB = CK_KB, NQ = QB };               \
        int64_t grid_len = H * W, RS = R * S, j0, c, t, kb, b, r, s;                   \
        MT m[CK_MASKED_TAPS][QB];                                                      \
        VI mv[CK_MASKED_TAPS][QB];                                                     \
        int whole[CK_MASKED_TAPS];                                                     \
        int64_t tap_off[CK_MASKED_TAPS];                                               \
        /* Whole vectors only where every tap of the block reads inside the    \
         * channel's plane: a column off its edge reads the row next to it,    \
         * never memory before the first channel or after the last. */        \
        int64_t off_lo = 0, off_hi = 0;                                                \
        for (r = 0; r < R; r++)                                                        \
            for (s = 0; s < S; s++)                                                    \
                tap_off[r * S + s] = row_off[r] * W + col_off[s];                      \
        for (t = 0; t < R * S; t++) {                                                  \
            off_lo = tap_off[t] < off_lo ? tap_off[t] : off_lo;                        \
            off_hi = tap_off[t] > off_hi ? tap_off[t] : off_hi;                        \
        }                                                                              \
        for (j0 = 0; j0 < grid_len; j0 += QW) {                                        \
            int inside = j0 + off_lo >= 0 && j0 + QW + off_hi <= grid_len;             \
            for (b = 0; b < QB; b++) {                                                 \
                int64_t jv = j0 + b * VL, qv = jv % W;                                 \
                uint64_t rows[CK_MASKED_TAPS], cols[CK_MASKED_TAPS];                   \
                uint64_t all = ck_lane_range(0, VL, VL);                               \
                for (r = 0; r < R; r++) {                                              \
                    int64_t shift = row_off[r] * W, hi = grid_len - jv - shift;        \
                    rows[r] = ck_lane_range(-jv - shift, hi < grid_len - jv ? hi       \
                                            : grid_len - jv, VL);                      \
                    inside &= rows[r] == all;                                          \
                }                                                                      \
                for (s = 0; s < S; s++) {                                              \
                    int64_t ds = col_off[s], span = ds < 0 ? -ds : ds, B;              \
                    uint64_t bad = 0;                                                  \
                    /* Row starts B (lane of q == 0): ds < 0 loses the span lanes   \
                     * from each, ds > 0 the span lanes before each. */              \
                    for (B = -qv - (span + W - 1) / W * W; B - (ds > 0 ? ds : 0) < VL;  \
                         B += W)                                                       \
                        bad |= ds < 0 ? ck_lane_range(B, B + span, VL)                 \
                                      : ck_lane_range(B - span, B, VL);                \
                    cols[s] = all & ~bad;                                              \
                }                                                                      \
                for (r = 0; r < R; r++)                                                \
                    for (s = 0; s < S; s++)                                            \
                        m[r * S + s][b] = (MT)(rows[r] & cols[s]);                     \
            }                                                                          \
            V acc[KB][QB];                                                             \
            CK_UNROLL for (kb = 0; kb < KB; kb++)                                      \
                CK_UNROLL for (b = 0; b < QB; b++)                                     \
                    acc[kb][b] = (V){0};                                               \
            if (inside) {                                                              \
                for (t = 0; t < RS; t++) {                                             \
                    whole[t] = 1;                                                      \
                    for (b = 0; b < QB; b++) {                                         \
                        mv[t][b] = (VI)MASKVEC(m[t][b]);                               \
                        whole[t] &= (uint64_t)m[t][b] == ck_lane_range(0, VL, VL);     \
                    }                                                                  \
                }                                                                      \
                CK_MASKED_SUM(T, ck_masked_and_(xp + b * VL, mv[t][b]), whole[t])      \
            } else                                                                     \
                CK_MASKED_SUM(T, (V)LOADZ(m[t][b], xp + b * VL), 0)                    \
            CK_UNROLL for (kb = 0; kb < KB; kb++) {                                    \
                T *o = out + kb * out_kstride;                                         \
                if (kb >= kcount)                                                      \
                    break;                                                             \
                CK_UNROLL for (b = 0; b < QB; b++) {                                   \
                    int64_t j = j0 + b * VL;                                           \
                    V v = acc[kb][b] + bias[kb];                                       \
                    if (j + VL <= grid_len)                                            \
                        memcpy(o + j, &v, sizeof(V));                                  \
                    else if (j < grid_len)                                             \
                        STOREM(o + j, (MT)ck_lane_range(0, grid_len - j, VL), v);      \
                }                                                                      \
            }                                                                          \
        }                                                                              \
    }
/* A whole vector (V) from P, its lanes off the input zeroed by the mask
 * vector MV (VI). */
#define ck_masked_and_(P, MV)                                                          \
    __extension__({                                                                    \
        V v_;                                                                          \
        memcpy(&v_, (P), sizeof(V));                                                   \
        (V)((VI)v_ & (MV));                                                            \
    })

/* CK_DEFINE_FORWARD: name, type, vector bytes, channel block (the packed
 * weights' last axis), channels per register block, vectors per block,
 * attribute; the other kernels: name, type, vector bytes, their blocks,
 * attribute. */
CK_DEFINE_TRANSPOSE(ck_transpose_f32_base, float, 8, CK_TRANSPOSE_BLOCK_F32, CK_BASE)
CK_DEFINE_TRANSPOSE(ck_transpose_f64_base, double, 4, CK_TRANSPOSE_BLOCK_F64, CK_BASE)
CK_DEFINE_FORWARD(ck_fwd_f32_base, float, 16, CK_KB, CK_KB, 2, CK_BASE)
CK_DEFINE_FORWARD(ck_fwd_f64_base, double, 16, CK_KB, CK_KB, 2, CK_BASE)
CK_DEFINE_FORWARD(ck_fwd1_f32_base, float, 16, 1, 1, 4, CK_BASE)
CK_DEFINE_FORWARD(ck_fwd1_f64_base, double, 16, 1, 1, 4, CK_BASE)
CK_DEFINE_FORWARD_KVEC(ck_fwdk_f32_base, float, 16, 4, 3, 3, CK_BASE)
CK_DEFINE_FORWARD_KVEC(ck_fwdk_f64_base, double, 16, 4, 3, 3, CK_BASE)
CK_DEFINE_GRAD_WEIGHT(ck_gw_f32_base, float, 16, CK_GW_KB, 2, CK_BASE)
CK_DEFINE_GRAD_WEIGHT(ck_gw1_f32_base, float, 16, 1, 9, CK_BASE)
CK_DEFINE_GRAD_WEIGHT(ck_gw_f64_base, double, 16, CK_GW_KB, 2, CK_BASE)
CK_DEFINE_GRAD_WEIGHT(ck_gw1_f64_base, double, 16, 1, 9, CK_BASE)
CK_DEFINE_GRAD_WEIGHT_KVEC(ck_gwk_f32_base, float, 16, 2, 6, CK_BASE)
CK_DEFINE_GRAD_WEIGHT_KVEC(ck_gwk_f64_base, double, 16, 2, 6, CK_BASE)
CK_DEFINE_GRAD_WEIGHT_ROWS(ck_gwr_f32_base, float, int32_t, 16, CK_BASE)
CK_DEFINE_GRAD_WEIGHT_ROWS(ck_gwr_f64_base, double, int64_t, 16, CK_BASE)
CK_DEFINE_NONFINITE(ck_nonfinite_f32_base, float, 16, CK_BASE)
CK_DEFINE_NONFINITE(ck_nonfinite_f64_base, double, 16, CK_BASE)
CK_DEFINE_COL2IM(ck_col2im_f32_base, float, int32_t, 16, CK_BASE)
CK_DEFINE_COL2IM(ck_col2im_f64_base, double, int64_t, 16, CK_BASE)
CK_DEFINE_COL2IM_STRIDED(ck_col2ims_f32_base, float, CK_BASE)
CK_DEFINE_COL2IM_STRIDED(ck_col2ims_f64_base, double, CK_BASE)
CK_DEFINE_FORWARD_DW(ck_fwdw_f32_base, float, int32_t, 16, CK_BASE)
CK_DEFINE_FORWARD_DW(ck_fwdw_f64_base, double, int64_t, 16, CK_BASE)
#if CK_X86
/* 16 registers: 4 channels x 3 vectors of positions, or all CK_KB channels
 * x 1 vector for short reductions (fwds_*). */
CK_DEFINE_TRANSPOSE(ck_transpose_f32_avx2, float, 8, CK_TRANSPOSE_BLOCK_F32, CK_AVX2)
CK_DEFINE_TRANSPOSE(ck_transpose_f64_avx2, double, 4, CK_TRANSPOSE_BLOCK_F64, CK_AVX2)
CK_DEFINE_FORWARD(ck_fwd_f32_avx2, float, 32, CK_KB, 4, 3, CK_AVX2)
CK_DEFINE_FORWARD(ck_fwd_f64_avx2, double, 32, CK_KB, 4, 3, CK_AVX2)
CK_DEFINE_FORWARD(ck_fwds_f32_avx2, float, 32, CK_KB, CK_KB, 1, CK_AVX2)
CK_DEFINE_FORWARD(ck_fwds_f64_avx2, double, 32, CK_KB, CK_KB, 1, CK_AVX2)
CK_DEFINE_FORWARD(ck_fwd1_f32_avx2, float, 32, 1, 1, 4, CK_AVX2)
CK_DEFINE_FORWARD(ck_fwd1_f64_avx2, double, 32, 1, 1, 4, CK_AVX2)
CK_DEFINE_FORWARD_KVEC(ck_fwdk_f32_avx2, float, 32, 2, 6, 4, CK_AVX2)
CK_DEFINE_FORWARD_KVEC(ck_fwdk_f64_avx2, double, 32, 2, 6, 4, CK_AVX2)
CK_DEFINE_GRAD_WEIGHT(ck_gw_f32_avx2, float, 32, CK_GW_KB, 2, CK_AVX2)
CK_DEFINE_GRAD_WEIGHT(ck_gw1_f32_avx2, float, 32, 1, 9, CK_AVX2)
CK_DEFINE_GRAD_WEIGHT(ck_gw_f64_avx2, double, 32, CK_GW_KB, 2, CK_AVX2)
CK_DEFINE_GRAD_WEIGHT(ck_gw1_f64_avx2, double, 32, 1, 9, CK_AVX2)
CK_DEFINE_GRAD_WEIGHT_KVEC(ck_gwk_f32_avx2, float, 32, 2, 6, CK_AVX2)
CK_DEFINE_GRAD_WEIGHT_KVEC(ck_gwk_f64_avx2, double, 32, 2, 6, CK_AVX2)
CK_DEFINE_GRAD_WEIGHT_ROWS(ck_gwr_f32_avx2, float, int32_t, 32, CK_AVX2)
CK_DEFINE_GRAD_WEIGHT_ROWS(ck_gwr_f64_avx2, double, int64_t, 32, CK_AVX2)
CK_DEFINE_NONFINITE(ck_nonfinite_f32_avx2, float, 32, CK_AVX2)
CK_DEFINE_NONFINITE(ck_nonfinite_f64_avx2, double, 32, CK_AVX2)
CK_DEFINE_COL2IM(ck_col2im_f32_avx2, float, int32_t, 32, CK_AVX2)
CK_DEFINE_COL2IM(ck_col2im_f64_avx2, double, int64_t, 32, CK_AVX2)
CK_DEFINE_COL2IM_STRIDED(ck_col2ims_f32_avx2, float, CK_AVX2)
CK_DEFINE_COL2IM_STRIDED(ck_col2ims_f64_avx2, double, CK_AVX2)
CK_DEFINE_GRAD_INPUT_ROWS(ck_gir3_f32_avx2, float, 32, 3, CK_GIR3_QM_AVX2, CK_AVX2)
CK_DEFINE_GRAD_INPUT_ROWS(ck_gir3_f64_avx2, double, 32, 3, CK_GIR3_QM_AVX2, CK_AVX2)
CK_DEFINE_GRAD_INPUT_ROWS(ck_gir5_f32_avx2, float, 32, 5, CK_GIR5_QM_AVX2, CK_AVX2)
CK_DEFINE_FORWARD_DW(ck_fwdw_f32_avx2, float, int32_t, 32, CK_AVX2)
CK_DEFINE_FORWARD_DW(ck_fwdw_f64_avx2, double, int64_t, 32, CK_AVX2)
CK_DEFINE_FORWARD(ck_fwd_f32_avx512, float, 64, CK_KB, CK_KB, 3, CK_AVX512)
CK_DEFINE_FORWARD(ck_fwd_f64_avx512, double, 64, CK_KB, CK_KB, 3, CK_AVX512)
CK_DEFINE_FORWARD(ck_fwds_f32_avx512, float, 64, CK_KB, CK_KB, 2, CK_AVX512)
CK_DEFINE_FORWARD(ck_fwds_f64_avx512, double, 64, CK_KB, CK_KB, 2, CK_AVX512)
/* The block of CK_KB channels as two halves of 4 channels x 4 vectors of
 * positions (a whole 8x8 float32 map): per 16 multiply-adds 4 weight
 * broadcasts and 4 input loads where fwds_* takes 8 and 2, and each tile of
 * weights read once per 4 vectors of positions rather than 2. */
CK_DEFINE_FORWARD(ck_fwdq_f32_avx512, float, 64, CK_KB, 4, 4, CK_AVX512)
CK_DEFINE_FORWARD(ck_fwdq_f64_avx512, double, 64, CK_KB, 4, 4, CK_AVX512)
CK_DEFINE_FORWARD(ck_fwd1_f32_avx512, float, 64, 1, 1, 8, CK_AVX512)
CK_DEFINE_FORWARD(ck_fwd1_f64_avx512, double, 64, 1, 1, 8, CK_AVX512)
CK_DEFINE_FORWARD_KVEC(ck_fwdk_f32_avx512, float, 64, 2, 8, 4, CK_AVX512)
CK_DEFINE_FORWARD_KVEC(ck_fwdk_f64_avx512, double, 64, 2, 8, 4, CK_AVX512)
/* Wide blocks (4 vectors of channels x 6 positions) load fewer values per
 * multiply-add where K/G fills them. */
CK_DEFINE_FORWARD_KVEC(ck_fwdkw_f32_avx512, float, 64, 4, 6, 4, CK_AVX512)
CK_DEFINE_FORWARD_KVEC(ck_fwdkw_f64_avx512, double, 64, 4, 6, 4, CK_AVX512)
CK_DEFINE_GRAD_WEIGHT(ck_gw_f32_avx512, float, 64, CK_GW_KB, 3, CK_AVX512)
CK_DEFINE_GRAD_WEIGHT(ck_gw1_f32_avx512, float, 64, 1, 9, CK_AVX512)
CK_DEFINE_GRAD_WEIGHT(ck_gw_f64_avx512, double, 64, CK_GW_KB, 3, CK_AVX512)
CK_DEFINE_GRAD_WEIGHT(ck_gw1_f64_avx512, double, 64, 1, 9, CK_AVX512)
CK_DEFINE_GRAD_WEIGHT_KVEC(ck_gwk_f32_avx512, float, 64, 2, 12, CK_AVX512)
CK_DEFINE_GRAD_WEIGHT_KVEC(ck_gwk_f64_avx512, double, 64, 2, 12, CK_AVX512)
CK_DEFINE_GRAD_WEIGHT_KVEC(ck_gwkw_f32_avx512, float, 64, 4, 6, CK_AVX512)
CK_DEFINE_GRAD_WEIGHT_KVEC(ck_gwkw_f64_avx512, double, 64, 4, 6, CK_AVX512)
CK_DEFINE_GRAD_WEIGHT_ROWS(ck_gwr_f32_avx512, float, int32_t, 64, CK_AVX512)
CK_DEFINE_GRAD_WEIGHT_ROWS(ck_gwr_f64_avx512, double, int64_t, 64, CK_AVX512)
CK_DEFINE_NONFINITE(ck_nonfinite_f32_avx512, float, 64, CK_AVX512)
CK_DEFINE_NONFINITE(ck_nonfinite_f64_avx512, double, 64, CK_AVX512)
CK_DEFINE_COL2IM(ck_col2im_f32_avx512, float, int32_t, 64, CK_AVX512)
CK_DEFINE_COL2IM(ck_col2im_f64_avx512, double, int64_t, 64, CK_AVX512)
CK_DEFINE_COL2IM_STRIDED(ck_col2ims_f32_avx512, float, CK_AVX512)
CK_DEFINE_COL2IM_STRIDED(ck_col2ims_f64_avx512, double, CK_AVX512)
CK_DEFINE_GRAD_INPUT_ROWS(ck_gir3_f32_avx512, float, 64, 3, CK_GIR3_QM_AVX512, CK_AVX512)
CK_DEFINE_GRAD_INPUT_ROWS(ck_gir3_f64_avx512, double, 64, 3, CK_GIR3_QM_AVX512, CK_AVX512)
CK_DEFINE_GRAD_INPUT_ROWS(ck_gir5_f32_avx512, float, 64, 5, CK_GIR5_QM_AVX512, CK_AVX512)
CK_DEFINE_GRAD_INPUT_ROWS(ck_gir5_f64_avx512, double, 64, 5, CK_GIR5_QM_AVX512, CK_AVX512)
CK_DEFINE_FORWARD_DW(ck_fwdw_f32_avx512, float, int32_t, 64, CK_AVX512)
CK_DEFINE_FORWARD_DW(ck_fwdw_f64_avx512, double, int64_t, 64, CK_AVX512)
#define CK_MASKVEC_F32(M) _mm512_maskz_set1_epi32((M), -1)
#define CK_MASKVEC_F64(M) _mm512_maskz_set1_epi64((M), -1)
CK_DEFINE_FORWARD_MASKED(ck_fwdm_f32_avx512, float, int32_t, __mmask16, _mm512_maskz_loadu_ps,
                         _mm512_mask_storeu_ps, CK_MASKVEC_F32, 3, CK_AVX512)
CK_DEFINE_FORWARD_MASKED(ck_fwdm_f64_avx512, double, int64_t, __mmask8, _mm512_maskz_loadu_pd,
                         _mm512_mask_storeu_pd, CK_MASKVEC_F64, 3, CK_AVX512)
#endif

typedef void (*ck_fwd_f32_t)(const float *, const float *, const int64_t *, int64_t, int64_t,
                             int64_t, int64_t, int64_t, int64_t, float *, int64_t, float *,
                             int64_t, int64_t, int64_t, int64_t, const float *, int64_t);
typedef void (*ck_fwd_f64_t)(const double *, const double *, const int64_t *, int64_t,
                             int64_t, int64_t, int64_t, int64_t, int64_t, double *, int64_t,
                             double *, int64_t, int64_t, int64_t, int64_t, const double *,
                             int64_t);
typedef void (*ck_fwdk_f32_t)(const float *, const float *, const int64_t *, int64_t, int64_t,
                              int64_t, int64_t, int64_t, int64_t, float *, int64_t, float *,
                              int64_t, int64_t, int64_t, int64_t, const float *, int64_t,
                              const int64_t *, const int64_t *, int64_t);
typedef void (*ck_fwdk_f64_t)(const double *, const double *, const int64_t *, int64_t,
                              int64_t, int64_t, int64_t, int64_t, int64_t, double *, int64_t,
                              double *, int64_t, int64_t, int64_t, int64_t, const double *,
                              int64_t, const int64_t *, const int64_t *, int64_t);
typedef void (*ck_gw_f32_t)(const float *, int64_t, int64_t, int64_t, const float *, int64_t,
                            const int64_t *, int64_t, int64_t, int64_t, float *, int64_t);
typedef void (*ck_gw_f64_t)(const double *, int64_t, int64_t, int64_t, const double *,
                            int64_t, const int64_t *, int64_t, int64_t, int64_t, double *,
                            int64_t);

typedef void (*ck_gwk_f32_t)(const float *, int64_t, int64_t, int64_t, const float *, int64_t,
                             int64_t, int64_t, int64_t, int64_t, int64_t, const int64_t *,
                             const int64_t *, int64_t, int64_t, int64_t, int64_t, int64_t,
                             int64_t, int64_t, int64_t, int64_t, int64_t, const float *,
                             int64_t, float *, float *, int64_t, int64_t, int);
typedef void (*ck_gwk_f64_t)(const double *, int64_t, int64_t, int64_t, const double *,
                             int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                             const int64_t *, const int64_t *, int64_t, int64_t, int64_t,
                             int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                             const double *, int64_t, double *, double *, int64_t, int64_t,
                             int);

typedef int (*ck_gwr_f32_t)(const float *, int64_t, int64_t, int64_t, const float *, int64_t,
                             int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                             int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                             const float *, int64_t, float *);
typedef int (*ck_gwr_f64_t)(const double *, int64_t, int64_t, int64_t, const double *,
                             int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                             int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                             int64_t, const double *, int64_t, double *);

typedef void (*ck_fwdw_f32_t)(const float *, int64_t, int64_t, int64_t, int64_t,
                              const float *, int64_t, int64_t, int64_t, int64_t, int64_t,
                              int64_t, int64_t, float *, int64_t, int64_t, int64_t, float);
typedef void (*ck_fwdw_f64_t)(const double *, int64_t, int64_t, int64_t, int64_t,
                              const double *, int64_t, int64_t, int64_t, int64_t, int64_t,
                              int64_t, int64_t, double *, int64_t, int64_t, int64_t, double);
typedef void (*ck_transpose_f32_t)(const float *, int64_t, float *, int64_t, int64_t, int64_t);
typedef void (*ck_transpose_f64_t)(const double *, int64_t, double *, int64_t, int64_t,
                                   int64_t);
typedef int (*ck_nonfinite_f32_t)(const float *, int64_t);
typedef int (*ck_nonfinite_f64_t)(const double *, int64_t);
typedef void (*ck_col2ims_f32_t)(const float *, int64_t, int64_t, int64_t, int64_t, int64_t,
                                 int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float *,
                                 int64_t, int64_t, float *);
typedef void (*ck_col2ims_f64_t)(const double *, int64_t, int64_t, int64_t, int64_t, int64_t,
                                 int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, double *,
                                 int64_t, int64_t, double *);
typedef void (*ck_col2im_f32_t)(const float *, int64_t, int64_t, int64_t, int64_t, int64_t,
                                int64_t, int64_t, int64_t, int64_t, int64_t, float *, int64_t,
                                int64_t);
typedef void (*ck_col2im_f64_t)(const double *, int64_t, int64_t, int64_t, int64_t, int64_t,
                                int64_t, int64_t, int64_t, int64_t, int64_t, double *, int64_t,
                                int64_t);

typedef void (*ck_fwdm_f32_t)(const float *, const float *, const int64_t *, const int64_t *,
                              int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float *,
                              int64_t, int64_t, const float *);
typedef void (*ck_fwdm_f64_t)(const double *, const double *, const int64_t *,
                              const int64_t *, int64_t, int64_t, int64_t, int64_t, int64_t,
                              int64_t, double *, int64_t, int64_t, const double *);

typedef void (*ck_gir_f32_t)(const float *, int64_t, const float *, int64_t, int64_t, int64_t,
                             int64_t, float *);
typedef void (*ck_gir_f64_t)(const double *, int64_t, const double *, int64_t, int64_t,
                             int64_t, int64_t, double *);

typedef struct {
    const char *isa;
    ck_fwd_f32_t fwd_f32, fwd1_f32;
    ck_fwdk_f32_t fwdk_f32;
    ck_fwd_f64_t fwd_f64, fwd1_f64;
    ck_fwdk_f64_t fwdk_f64;
    int kvec_f32, kvec_f64; /* output channels per block of fwdk_* */
    ck_fwdk_f32_t fwdkw_f32; /* the same with wider blocks (or fwdk_* again) */
    ck_fwdk_f64_t fwdkw_f64;
    int kvecw_f32, kvecw_f64;
    ck_gw_f32_t gw_f32;
    ck_gw_f64_t gw_f64;
    ck_gw_f32_t gw1_f32; /* one output channel: depthwise */
    ck_gw_f64_t gw1_f64;
    ck_gwk_f32_t gwk_f32;
    ck_gwk_f64_t gwk_f64;
    int gwk_f32_block, gwk_f64_block, gwk_cols; /* channels and columns per block */
    ck_gwr_f32_t gwr_f32; /* depthwise by rows, column stride 1 */
    ck_gwr_f64_t gwr_f64;
    ck_nonfinite_f32_t nonfinite_f32;
    ck_nonfinite_f64_t nonfinite_f64;
    ck_col2im_f32_t col2im_f32; /* column stride 1 */
    ck_col2im_f64_t col2im_f64;
    /* CK_KB channels for reductions of under CK_SHORT (c, t) terms, where the
     * loop around the register block costs as much as the block. The sums
     * are fwd_*'s, term for term. */
    ck_fwd_f32_t fwds_f32;
    ck_fwd_f64_t fwds_f64;
    /* one input channel per group, read and written in place */
    ck_fwdw_f32_t fwdw_f32;
    ck_fwdw_f64_t fwdw_f64;
    /* fwds_* take sums of fewer (c, t) terms than fwd_short, and one-tap
     * sums where fwds_one_tap; bytes of grid positions per register block
     * of fwd_* and fwds_* (see ck_fwd_kind). */
    int fwd_short, fwds_one_tap, fwd_block_bytes, fwds_block_bytes;
    ck_col2ims_f32_t col2ims_f32; /* column stride above 1 */
    ck_col2ims_f64_t col2ims_f64;
    /* gwk_* with wider blocks of channels and fewer columns (or gwk_* again):
     * the same sums, for short output rows (see
     * functional._grad_weight_channel_vector). */
    ck_gwk_f32_t gwkw_f32;
    ck_gwk_f64_t gwkw_f64;
    int gwkw_f32_block, gwkw_f64_block, gwkw_cols;
    /* fwds_*'s sums in a block of more positions (or fwds_* again), and the
     * bytes of positions it holds (see ck_fwd_kind). */
    ck_fwd_f32_t fwdq_f32;
    ck_fwd_f64_t fwdq_f64;
    int fwdq_block_bytes;
    ck_transpose_f32_t transpose_f32; /* AVX-512 takes the AVX2 one */
    ck_transpose_f64_t transpose_f64;
    /* positions per register block of fwdk_* and fwdkw_* (QB), and per
     * register block of their short blocks (QT) */
    int kvec_qb, kvec_qt, kvecw_qb, kvecw_qt;
    /* grad_input by rows for 3 and 5 kernel columns (or NULL), and the
     * widest grad_output row each takes */
    ck_gir_f32_t gir3_f32, gir5_f32;
    ck_gir_f64_t gir3_f64, gir5_f64;
    int gir3_q, gir5_q;
    int vector_bytes; /* of the variant's vectors */
    /* the forward on unpacked input for stride-1 "same" convolutions (or NULL) */
    ck_fwdm_f32_t fwdm_f32;
    ck_fwdm_f64_t fwdm_f64;
} ck_kernels_t;

static ck_kernels_t ck_kernels = {
    "baseline", ck_fwd_f32_base, ck_fwd1_f32_base, ck_fwdk_f32_base, ck_fwd_f64_base,
    ck_fwd1_f64_base, ck_fwdk_f64_base, 16, 8, ck_fwdk_f32_base, ck_fwdk_f64_base, 16, 8,
    ck_gw_f32_base, ck_gw_f64_base,
    ck_gw1_f32_base, ck_gw1_f64_base, ck_gwk_f32_base, ck_gwk_f64_base, 8, 4, 6,
    ck_gwr_f32_base, ck_gwr_f64_base,
    ck_nonfinite_f32_base, ck_nonfinite_f64_base, ck_col2im_f32_base, ck_col2im_f64_base,
    ck_fwd_f32_base, ck_fwd_f64_base, ck_fwdw_f32_base, ck_fwdw_f64_base, CK_SHORT, 0, 32, 32,
    ck_col2ims_f32_base, ck_col2ims_f64_base, ck_gwk_f32_base, ck_gwk_f64_base, 8, 4, 6,
    ck_fwd_f32_base, ck_fwd_f64_base, 32, ck_transpose_f32_base, ck_transpose_f64_base,
    3, 3, 3, 3, NULL, NULL, NULL, NULL, 0, 0, 16, NULL, NULL};

/* Pick the widest variant this CPU runs; CONVKIT_ISA=avx2|baseline caps it. */
static void ck_select_kernels(const char *cap)
{
#if CK_X86
    int allow512 = !(cap && (strcmp(cap, "avx2") == 0 || strcmp(cap, "baseline") == 0));
    int allow2 = !(cap && strcmp(cap, "baseline") == 0);
    __builtin_cpu_init();
    ck_kvec_chunk_bytes = CK_KVEC_CHUNK_BYTES;
    ck_grid_pass_bytes = CK_GRID_PASS_BYTES;
    if (allow512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma")) {
        ck_kernels_t k = {"avx512f", ck_fwd_f32_avx512, ck_fwd1_f32_avx512,
                          ck_fwdk_f32_avx512, ck_fwd_f64_avx512, ck_fwd1_f64_avx512,
                          ck_fwdk_f64_avx512, 32, 16, ck_fwdkw_f32_avx512,
                          ck_fwdkw_f64_avx512, 64, 32, ck_gw_f32_avx512, ck_gw_f64_avx512,
                          ck_gw1_f32_avx512, ck_gw1_f64_avx512, ck_gwk_f32_avx512,
                          ck_gwk_f64_avx512, 32, 16, 12, ck_gwr_f32_avx512, ck_gwr_f64_avx512,
                          ck_nonfinite_f32_avx512,
                          ck_nonfinite_f64_avx512, ck_col2im_f32_avx512,
                          ck_col2im_f64_avx512, ck_fwds_f32_avx512, ck_fwds_f64_avx512,
                          ck_fwdw_f32_avx512, ck_fwdw_f64_avx512, CK_SHORT_AVX512,
                          1, 192, 128, ck_col2ims_f32_avx512, ck_col2ims_f64_avx512,
                          ck_gwkw_f32_avx512, ck_gwkw_f64_avx512, 64, 32, 6,
                          ck_fwdq_f32_avx512, ck_fwdq_f64_avx512, 256,
                          ck_transpose_f32_avx2, ck_transpose_f64_avx2, 8, 4, 6, 4,
                          ck_gir3_f32_avx512, ck_gir5_f32_avx512, ck_gir3_f64_avx512,
                          ck_gir5_f64_avx512, CK_GIR3_QM_AVX512, CK_GIR5_QM_AVX512, 64,
                          ck_fwdm_f32_avx512, ck_fwdm_f64_avx512};
        ck_kernels = k;
        /* AMD family 19h with AVX-512 is Zen 4 (Zen 3 has none, Zen 5 is 1Ah):
         * its kernels run fastest summing every input channel in one pass. */
        if (__builtin_cpu_is("amdfam19h")) {
            ck_kvec_chunk_bytes = CK_ONE_PASS;
            ck_grid_pass_bytes = CK_ONE_PASS;
        }
    } else if (allow2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        ck_kernels_t k = {"avx2", ck_fwd_f32_avx2, ck_fwd1_f32_avx2, ck_fwdk_f32_avx2,
                          ck_fwd_f64_avx2, ck_fwd1_f64_avx2, ck_fwdk_f64_avx2, 16, 8,
                          ck_fwdk_f32_avx2, ck_fwdk_f64_avx2, 16, 8,
                          ck_gw_f32_avx2, ck_gw_f64_avx2, ck_gw1_f32_avx2,
                          ck_gw1_f64_avx2, ck_gwk_f32_avx2,
                          ck_gwk_f64_avx2, 16, 8, 6, ck_gwr_f32_avx2, ck_gwr_f64_avx2,
                          ck_nonfinite_f32_avx2,
                          ck_nonfinite_f64_avx2, ck_col2im_f32_avx2,
                          ck_col2im_f64_avx2, ck_fwds_f32_avx2, ck_fwds_f64_avx2,
                          ck_fwdw_f32_avx2, ck_fwdw_f64_avx2, CK_SHORT, 0, 96, 32,
                          ck_col2ims_f32_avx2, ck_col2ims_f64_avx2, ck_gwk_f32_avx2,
                          ck_gwk_f64_avx2, 16, 8, 6, ck_fwds_f32_avx2, ck_fwds_f64_avx2, 32,
                          ck_transpose_f32_avx2, ck_transpose_f64_avx2, 6, 4, 6, 4,
                          ck_gir3_f32_avx2, ck_gir5_f32_avx2, ck_gir3_f64_avx2, NULL,
                          CK_GIR3_QM_AVX2, CK_GIR5_QM_AVX2, 32, NULL, NULL};
        ck_kernels = k;
        ck_grid_pass_bytes = CK_GRID_PASS_BYTES_AVX2;
    }
#else
    (void)cap;
#endif
}

/* Which grid forward sums `terms` (c, t) terms per output, `taps` taps, over
 * `grid_len` positions: 0 for fwd_*, 1 for fwds_*, 2 for fwdq_*. fwds_* for
 * short sums (fwd_short), one-tap sums where fwds_one_tap (AVX-512: 8 x 2
 * vectors ran 1x1 convolutions and the scatter product 4-7% faster than
 * 8 x 3), and where fwd_*'s wider block of positions would compute over
 * 1/8 more positions in vain than fwds_*'s (small grids: 8x8 is 4 AVX-512
 * float32 vectors, 6 in blocks of 3). Of those, fwdq_* for short sums and
 * wherever its block computes no more positions than fwds_*'s. The sums
 * are the same, term for term. */
static inline int ck_fwd_kind(int64_t terms, int64_t taps, int64_t grid_len, int64_t itemsize)
{
    int64_t wide = ck_kernels.fwd_block_bytes / itemsize;
    int64_t narrow = ck_kernels.fwds_block_bytes / itemsize;
    int64_t quad = ck_kernels.fwdq_block_bytes / itemsize;
    int64_t wide_len = (grid_len + wide - 1) / wide * wide;
    int64_t narrow_len = (grid_len + narrow - 1) / narrow * narrow;
    int64_t quad_len = (grid_len + quad - 1) / quad * quad;
    int short_sum = terms < ck_kernels.fwd_short;
    if (!(short_sum || (taps == 1 && ck_kernels.fwds_one_tap) || 8 * wide_len > 9 * narrow_len))
        return 0;
    return short_sum || quad_len <= narrow_len ? 2 : 1;
}

/* The grid forward kernel of ck_fwd_kind's answer for these sizes. */
static inline ck_fwd_f32_t ck_fwd_grid_f32(int64_t terms, int64_t taps, int64_t grid_len)
{
    int kind = ck_fwd_kind(terms, taps, grid_len, sizeof(float));
    return kind == 2 ? ck_kernels.fwdq_f32 : kind == 1 ? ck_kernels.fwds_f32 : ck_kernels.fwd_f32;
}
static inline ck_fwd_f64_t ck_fwd_grid_f64(int64_t terms, int64_t taps, int64_t grid_len)
{
    int kind = ck_fwd_kind(terms, taps, grid_len, sizeof(double));
    return kind == 2 ? ck_kernels.fwdq_f64 : kind == 1 ? ck_kernels.fwds_f64 : ck_kernels.fwd_f64;
}

#endif
