/* dsearch's CPU training kernels: fp32, channels_last (NHWC) tensors, OpenMP threads.
 *
 * Built on first use by dsearch/native.py with the machine's C compiler (-O3 -march=native -fopenmp);
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
    float *scale = malloc(sizeof(float) * 2 * C), *shift = scale + C;
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
#pragma omp parallel for schedule(static)
    for (i64 p = 0; p < P; p++) {
        const float *xp = x + p * C;
        float *yp = y + p * C;
        if (act)
            for (i64 c = 0; c < C; c++) yp[c] = relu6(xp[c] * scale[c] + shift[c]);
        else
            for (i64 c = 0; c < C; c++) yp[c] = xp[c] * scale[c] + shift[c];
    }
    free(s1);
    free(scale);
}

/* Gradients of bn_act_forward: dx (P x C), dgamma and dbeta (C). The ReLU6 mask is recomputed from x,
 * so nothing but the input and the statistics is kept between the passes. */
void bn_act_backward(const float *x, const float *g, float *dx, const float *gamma, const float *beta,
                     const float *mean, const float *invstd, i64 P, i64 C, int act, float *dgamma, float *dbeta) {
    int threads = omp_get_max_threads();
    float *scale = malloc(sizeof(float) * 5 * C), *shift = scale + C, *k1 = shift + C, *k2 = k1 + C, *k3 = k2 + C;
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
    }
#pragma omp parallel for schedule(static)
    for (i64 p = 0; p < P; p++) {
        const float *xp = x + p * C, *gp = g + p * C;
        float *dp = dx + p * C;
        for (i64 c = 0; c < C; c++) {
            float pre = xp[c] * scale[c] + shift[c];
            float gv = gp[c] * (float)((pre > lo) & (pre < hi));
            float xh = (xp[c] - mean[c]) * invstd[c];
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
 * The work runs channel-major: the pixel x channel tensors are transposed into (channel, pixel) rows padded to a
 * multiple of SV pixels, so that one vector holds SV pixels of one channel. `order` lists the outputs sorted by
 * window start; outputs that share a start are taken up to RUN at a time, so each input row loaded feeds up to RUN
 * outputs' accumulators. Only the N x K real multiply-accumulates run (a dense masked product does N x M). */
#define SV 16  /* pixels per vector: one AVX-512 register (two AVX2 ones) */
#define RUN 4  /* outputs sharing a window start, computed together */
#define CHUNK 4 /* vectors of pixels per forward / input-gradient work item */
typedef float v16 __attribute__((vector_size(4 * SV)));
static inline v16 ld16(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void st16(float *p, v16 v) { memcpy(p, &v, sizeof v); }

/* dst[c * PP + p] = src[p * C + c] for p < P, 0 for P <= p < PP; in SV x SV blocks, so that both sides stay in
 * cache lines. */
static void to_channel_major(const float *src, float *dst, i64 P, i64 C, i64 PP) {
#pragma omp parallel for schedule(static)
    for (i64 p0 = 0; p0 < PP; p0 += SV) {
        i64 q1 = min64(SV, max64(0, P - p0));
        for (i64 c0 = 0; c0 < C; c0 += SV) {
            i64 c1 = min64(SV, C - c0);
            for (i64 cc = 0; cc < c1; cc++) {
                float *d = dst + (c0 + cc) * PP + p0;
                for (i64 q = 0; q < q1; q++) d[q] = src[(p0 + q) * C + c0 + cc];
                for (i64 q = q1; q < SV; q++) d[q] = 0.f;
            }
        }
    }
}

/* dst[p * C + c] = src[c * PP + p] for p < P, in SV x SV blocks. */
static void from_channel_major(const float *src, float *dst, i64 P, i64 C, i64 PP) {
#pragma omp parallel for schedule(static)
    for (i64 p0 = 0; p0 < P; p0 += SV) {
        i64 q1 = min64(SV, P - p0);
        for (i64 c0 = 0; c0 < C; c0 += SV) {
            i64 c1 = min64(SV, C - c0);
            for (i64 q = 0; q < q1; q++) {
                float *d = dst + (p0 + q) * C + c0;
                for (i64 cc = 0; cc < c1; cc++) d[cc] = src[(c0 + cc) * PP + p0 + q];
            }
        }
    }
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

/* One run of nr outputs (sharing window start s) over nv vectors of pixels from xt's column v0 * SV; inlined
 * with constant nr and nv for the common case so that the accumulators stay in registers. */
static inline __attribute__((always_inline)) void scc_forward_run(
    const float *xt, const float *w, const i64 *outs, float *yt, i64 PP, i64 M, i64 K, i64 s, i64 v0, i64 nr,
    i64 nv) {
    v16 acc[RUN][CHUNK];
    for (i64 r = 0; r < nr; r++)
        for (i64 v = 0; v < nv; v++) acc[r][v] = (v16){0};
    for (i64 j = 0; j < K; j++) {
        i64 c = s + j < M ? s + j : s + j - M;
        const float *row = xt + c * PP + v0 * SV;
        v16 xv[CHUNK];
        for (i64 v = 0; v < nv; v++) xv[v] = ld16(row + v * SV);
        for (i64 r = 0; r < nr; r++) {
            float wr = w[outs[r] * K + j];
            for (i64 v = 0; v < nv; v++) acc[r][v] += wr * xv[v];
        }
    }
    for (i64 r = 0; r < nr; r++)
        for (i64 v = 0; v < nv; v++) st16(yt + outs[r] * PP + (v0 + v) * SV, acc[r][v]);
}

void scc_forward(const float *x, const float *w, const i64 *starts, const i64 *order, float *y, i64 P, i64 M,
                 i64 N, i64 K) {
    i64 PP = (P + SV - 1) / SV * SV, nvec = PP / SV;
    float *xt = aligned_buffer(M * PP), *yt = aligned_buffer(N * PP);
    to_channel_major(x, xt, P, M, PP);
#pragma omp parallel for schedule(static)
    for (i64 v0 = 0; v0 < nvec; v0 += CHUNK) {
        i64 nv = min64(CHUNK, nvec - v0);
        for (i64 i = 0; i < N;) {
            i64 nr = run_length(starts, order, i, N), s = starts[order[i]];
            if (nr == RUN && nv == CHUNK)
                scc_forward_run(xt, w, order + i, yt, PP, M, K, s, v0, RUN, CHUNK);
            else
                scc_forward_run(xt, w, order + i, yt, PP, M, K, s, v0, nr, nv);
            i += nr;
        }
    }
    from_channel_major(yt, y, P, N, PP);
    free(xt);
    free(yt);
}

/* dxt rows of one run's window += the run's weights times its nr gradient rows (see scc_forward_run). */
static inline __attribute__((always_inline)) void scc_input_grad_run(
    const float *gt, const float *w, const i64 *outs, float *dxt, i64 PP, i64 M, i64 K, i64 s, i64 v0, i64 nr,
    i64 nv) {
    v16 gv[RUN][CHUNK];
    for (i64 r = 0; r < nr; r++)
        for (i64 v = 0; v < nv; v++) gv[r][v] = ld16(gt + outs[r] * PP + (v0 + v) * SV);
    for (i64 j = 0; j < K; j++) {
        i64 c = s + j < M ? s + j : s + j - M;
        float *row = dxt + c * PP + v0 * SV;
        v16 d[CHUNK];
        for (i64 v = 0; v < nv; v++) d[v] = ld16(row + v * SV);
        for (i64 r = 0; r < nr; r++) {
            float wr = w[outs[r] * K + j];
            for (i64 v = 0; v < nv; v++) d[v] += wr * gv[r][v];
        }
        for (i64 v = 0; v < nv; v++) st16(row + v * SV, d[v]);
    }
}

/* dw entries of one run for tap j: sums over all pixel vectors (see scc_backward). */
static inline __attribute__((always_inline)) void scc_weight_grad_run(
    const float *gt, const float *xt, const i64 *outs, float *dw, i64 PP, i64 M, i64 K, i64 s, i64 nvec, i64 nr) {
    for (i64 j = 0; j < K; j++) {
        i64 c = s + j < M ? s + j : s + j - M;
        const float *row = xt + c * PP;
        v16 acc[RUN];
        for (i64 r = 0; r < nr; r++) acc[r] = (v16){0};
        for (i64 v = 0; v < nvec; v++) {
            v16 xv = ld16(row + v * SV);
            for (i64 r = 0; r < nr; r++) acc[r] += xv * ld16(gt + outs[r] * PP + v * SV);
        }
        for (i64 r = 0; r < nr; r++) {
            float sum = 0;
            for (int q = 0; q < SV; q++) sum += acc[r][q];
            dw[outs[r] * K + j] = sum;
        }
    }
}

/* Gradients of scc_forward: dx (P x M; skipped when NULL) and dw (N x K; skipped when NULL). Each dw entry is
 * one thread's sum over pixels in a fixed order. */
void scc_backward(const float *g, const float *x, const float *w, const i64 *starts, const i64 *order, float *dx,
                  float *dw, i64 P, i64 M, i64 N, i64 K) {
    i64 PP = (P + SV - 1) / SV * SV, nvec = PP / SV;
    float *gt = aligned_buffer(N * PP);
    to_channel_major(g, gt, P, N, PP);
    if (dx) {
        float *dxt = aligned_buffer(M * PP);
#pragma omp parallel for schedule(static)
        for (i64 v0 = 0; v0 < nvec; v0 += CHUNK) {
            i64 nv = min64(CHUNK, nvec - v0);
            for (i64 c = 0; c < M; c++) memset(dxt + c * PP + v0 * SV, 0, sizeof(float) * SV * nv);
            for (i64 i = 0; i < N;) {
                i64 nr = run_length(starts, order, i, N), s = starts[order[i]];
                if (nr == RUN && nv == CHUNK)
                    scc_input_grad_run(gt, w, order + i, dxt, PP, M, K, s, v0, RUN, CHUNK);
                else
                    scc_input_grad_run(gt, w, order + i, dxt, PP, M, K, s, v0, nr, nv);
                i += nr;
            }
        }
        from_channel_major(dxt, dx, P, M, PP);
        free(dxt);
    }
    if (dw) {
        float *xt = aligned_buffer(M * PP);
        to_channel_major(x, xt, P, M, PP);
        i64 runs = 0;
        i64 *first = malloc(sizeof(i64) * (size_t)(N + 1));
        for (i64 i = 0; i < N; i += run_length(starts, order, i, N)) first[runs++] = i;
        first[runs] = N;
#pragma omp parallel for schedule(dynamic, 1)
        for (i64 k = 0; k < runs; k++) {
            i64 i = first[k], nr = first[k + 1] - i, s = starts[order[i]];
            if (nr == RUN)
                scc_weight_grad_run(gt, xt, order + i, dw, PP, M, K, s, nvec, RUN);
            else
                scc_weight_grad_run(gt, xt, order + i, dw, PP, M, K, s, nvec, nr);
        }
        free(first);
        free(xt);
    }
    free(gt);
}
