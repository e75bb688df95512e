/* dsearch's CPU training kernels: fp32, channels_last (NHWC) tensors, OpenMP threads.
 *
 * Built on first use by dsearch/training/native.py with the machine's C compiler (-O3 -march=native -fopenmp);
 * when no compiler is there, dsearch trains with PyTorch's own kernels instead.
 *
 * - batch norm (training mode, batch statistics) with an optional ReLU6, forward and backward: one
 *   pass for the statistics (shifted sums, float within blocks of pixels, double across them) and
 *   one for the output, where PyTorch runs batch norm and the clamp as separate passes over memory;
 * - depthwise convolution (any square kernel, stride, zero padding), forward, input gradient and
 *   weight gradient, vectorised over the contiguous channel dimension. Weights are K x K x C.
 * - SCC's sliding-channel pointwise map, forward and both gradients, doing only its N x K multiply-adds
 *   (channel-major inside; see the section's comment).
 *
 * Threads split pixels (or image rows); each thread's partial sums are added in thread order, so a
 * result depends only on the inputs and the thread count.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

typedef int64_t i64;

/* Eight channels at a time: a multiple of 8 is the spaces' usual width, and an AVX2 register. GCC's vector
 * extensions compile to whatever -march=native offers. Accumulators stay in registers across the loops over
 * pixels or taps, so memory sees each input once per pass. */
#define VL 8
typedef float vf __attribute__((vector_size(4 * VL)));
typedef int32_t vi __attribute__((vector_size(4 * VL)));
typedef double vd __attribute__((vector_size(8 * VL)));
#define BLOCK 32 /* pixels per block of the statistics passes: the block's rows stay in L1 */

static inline vf ld(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vd ldd(const double *p) { vd v; memcpy(&v, p, sizeof v); return v; }
static inline void std_(double *p, vd v) { memcpy(p, &v, sizeof v); }
static inline i64 min64(i64 a, i64 b) { return a < b ? a : b; }
static inline i64 max64(i64 a, i64 b) { return a > b ? a : b; }

static void block_range(i64 total, int part, int parts, i64 *begin, i64 *end) {
    i64 base = total / parts, extra = total % parts;
    *begin = part * base + (part < extra ? part : extra);
    *end = *begin + base + (part < extra ? 1 : 0);
}

/* Per-channel sums over pixels of x - k and (x - k)^2 (k: one pixel's values, which keeps the variance free of
 * cancellation), blocks of BLOCK pixels summed in float, blocks in double. Each thread sums a slice of pixels. */
static void shifted_sums(const float *x, const float *k, i64 P, i64 C, double *s1, double *s2) {
    int threads = omp_get_max_threads();
    double *part = calloc((size_t)threads * 2 * C, sizeof(double));
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num();
        double *p1 = part + (size_t)t * 2 * C, *p2 = p1 + C;
        i64 begin, end;
        block_range(P, t, omp_get_num_threads(), &begin, &end);
        for (i64 b0 = begin; b0 < end; b0 += BLOCK) {
            i64 b1 = min64(b0 + BLOCK, end), c = 0;
            for (; c + VL <= C; c += VL) {
                vf kk = ld(k + c), a1 = {0}, a2 = {0};
                for (i64 p = b0; p < b1; p++) {
                    vf v = ld(x + p * C + c) - kk;
                    a1 += v;
                    a2 += v * v;
                }
                std_(p1 + c, ldd(p1 + c) + __builtin_convertvector(a1, vd));
                std_(p2 + c, ldd(p2 + c) + __builtin_convertvector(a2, vd));
            }
            for (; c < C; c++) {
                float a1 = 0, a2 = 0;
                for (i64 p = b0; p < b1; p++) {
                    float v = x[p * C + c] - k[c];
                    a1 += v;
                    a2 += v * v;
                }
                p1[c] += a1;
                p2[c] += a2;
            }
        }
    }
    for (i64 c = 0; c < C; c++) { s1[c] = 0; s2[c] = 0; }
    for (int t = 0; t < threads; t++)
        for (i64 c = 0; c < C; c++) {
            s1[c] += part[(size_t)t * 2 * C + c];
            s2[c] += part[(size_t)t * 2 * C + C + c];
        }
    free(part);
}

static inline float relu6(float v) { return v < 0.f ? 0.f : (v > 6.f ? 6.f : v); }

/* Pixels per row of the elementwise passes: R pixels of C channels make a whole number of 16-float vectors when C
 * is a multiple of 4, so that the loop over a row (R x C floats, per-channel values repeated R times) runs in whole
 * vectors; with C = 24, one pixel at a time would leave an 8-float tail per pixel. */
static i64 pixels_per_row(i64 C) { return C % 16 == 0 ? 1 : C % 8 == 0 ? 2 : C % 4 == 0 ? 4 : 1; }

/* v[C .. R * C) = R - 1 more copies of v[0 .. C). */
static void repeat_row(float *v, i64 C, i64 R) {
    for (i64 r = 1; r < R; r++) memcpy(v + r * C, v, sizeof(float) * C);
}

/* The per-channel affine map x * scale + shift of batch norm; forward and backward compute it alike, so the
 * ReLU6 mask the backward recomputes is the forward's. */
static void bn_affine(const float *gamma, const float *beta, const float *mean, const float *invstd, i64 C,
                      float *scale, float *shift) {
    for (i64 c = 0; c < C; c++) {
        scale[c] = gamma[c] * invstd[c];
        shift[c] = beta[c] - mean[c] * scale[c];
    }
}

/* y = gamma (x - mean) / sqrt(var + eps) + beta over batch statistics, then ReLU6 when act.
 * Writes mean and invstd (per channel) to stats (2 x C) for the backward pass, and updates the running
 * statistics as BatchNorm2d does: num_batches_tracked += 1, then with factor = momentum (or 1 / num_batches_tracked
 * when momentum < 0, PyTorch's momentum=None) running = (1 - factor) running + factor batch, where the batch
 * variance is unbiased (P / (P - 1)). */
void bn_act_forward(const float *x, float *y, const float *gamma, const float *beta, i64 P, i64 C, double eps,
                    int act, float *stats, float *running_mean, float *running_var, int64_t *num_batches_tracked,
                    double momentum) {
    double *s1 = malloc(sizeof(double) * 2 * C), *s2 = s1 + C;
    i64 R = pixels_per_row(C), L = R * C, rows = P / R;
    float *scale = malloc(sizeof(float) * 2 * L), *shift = scale + L;
    float *mean_out = stats, *invstd_out = stats + C;
    shifted_sums(x, x, P, C, s1, s2);
    *num_batches_tracked += 1;
    double factor = momentum < 0 ? 1.0 / (double)*num_batches_tracked : momentum;
    double unbias = P > 1 ? (double)P / (double)(P - 1) : 1.0;
    for (i64 c = 0; c < C; c++) {
        double d = s1[c] / P, mean = x[c] + d, var = s2[c] / P - d * d;
        if (var < 0) var = 0;
        double invstd = 1.0 / sqrt(var + eps);
        mean_out[c] = (float)mean;
        invstd_out[c] = (float)invstd;
        running_mean[c] = (float)((1 - factor) * running_mean[c] + factor * mean);
        running_var[c] = (float)((1 - factor) * running_var[c] + factor * var * unbias);
    }
    bn_affine(gamma, beta, mean_out, invstd_out, C, scale, shift);
    repeat_row(scale, C, R);
    repeat_row(shift, C, R);
#pragma omp parallel for schedule(static)
    for (i64 r = 0; r <= rows; r++) {
        const float *xp = x + r * L;
        float *yp = y + r * L;
        i64 n = r < rows ? L : (P - rows * R) * C;  /* the last row holds the pixels left over */
        if (act)
            for (i64 c = 0; c < n; c++) yp[c] = relu6(xp[c] * scale[c] + shift[c]);
        else
            for (i64 c = 0; c < n; c++) yp[c] = xp[c] * scale[c] + shift[c];
    }
    free(s1);
    free(scale);
}

/* Gradients of bn_act_forward: dx (P x C), dgamma and dbeta (C). The ReLU6 mask is recomputed from x,
 * so nothing but the input and the statistics is kept between the passes. */
void bn_act_backward(const float *x, const float *g, float *dx, const float *gamma, const float *beta,
                     const float *mean, const float *invstd, i64 P, i64 C, int act, float *dgamma, float *dbeta) {
    int threads = omp_get_max_threads();
    i64 R = pixels_per_row(C), L = R * C, rows = P / R;
    float *scale = malloc(sizeof(float) * 7 * L), *shift = scale + L, *k1 = shift + L, *k2 = k1 + L, *k3 = k2 + L;
    float *mu = k3 + L, *is = mu + L;  /* mean and invstd, repeated like the others */
    double *part = calloc((size_t)threads * 2 * C, sizeof(double));
    bn_affine(gamma, beta, mean, invstd, C, scale, shift);
    const float lo = act ? 0.f : -INFINITY, hi = act ? 6.f : INFINITY;  /* ReLU6 passes gradient inside (0, 6) */
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num();
        double *sg = part + (size_t)t * 2 * C, *sgx = sg + C;
        i64 begin, end;
        block_range(P, t, omp_get_num_threads(), &begin, &end);
        for (i64 b0 = begin; b0 < end; b0 += BLOCK) {
            i64 b1 = min64(b0 + BLOCK, end), c = 0;
            for (; c + VL <= C; c += VL) {
                vf sc = ld(scale + c), sh = ld(shift + c), mu = ld(mean + c), is = ld(invstd + c);
                vf a1 = {0}, a2 = {0};
                for (i64 p = b0; p < b1; p++) {
                    vf xv = ld(x + p * C + c), pre = xv * sc + sh;
                    vf gv = (vf)((vi)ld(g + p * C + c) & ((pre > lo) & (pre < hi)));
                    a1 += gv;
                    a2 += gv * ((xv - mu) * is);
                }
                std_(sg + c, ldd(sg + c) + __builtin_convertvector(a1, vd));
                std_(sgx + c, ldd(sgx + c) + __builtin_convertvector(a2, vd));
            }
            for (; c < C; c++) {
                float a1 = 0, a2 = 0;
                for (i64 p = b0; p < b1; p++) {
                    float xv = x[p * C + c], pre = xv * scale[c] + shift[c];
                    float gv = ((pre > lo) & (pre < hi)) ? g[p * C + c] : 0.f;
                    a1 += gv;
                    a2 += gv * ((xv - mean[c]) * invstd[c]);
                }
                sg[c] += a1;
                sgx[c] += a2;
            }
        }
    }
    for (i64 c = 0; c < C; c++) {
        double sg = 0, sgx = 0;
        for (int t = 0; t < threads; t++) {
            sg += part[(size_t)t * 2 * C + c];
            sgx += part[(size_t)t * 2 * C + C + c];
        }
        dbeta[c] = (float)sg;
        dgamma[c] = (float)sgx;
        k1[c] = scale[c];
        k2[c] = (float)(sg / P);
        k3[c] = (float)(sgx / P);
        mu[c] = mean[c];
        is[c] = invstd[c];
    }
    for (float *v = scale; v < scale + 7 * L; v += L) repeat_row(v, C, R);
#pragma omp parallel for schedule(static)
    for (i64 r = 0; r <= rows; r++) {
        const float *xp = x + r * L, *gp = g + r * L;
        float *dp = dx + r * L;
        i64 n = r < rows ? L : (P - rows * R) * C;  /* the last row holds the pixels left over */
        for (i64 c = 0; c < n; c++) {
            float pre = xp[c] * scale[c] + shift[c];
            float gv = gp[c] * (float)((pre > lo) & (pre < hi));
            float xh = (xp[c] - mu[c]) * is[c];
            dp[c] = k1[c] * (gv - k2[c] - xh * k3[c]);
        }
    }
    free(scale);
    free(part);
}

/* Taps a in [*lo, *hi) of a k-tap window at position o * s - pad that land inside [0, size). */
static inline void live_range(i64 o, i64 s, i64 pad, i64 K, i64 size, i64 *lo, i64 *hi) {
    i64 first = o * s - pad;
    *lo = max64(0, -first);
    *hi = min64(K, size - first);
}

/* y[n, i, j, c] = sum over taps (a, b) of w[a, b, c] x[n, i s + a - pad, j s + b - pad, c] (zero outside). */
void dw_forward(const float *x, const float *w, float *y, i64 N, i64 H, i64 W, i64 C, i64 K, i64 s, i64 pad,
                i64 Ho, i64 Wo) {
#pragma omp parallel for schedule(static)
    for (i64 row = 0; row < N * Ho; row++) {
        i64 n = row / Ho, i = row % Ho, a0, a1;
        live_range(i, s, pad, K, H, &a0, &a1);
        for (i64 j = 0; j < Wo; j++) {
            float *out = y + ((n * Ho + i) * Wo + j) * C;
            i64 b0, b1, c = 0;
            live_range(j, s, pad, K, W, &b0, &b1);
            const float *xo = x + ((n * H + i * s - pad) * W + j * s - pad) * C;  /* tap (0, 0); may lie outside */
            for (; c + VL <= C; c += VL) {
                vf acc = {0};
                for (i64 a = a0; a < a1; a++)
                    for (i64 b = b0; b < b1; b++)
                        acc += ld(w + (a * K + b) * C + c) * ld(xo + (a * W + b) * C + c);
                st(out + c, acc);
            }
            for (; c < C; c++) {
                float acc = 0;
                for (i64 a = a0; a < a1; a++)
                    for (i64 b = b0; b < b1; b++) acc += w[(a * K + b) * C + c] * xo[(a * W + b) * C + c];
                out[c] = acc;
            }
        }
    }
}

/* Outputs o (with tap t = q + pad - o s in [0, K)) that read input position q: o from *lo to *hi - 1, taps
 * t0 - (o - lo) s. Returns the tap of output *lo. */
static inline i64 readers(i64 q, i64 s, i64 pad, i64 K, i64 out, i64 *lo, i64 *hi) {
    i64 top = q + pad;  /* o s + t = top */
    i64 o_hi = min64(out - 1, top / s);  /* t >= 0 */
    i64 o_lo = top - (K - 1) <= 0 ? 0 : (top - (K - 1) + s - 1) / s;  /* t <= K - 1 */
    *lo = o_lo;
    *hi = o_hi + 1;
    return top - o_lo * s;
}

/* dx[n, q, r, c] = sum of g[n, i, j, c] w[a, b, c] over q = i s + a - pad, r = j s + b - pad. */
void dw_backward_input(const float *g, const float *w, float *dx, i64 N, i64 H, i64 W, i64 C, i64 K, i64 s,
                       i64 pad, i64 Ho, i64 Wo) {
#pragma omp parallel for schedule(static)
    for (i64 row = 0; row < N * H; row++) {
        i64 n = row / H, q = row % H, i0, i1;
        i64 ta = readers(q, s, pad, K, Ho, &i0, &i1);
        for (i64 r = 0; r < W; r++) {
            float *out = dx + ((n * H + q) * W + r) * C;
            i64 j0, j1, c = 0;
            i64 tb = readers(r, s, pad, K, Wo, &j0, &j1);
            for (; c + VL <= C; c += VL) {
                vf acc = {0};
                for (i64 i = i0, a = ta; i < i1; i++, a -= s)
                    for (i64 j = j0, b = tb; j < j1; j++, b -= s)
                        acc += ld(w + (a * K + b) * C + c) * ld(g + ((n * Ho + i) * Wo + j) * C + c);
                st(out + c, acc);
            }
            for (; c < C; c++) {
                float acc = 0;
                for (i64 i = i0, a = ta; i < i1; i++, a -= s)
                    for (i64 j = j0, b = tb; j < j1; j++, b -= s)
                        acc += w[(a * K + b) * C + c] * g[((n * Ho + i) * Wo + j) * C + c];
                out[c] = acc;
            }
        }
    }
}

/* gw[a, b, c] = sum over n, i, j of g[n, i, j, c] x[n, i s + a - pad, j s + b - pad, c]. Each thread sums a
 * slice of output rows into its own K x K x C partial; the partials are added in thread order. */
void dw_backward_weight(const float *g, const float *x, float *gw, i64 N, i64 H, i64 W, i64 C, i64 K, i64 s,
                        i64 pad, i64 Ho, i64 Wo) {
    int threads = omp_get_max_threads();
    i64 taps = K * K * C;
    float *part = calloc((size_t)threads * taps, sizeof(float));
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num();
        float *acc = part + (size_t)t * taps;
        i64 begin, end;
        block_range(N * Ho, t, omp_get_num_threads(), &begin, &end);
        for (i64 row = begin; row < end; row++) {
            i64 n = row / Ho, i = row % Ho, a0, a1;
            live_range(i, s, pad, K, H, &a0, &a1);
            const float *grow = g + (n * Ho + i) * Wo * C;
            for (i64 a = a0; a < a1; a++) {
                const float *xrow = x + (n * H + i * s + a - pad) * W * C;
                for (i64 b = 0; b < K; b++) {
                    /* outputs j whose tap b lands inside the row: 0 <= j s + b - pad < W */
                    i64 j0 = b >= pad ? 0 : (pad - b + s - 1) / s;
                    i64 j1 = min64(Wo, W - 1 + pad - b < 0 ? 0 : (W - 1 + pad - b) / s + 1);
                    float *ap = acc + (a * K + b) * C;
                    i64 c = 0;
                    for (; c + VL <= C; c += VL) {
                        vf sum = {0};
                        for (i64 j = j0; j < j1; j++)
                            sum += ld(grow + j * C + c) * ld(xrow + (j * s + b - pad) * C + c);
                        st(ap + c, ld(ap + c) + sum);
                    }
                    for (; c < C; c++) {
                        float sum = 0;
                        for (i64 j = j0; j < j1; j++) sum += grow[j * C + c] * xrow[(j * s + b - pad) * C + c];
                        ap[c] += sum;
                    }
                }
            }
        }
    }
    memset(gw, 0, sizeof(float) * taps);
    for (int t = 0; t < threads; t++)
        for (i64 k = 0; k < taps; k++) gw[k] += part[(size_t)t * taps + k];
    free(part);
}

/* ---- SCC's sliding-channel pointwise map: y[p, o] = sum over j < K of w[o, j] x[p, (start[o] + j) mod M] ----
 * Only the N x K real multiply-accumulates run (a dense masked product does N x M). Threads take TILE pixels at a
 * time and keep the tile's working set in their own cache:
 * - forward and input gradient run channel-major: the tile's (pixel, channel) rows are transposed, 16 x 16 at a
 *   time in registers, into (channel, pixel) rows, so that one vector holds SV pixels of one channel. `order`
 *   lists the outputs sorted by window start; outputs sharing a start are taken up to RUN at a time, so each
 *   input row loaded feeds up to RUN outputs' accumulators. Results are transposed back into NHWC rows.
 * - the weight gradient reads the NHWC rows themselves, vectorised over a window's taps (K contiguous channels;
 *   each tile row is copied with its first channels appended, so that a window that wraps round reads on). A
 *   run's RUN x TAPS tap vectors stay in registers across the tile's pixels. */
#define SV 16   /* floats per vector: one AVX-512 register (two AVX2 ones) */
#define RUN 4   /* outputs sharing a window start, computed together */
#define CHUNK 4 /* vectors of pixels per tile */
#define TILE (CHUNK * SV)
#ifdef __AVX512F__
#define TAPS 4  /* tap vectors per weight-gradient pass; RUN x TAPS accumulators fit AVX-512's 32 registers */
#else
#define TAPS 2
#endif
typedef float v16 __attribute__((vector_size(4 * SV)));
typedef int32_t v16i __attribute__((vector_size(4 * SV)));
static inline v16 ld16(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void st16(float *p, v16 v) { memcpy(p, &v, sizeof v); }

/* r[i][e] becomes r[e][i]: four rounds, each swapping the off-diagonal b x b blocks of every 2b x 2b block. */
static inline __attribute__((always_inline)) void transpose16(v16 r[SV]) {
    const v16i lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
               hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
               lo4 = {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
               hi4 = {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
               lo2 = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
               hi2 = {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
               lo1 = {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
               hi1 = {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31};
#define SWAP_BLOCKS(b, lo, hi)                                   \
    for (int i = 0; i < SV; i++)                                 \
        if (!(i & (b))) {                                        \
            v16 a = r[i], c = r[i + (b)];                        \
            r[i] = __builtin_shuffle(a, c, lo);                  \
            r[i + (b)] = __builtin_shuffle(a, c, hi);            \
        }
    SWAP_BLOCKS(8, lo8, hi8)
    SWAP_BLOCKS(4, lo4, hi4)
    SWAP_BLOCKS(2, lo2, hi2)
    SWAP_BLOCKS(1, lo1, hi1)
#undef SWAP_BLOCKS
}

/* dst[c * TILE + q] = src[q * C + c] for the tile's np NHWC rows of C channels; columns from np up to the next
 * multiple of SV are zero. */
static void tile_to_channel_major(const float *src, i64 C, i64 np, float *dst) {
    i64 q0 = 0;
    for (; q0 + SV <= np; q0 += SV) {
        i64 c0 = 0;
        for (; c0 + SV <= C; c0 += SV) {
            v16 r[SV];
            for (int i = 0; i < SV; i++) r[i] = ld16(src + (q0 + i) * C + c0);
            transpose16(r);
            for (int i = 0; i < SV; i++) st16(dst + (c0 + i) * TILE + q0, r[i]);
        }
        for (; c0 < C; c0++)
            for (int i = 0; i < SV; i++) dst[c0 * TILE + q0 + i] = src[(q0 + i) * C + c0];
    }
    if (q0 < np)
        for (i64 c = 0; c < C; c++)
            for (i64 i = 0; i < SV; i++) dst[c * TILE + q0 + i] = q0 + i < np ? src[(q0 + i) * C + c] : 0.f;
}

/* dst[q * C + c] = src[c * TILE + q] for q < np: the inverse of tile_to_channel_major. */
static void tile_from_channel_major(const float *src, i64 C, i64 np, float *dst) {
    i64 q0 = 0;
    for (; q0 + SV <= np; q0 += SV) {
        i64 c0 = 0;
        for (; c0 + SV <= C; c0 += SV) {
            v16 r[SV];
            for (int i = 0; i < SV; i++) r[i] = ld16(src + (c0 + i) * TILE + q0);
            transpose16(r);
            for (int i = 0; i < SV; i++) st16(dst + (q0 + i) * C + c0, r[i]);
        }
        for (; c0 < C; c0++)
            for (int i = 0; i < SV; i++) dst[(q0 + i) * C + c0] = src[c0 * TILE + q0 + i];
    }
    for (; q0 < np; q0++)
        for (i64 c = 0; c < C; c++) dst[q0 * C + c] = src[c * TILE + q0];
}

/* The next run of outputs in `order` starting at position i: up to RUN outputs that share a window start. */
static i64 run_length(const i64 *starts, const i64 *order, i64 i, i64 N) {
    i64 r = 1;
    while (r < RUN && i + r < N && starts[order[i + r]] == starts[order[i]]) r++;
    return r;
}

static void *aligned_buffer(i64 floats) {
    size_t bytes = ((size_t)floats * sizeof(float) + 63) / 64 * 64;
    return aligned_alloc(64, bytes ? bytes : 64);
}

/* Calls f(..., nr, nv) with nr and nv as constants for full tiles, so that the accumulators stay in registers. */
#define WITH_CONSTANT_RUN(f, nr, nv, ...)                                      \
    do {                                                                       \
        if ((nv) != CHUNK) f(__VA_ARGS__, nr, nv);                             \
        else if ((nr) == 4) f(__VA_ARGS__, 4, CHUNK);                          \
        else if ((nr) == 3) f(__VA_ARGS__, 3, CHUNK);                          \
        else if ((nr) == 2) f(__VA_ARGS__, 2, CHUNK);                          \
        else f(__VA_ARGS__, 1, CHUNK);                                         \
    } while (0)

/* One run of nr outputs (sharing window start s) over a tile's first nv pixel vectors: yt rows of the outputs. */
static inline __attribute__((always_inline)) void scc_forward_run(
    const float *xt, const float *w, const i64 *outs, float *yt, i64 M, i64 K, i64 s, i64 nr, i64 nv) {
    v16 acc[RUN][CHUNK];
    for (i64 r = 0; r < nr; r++)
        for (i64 v = 0; v < nv; v++) acc[r][v] = (v16){0};
    for (i64 j = 0; j < K; j++) {
        i64 c = s + j < M ? s + j : s + j - M;
        const float *row = xt + c * TILE;
        v16 xv[CHUNK];
        for (i64 v = 0; v < nv; v++) xv[v] = ld16(row + v * SV);
        for (i64 r = 0; r < nr; r++) {
            float wr = w[outs[r] * K + j];
            for (i64 v = 0; v < nv; v++) acc[r][v] += wr * xv[v];
        }
    }
    for (i64 r = 0; r < nr; r++)
        for (i64 v = 0; v < nv; v++) st16(yt + outs[r] * TILE + v * SV, acc[r][v]);
}

void scc_forward(const float *x, const float *w, const i64 *starts, const i64 *order, float *y, i64 P, i64 M,
                 i64 N, i64 K) {
    i64 tiles = (P + TILE - 1) / TILE;
#pragma omp parallel
    {
        float *xt = aligned_buffer(M * TILE), *yt = aligned_buffer(N * TILE);
#pragma omp for schedule(static)
        for (i64 t = 0; t < tiles; t++) {
            i64 p0 = t * TILE, np = min64(TILE, P - p0), nv = (np + SV - 1) / SV;
            tile_to_channel_major(x + p0 * M, M, np, xt);
            for (i64 i = 0; i < N;) {
                i64 nr = run_length(starts, order, i, N), s = starts[order[i]];
                WITH_CONSTANT_RUN(scc_forward_run, nr, nv, xt, w, order + i, yt, M, K, s);
                i += nr;
            }
            tile_from_channel_major(yt, N, np, y + p0 * N);
        }
        free(xt);
        free(yt);
    }
}

/* dxt rows of one run's window += the run's weights times its nr gradient rows (see scc_forward_run). */
static inline __attribute__((always_inline)) void scc_input_grad_run(
    const float *gt, const float *w, const i64 *outs, float *dxt, i64 M, i64 K, i64 s, i64 nr, i64 nv) {
    v16 gv[RUN][CHUNK];
    for (i64 r = 0; r < nr; r++)
        for (i64 v = 0; v < nv; v++) gv[r][v] = ld16(gt + outs[r] * TILE + v * SV);
    for (i64 j = 0; j < K; j++) {
        i64 c = s + j < M ? s + j : s + j - M;
        float *row = dxt + c * TILE;
        v16 d[CHUNK];
        for (i64 v = 0; v < nv; v++) d[v] = ld16(row + v * SV);
        for (i64 r = 0; r < nr; r++) {
            float wr = w[outs[r] * K + j];
            for (i64 v = 0; v < nv; v++) d[v] += wr * gv[r][v];
        }
        for (i64 v = 0; v < nv; v++) st16(row + v * SV, d[v]);
    }
}

/* part[o * KP + j] += sum over the tile's np pixels q of g[q, o] xe[q, s + j], for the run's nr outputs and the
 * nb tap vectors from b0 (xe: the tile's rows, MX floats apart, each with its first channels appended). */
static inline __attribute__((always_inline)) void scc_weight_grad_run(
    const float *g, const float *xe, const i64 *outs, float *part, i64 N, i64 MX, i64 KP, i64 s, i64 np, i64 b0,
    i64 nr, i64 nb) {
    v16 acc[RUN][TAPS];
    for (i64 r = 0; r < nr; r++)
        for (i64 b = 0; b < nb; b++) acc[r][b] = ld16(part + outs[r] * KP + (b0 + b) * SV);
    for (i64 q = 0; q < np; q++) {
        const float *xr = xe + q * MX + s + b0 * SV, *gr = g + q * N;
        v16 xv[TAPS];
        for (i64 b = 0; b < nb; b++) xv[b] = ld16(xr + b * SV);
        for (i64 r = 0; r < nr; r++) {
            float gs = gr[outs[r]];
            for (i64 b = 0; b < nb; b++) acc[r][b] += gs * xv[b];
        }
    }
    for (i64 r = 0; r < nr; r++)
        for (i64 b = 0; b < nb; b++) st16(part + outs[r] * KP + (b0 + b) * SV, acc[r][b]);
}

/* scc_weight_grad_run with nr and nb as constants (each pair its own inlined copy). */
static void scc_weight_grad_tile(const float *g, const float *xe, const i64 *outs, float *part, i64 N, i64 MX,
                                 i64 KP, i64 s, i64 np, i64 b0, i64 nr, i64 nb) {
#define WG(R, B) \
    if (nr == R && nb == B) { scc_weight_grad_run(g, xe, outs, part, N, MX, KP, s, np, b0, R, B); return; }
    WG(4, 1) WG(4, 2) WG(3, 1) WG(3, 2) WG(2, 1) WG(2, 2) WG(1, 1) WG(1, 2)
#if TAPS == 4
    WG(4, 3) WG(4, 4) WG(3, 3) WG(3, 4) WG(2, 3) WG(2, 4) WG(1, 3) WG(1, 4)
#endif
#undef WG
}

/* Gradients of scc_forward: dx (P x M; skipped when NULL) and dw (N x K; skipped when NULL). Each thread sums
 * its tiles' dw contributions in tile order; the threads' sums are added in thread order. */
void scc_backward(const float *g, const float *x, const float *w, const i64 *starts, const i64 *order, float *dx,
                  float *dw, i64 P, i64 M, i64 N, i64 K) {
    i64 tiles = (P + TILE - 1) / TILE, KP = (K + SV - 1) / SV * SV, MX = M + KP;
    int threads = omp_get_max_threads();
    float *parts = dw ? calloc((size_t)threads * N * KP, sizeof(float)) : NULL;
#pragma omp parallel num_threads(threads)
    {
        float *gt = dx ? aligned_buffer(N * TILE) : NULL, *dxt = dx ? aligned_buffer(M * TILE) : NULL;
        float *xe = dw ? aligned_buffer(TILE * MX) : NULL;
        float *part = dw ? parts + (size_t)omp_get_thread_num() * N * KP : NULL;
#pragma omp for schedule(static)
        for (i64 t = 0; t < tiles; t++) {
            i64 p0 = t * TILE, np = min64(TILE, P - p0), nv = (np + SV - 1) / SV;
            if (dx) {
                tile_to_channel_major(g + p0 * N, N, np, gt);
                memset(dxt, 0, sizeof(float) * M * TILE);
                for (i64 i = 0; i < N;) {
                    i64 nr = run_length(starts, order, i, N), s = starts[order[i]];
                    WITH_CONSTANT_RUN(scc_input_grad_run, nr, nv, gt, w, order + i, dxt, M, K, s);
                    i += nr;
                }
                tile_from_channel_major(dxt, M, np, dx + p0 * M);
            }
            if (dw) {
                for (i64 q = 0; q < np; q++) {
                    const float *src = x + (p0 + q) * M;
                    float *row = xe + q * MX;
                    memcpy(row, src, sizeof(float) * M);
                    if (KP <= M)
                        memcpy(row + M, src, sizeof(float) * KP);
                    else
                        for (i64 c = 0; c < KP; c++) row[M + c] = src[c % M];
                }
                for (i64 i = 0; i < N;) {
                    i64 nr = run_length(starts, order, i, N), s = starts[order[i]];
                    for (i64 b0 = 0; b0 < KP / SV; b0 += TAPS)
                        scc_weight_grad_tile(g + p0 * N, xe, order + i, part, N, MX, KP, s, np, b0, nr,
                                             min64(TAPS, KP / SV - b0));
                    i += nr;
                }
            }
        }
        free(gt);
        free(dxt);
        free(xe);
    }
    if (dw) {
        for (i64 o = 0; o < N; o++)
            for (i64 j = 0; j < K; j++) {
                float sum = 0;
                for (int t = 0; t < threads; t++) sum += parts[((size_t)t * N + o) * KP + j];
                dw[o * K + j] = sum;
            }
        free(parts);
    }
}
