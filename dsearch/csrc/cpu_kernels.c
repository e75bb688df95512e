/* dsearch's CPU training kernels: fp32, channels_last (NHWC) tensors, OpenMP threads.
 *
 * Built on first use by dsearch/native.py with the machine's C compiler (-O3 -march=native -fopenmp);
 * when no compiler is there, dsearch trains with PyTorch's own kernels instead.
 *
 * - batch norm (training mode, batch statistics) with an optional ReLU6, forward and backward: one
 *   pass for the statistics (accumulated in double) and one for the output, where PyTorch runs batch
 *   norm and the clamp as separate passes over memory;
 * - depthwise convolution (any square kernel, stride, zero padding), forward, input gradient and
 *   weight gradient, vectorised over the contiguous channel dimension. Weights are K x K x C.
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

static int block_range(i64 total, int part, int parts, i64 *begin, i64 *end) {
    i64 base = total / parts, extra = total % parts;
    *begin = part * base + (part < extra ? part : extra);
    *end = *begin + base + (part < extra ? 1 : 0);
    return *end > *begin;
}

/* Sums over pixels of a[p, c] and a[p, c] * b[p, c] (b == NULL: a squared), per channel, in double. */
static void channel_sums(const float *a, const float *b, i64 P, i64 C, double *s1, double *s2) {
    int threads = omp_get_max_threads();
    double *part = calloc((size_t)threads * 2 * C, sizeof(double));
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        double *p1 = part + (size_t)t * 2 * C, *p2 = p1 + C;
        i64 begin, end;
        if (block_range(P, t, n, &begin, &end)) {
            for (i64 p = begin; p < end; p++) {
                const float *ap = a + p * C, *bp = b ? b + p * C : ap;
                for (i64 c = 0; c < C; c++) {
                    double av = ap[c];
                    p1[c] += av;
                    p2[c] += av * (double)bp[c];
                }
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
 * Writes mean, invstd and the biased variance (per channel) for the backward pass and running stats. */
void bn_act_forward(const float *x, float *y, const float *gamma, const float *beta, i64 P, i64 C, double eps,
                    int act, float *mean_out, float *invstd_out, float *var_out) {
    double *s1 = malloc(sizeof(double) * 2 * C), *s2 = s1 + C;
    float *scale = malloc(sizeof(float) * 2 * C), *shift = scale + C;
    channel_sums(x, NULL, P, C, s1, s2);
    for (i64 c = 0; c < C; c++) {
        double mean = s1[c] / P, var = s2[c] / P - mean * mean;
        if (var < 0) var = 0;
        double invstd = 1.0 / sqrt(var + eps);
        mean_out[c] = (float)mean;
        invstd_out[c] = (float)invstd;
        var_out[c] = (float)var;
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
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        double *sg = part + (size_t)t * 2 * C, *sgx = sg + C;
        i64 begin, end;
        if (block_range(P, t, n, &begin, &end)) {
            for (i64 p = begin; p < end; p++) {
                const float *xp = x + p * C, *gp = g + p * C;
                for (i64 c = 0; c < C; c++) {
                    float pre = xp[c] * scale[c] + shift[c];
                    float gv = gp[c] * (float)((pre > lo) & (pre < hi));
                    float xh = (xp[c] - mean[c]) * invstd[c];
                    sg[c] += gv;
                    sgx[c] += (double)(gv * xh);
                }
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

/* y[n, i, j, c] = sum over taps (a, b) of w[a, b, c] x[n, i s + a - pad, j s + b - pad, c] (zero outside). */
void dw_forward(const float *x, const float *w, float *y, i64 N, i64 H, i64 W, i64 C, i64 K, i64 s, i64 pad,
                i64 Ho, i64 Wo) {
#pragma omp parallel for schedule(static)
    for (i64 row = 0; row < N * Ho; row++) {
        i64 n = row / Ho, i = row % Ho;
        for (i64 j = 0; j < Wo; j++) {
            float *out = y + ((n * Ho + i) * Wo + j) * C;
            memset(out, 0, sizeof(float) * C);
            for (i64 a = 0; a < K; a++) {
                i64 ii = i * s + a - pad;
                if (ii < 0 || ii >= H) continue;
                for (i64 b = 0; b < K; b++) {
                    i64 jj = j * s + b - pad;
                    if (jj < 0 || jj >= W) continue;
                    const float *xp = x + ((n * H + ii) * W + jj) * C, *wp = w + (a * K + b) * C;
                    for (i64 c = 0; c < C; c++) out[c] += wp[c] * xp[c];
                }
            }
        }
    }
}

/* dx[n, ii, jj, c] = sum of g[n, i, j, c] w[a, b, c] over ii = i s + a - pad, jj = j s + b - pad. */
void dw_backward_input(const float *g, const float *w, float *dx, i64 N, i64 H, i64 W, i64 C, i64 K, i64 s,
                       i64 pad, i64 Ho, i64 Wo) {
#pragma omp parallel for schedule(static)
    for (i64 row = 0; row < N * H; row++) {
        i64 n = row / H, ii = row % H;
        for (i64 jj = 0; jj < W; jj++) {
            float *out = dx + ((n * H + ii) * W + jj) * C;
            memset(out, 0, sizeof(float) * C);
            for (i64 a = 0; a < K; a++) {
                i64 ti = ii + pad - a;
                if (ti < 0 || ti % s) continue;
                i64 i = ti / s;
                if (i >= Ho) continue;
                for (i64 b = 0; b < K; b++) {
                    i64 tj = jj + pad - b;
                    if (tj < 0 || tj % s) continue;
                    i64 j = tj / s;
                    if (j >= Wo) continue;
                    const float *gp = g + ((n * Ho + i) * Wo + j) * C, *wp = w + (a * K + b) * C;
                    for (i64 c = 0; c < C; c++) out[c] += wp[c] * gp[c];
                }
            }
        }
    }
}

/* gw[a, b, c] = sum over n, i, j of g[n, i, j, c] x[n, i s + a - pad, j s + b - pad, c]. */
void dw_backward_weight(const float *g, const float *x, float *gw, i64 N, i64 H, i64 W, i64 C, i64 K, i64 s,
                        i64 pad, i64 Ho, i64 Wo) {
    int threads = omp_get_max_threads();
    i64 taps = K * K * C;
    float *part = calloc((size_t)threads * taps, sizeof(float));
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *acc = part + (size_t)t * taps;
        i64 begin, end;
        if (block_range(N * Ho, t, nt, &begin, &end)) {
            for (i64 row = begin; row < end; row++) {
                i64 n = row / Ho, i = row % Ho;
                for (i64 a = 0; a < K; a++) {
                    i64 ii = i * s + a - pad;
                    if (ii < 0 || ii >= H) continue;
                    for (i64 j = 0; j < Wo; j++) {
                        const float *gp = g + ((n * Ho + i) * Wo + j) * C;
                        for (i64 b = 0; b < K; b++) {
                            i64 jj = j * s + b - pad;
                            if (jj < 0 || jj >= W) continue;
                            const float *xp = x + ((n * H + ii) * W + jj) * C;
                            float *ap = acc + (a * K + b) * C;
                            for (i64 c = 0; c < C; c++) ap[c] += gp[c] * xp[c];
                        }
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
