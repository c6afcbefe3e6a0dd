/* memory_retrieval for small head dimensions on the CPU (the three-moons memory: D = 2 or 6).

   out_i = sum_{j in S(i)} softmax_j(scale q_i . k_j) v_j,   S(i) = {j : t - window < j_abs <= t - skip}

   with t = q_start + i and j_abs = k_start + j (mask.py's vocabulary; skip < 0 means no mask, window
   < 0 no lower bound). q: (BH, Tq, D), k: (BH, Tk, D), v: (BH, Tk, Dv), out: (BH, Tq, Dv), lse:
   (BH, Tq) the log-sum-exp of each row's scores (-inf for a row that sees nothing; its output is 0),
   all contiguous float32. A row's visible keys are one contiguous range, so only they are touched.

   At D = 2 a fused attention kernel spends its time on per-block overheads, not arithmetic. Here each
   query row is a few passes over its visible keys, every pass a loop over keys that the compiler
   vectorises (gcc -fopt-info-vec reports every inner loop vectorised): k and v are transposed to
   (D, Tk) first, and e^x is a branch-free polynomial (exp_neg) instead of a libm call. The backward
   recomputes the probabilities from lse (the flash-attention identity):
   dS = P (dP - rowsum(dO . O)), dq = scale dS k, dk = scale dS^T q, dv = P^T dO.
   [bh_lo, bh_hi) is the slice of batch x heads this call handles (callers split it across threads). */

#include <math.h>
/* Denormals (weights below 2^-126, products of tiny weights) cost ~100 cycles each on x86; they are
   far below anything a float sum holding the row's largest weight (1) can see, so both entry points
   run with flush-to-zero and denormals-are-zero set, and restore the caller's MXCSR on return. */
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define FTZ_ON() const unsigned csr_ = _mm_getcsr(); _mm_setcsr(csr_ | 0x8040) /* FTZ | DAZ */
#define FTZ_OFF() _mm_setcsr(csr_)
#else
#define FTZ_ON()
#define FTZ_OFF()
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;

/* On x86-64 Linux, each entry point is also compiled for AVX-512 (x86-64-v4; ~1.2x over AVX2 on the
   three-moons memory) and AVX2 + FMA (x86-64-v3), and the loader picks
   the best clone for the CPU at hand; the flags stay portable (no -march=native). */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* e^x for x <= 0 (scores minus their row maximum), ~1 ulp: Cephes' expf, branch-free so that it
   vectorises; below -87 it returns e^-87 (~1e-38, or 0 once flushed), not a wrapped exponent. */
static inline float exp_neg(float x) {
    /* x < -87 (down to -inf) -> -87, NaN kept: in integer bit operations, because a float ?: (or
       fmaxf) is a branch to gcc without -ffinite-math-only and the loop would not vectorise */
    union { float f; uint32_t u; } c = {.f = x};
    const uint32_t below = (c.u - 0xC2AE0001u) <= (0xFF800000u - 0xC2AE0001u); /* bits of (-inf, -87) */
    const uint32_t m = 0u - below; /* all ones where x < -87 */
    c.u = (c.u & ~m) | (0xC2AE0000u & m); /* 0xC2AE0000 = -87.0f */
    x = c.f;
    const float n = (float)(int)(x * 1.44269504088896341f - 0.5f); /* round to nearest, x <= 0 */
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } two = {.i = ((int32_t)n + 127) << 23};
    return p * two.f;
}

/* The keys row i can see, as indices [*a, *b] into k; returns 0 when there are none. */
static inline int key_range(i64 i, i64 Tk, i64 q_start, i64 k_start, i64 skip, i64 window, i64 *a, i64 *b) {
    const i64 t = q_start + i;
    i64 lo = 0, hi = Tk - 1;
    if (skip >= 0 && t - skip - k_start < hi) hi = t - skip - k_start;
    if (window >= 0 && t - window + 1 - k_start > lo) lo = t - window + 1 - k_start;
    *a = lo, *b = hi;
    return hi >= lo;
}

/* max of s[a..b]: eight running maxima, so that the loop vectorises (a plain max reduction does not
   without -ffast-math). */
static inline float row_max(const float *restrict s, i64 a, i64 b) {
    float mx[8];
    for (int l = 0; l < 8; l++) mx[l] = s[a];
    i64 j = a;
    for (; j + 8 <= b + 1; j += 8)
        for (int l = 0; l < 8; l++) mx[l] = s[j + l] > mx[l] ? s[j + l] : mx[l];
    float m = mx[0];
    for (int l = 1; l < 8; l++) m = mx[l] > m ? mx[l] : m;
    for (; j <= b; j++) m = s[j] > m ? s[j] : m;
    return m;
}

static void transpose(const float *restrict x, float *restrict xt, i64 T, i64 D) {
    for (i64 j = 0; j < T; j++)
        for (i64 d = 0; d < D; d++) xt[d * T + j] = x[j * D + d];
}

CLONES void retrieval_fwd(const float *q, const float *k, const float *v, float *out, float *lse, i64 bh_lo, i64 bh_hi,
                   i64 Tq, i64 Tk, i64 D, i64 Dv, i64 q_start, i64 k_start, i64 skip, i64 window, float scale) {
    FTZ_ON();
    float *kt = malloc(sizeof(float) * (size_t)(Tk * D + Tk * Dv + Tk + 1));
    float *vt = kt + Tk * D, *s = vt + Tk * Dv;
    for (i64 bh = bh_lo; bh < bh_hi; bh++) {
        transpose(k + bh * Tk * D, kt, Tk, D);
        transpose(v + bh * Tk * Dv, vt, Tk, Dv);
        for (i64 i = 0; i < Tq; i++) {
            const float *qi = q + (bh * Tq + i) * D;
            float *oi = out + (bh * Tq + i) * Dv;
            i64 a, b;
            if (!key_range(i, Tk, q_start, k_start, skip, window, &a, &b)) {
                memset(oi, 0, sizeof(float) * (size_t)Dv);
                lse[bh * Tq + i] = -INFINITY;
                continue;
            }
            for (i64 j = a; j <= b; j++) s[j] = 0.0f;
            for (i64 d = 0; d < D; d++) {
                const float qd = scale * qi[d];
                const float *restrict kd = kt + d * Tk;
                for (i64 j = a; j <= b; j++) s[j] += qd * kd[j];
            }
            const float m = row_max(s, a, b);
            float sum = 0.0f;
            for (i64 j = a; j <= b; j++) {
                s[j] = exp_neg(s[j] - m);
                sum += s[j];
            }
            for (i64 d = 0; d < Dv; d++) {
                const float *restrict vd = vt + d * Tk;
                float acc = 0.0f;
                for (i64 j = a; j <= b; j++) acc += s[j] * vd[j];
                oi[d] = acc / sum;
            }
            lse[bh * Tq + i] = m + logf(sum);
        }
    }
    free(kt);
    FTZ_OFF();
}

CLONES void retrieval_bwd(const float *q, const float *k, const float *v, const float *out, const float *lse,
                   const float *dout, float *dq, float *dk, float *dv, i64 bh_lo, i64 bh_hi, i64 Tq, i64 Tk, i64 D,
                   i64 Dv, i64 q_start, i64 k_start, i64 skip, i64 window, float scale) {
    FTZ_ON();
    float *kt = calloc((size_t)(2 * Tk * D + 2 * Tk * Dv + 2 * Tk + 1), sizeof(float));
    float *vt = kt + Tk * D, *dkt = vt + Tk * Dv, *dvt = dkt + Tk * D, *p = dvt + Tk * Dv, *ds = p + Tk;
    for (i64 bh = bh_lo; bh < bh_hi; bh++) {
        transpose(k + bh * Tk * D, kt, Tk, D);
        transpose(v + bh * Tk * Dv, vt, Tk, Dv);
        memset(dkt, 0, sizeof(float) * (size_t)(Tk * D + Tk * Dv));
        for (i64 i = 0; i < Tq; i++) {
            const float *qi = q + (bh * Tq + i) * D, *oi = out + (bh * Tq + i) * Dv;
            const float *doi = dout + (bh * Tq + i) * Dv;
            float *dqi = dq + (bh * Tq + i) * D;
            i64 a, b;
            memset(dqi, 0, sizeof(float) * (size_t)D);
            if (!key_range(i, Tk, q_start, k_start, skip, window, &a, &b)) continue;
            const float li = lse[bh * Tq + i];
            float di = 0.0f; /* rowsum(dO . O) */
            for (i64 d = 0; d < Dv; d++) di += doi[d] * oi[d];
            for (i64 j = a; j <= b; j++) p[j] = 0.0f, ds[j] = 0.0f;
            for (i64 d = 0; d < D; d++) {
                const float qd = scale * qi[d];
                const float *restrict kd = kt + d * Tk;
                for (i64 j = a; j <= b; j++) p[j] += qd * kd[j];
            }
            for (i64 j = a; j <= b; j++) p[j] = exp_neg(p[j] - li);
            for (i64 d = 0; d < Dv; d++) {
                const float g = doi[d];
                const float *restrict vd = vt + d * Tk;
                float *restrict dvd = dvt + d * Tk;
                for (i64 j = a; j <= b; j++) {
                    ds[j] += g * vd[j];    /* dP */
                    dvd[j] += p[j] * g;    /* dv += P^T dO */
                }
            }
            for (i64 j = a; j <= b; j++) ds[j] = p[j] * (ds[j] - di) * scale;
            for (i64 d = 0; d < D; d++) {
                const float *restrict kd = kt + d * Tk;
                float *restrict dkd = dkt + d * Tk;
                const float qd = qi[d];
                float acc = 0.0f;
                for (i64 j = a; j <= b; j++) {
                    acc += ds[j] * kd[j];
                    dkd[j] += ds[j] * qd;
                }
                dqi[d] = acc;
            }
        }
        transpose(dkt, dk + bh * Tk * D, D, Tk);
        transpose(dvt, dv + bh * Tk * Dv, Dv, Tk);
    }
    free(kt);
    FTZ_OFF();
}
