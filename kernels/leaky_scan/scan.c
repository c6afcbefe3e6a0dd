/* leaky_scan on the CPU: one pass over the sequence per (batch, head).

     y_t = g_t x_t + lam_t y_{t-1},   y_{-1} = s0

   x, y, dy, dx: (B, H, T, D) with any element strides for B, H, T and unit stride along D (the
   model's split heads are a (B, T, H, D) buffer viewed as (B, H, T, D): no copy is needed).
   g, lam: (B, H, T) with any strides (0 for a broadcast: v1's per-head constant decay); g may be
   NULL (unit gates). s0 may be NULL (zeros). Backward: z_t = dy_t + lam_{t+1} z_{t+1}, z_{T-1} =
   dy_{T-1} + dfinal; dx_t = g_t z_t, dg_t = sum_d z_t x_t, dlam_t = sum_d z_t y_{t-1},
   dstate = lam_0 z_0 (the formulas of triton.py). Memory bound: x read once, y written once.
   Inputs and outputs are float32; the running state and the adjoint are carried in double, so each
   y_t is the exact recurrence rounded once (a float32 state would add one rounding per step, and
   the mosaics' large bandwidths amplify key errors into the logits). */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;

static inline float gate_at(const float *g, i64 gb, i64 gh, i64 gt, i64 b, i64 h, i64 t) {
    return g ? g[b * gb + h * gh + t * gt] : 1.0f;
}

void leaky_scan_fwd(const float *restrict x, i64 xb, i64 xh, i64 xt,
                    const float *restrict g, i64 gb, i64 gh, i64 gt,
                    const float *restrict lam, i64 lb, i64 lh, i64 lt,
                    const float *restrict s0, float *restrict y, i64 yb, i64 yh, i64 yt,
                    float *restrict fin, i64 B, i64 H, i64 T, i64 D) {
    double *restrict h = malloc(sizeof(double) * (size_t)(D > 0 ? D : 1));
    for (i64 b = 0; b < B; b++) {
        for (i64 k = 0; k < H; k++) {
            for (i64 d = 0; d < D; d++) h[d] = s0 ? (double)s0[(b * H + k) * D + d] : 0.0;
            for (i64 t = 0; t < T; t++) {
                const double gv = gate_at(g, gb, gh, gt, b, k, t), lv = lam[b * lb + k * lh + t * lt];
                const float *restrict xp = x + b * xb + k * xh + t * xt;
                float *restrict yp = y + b * yb + k * yh + t * yt;
                for (i64 d = 0; d < D; d++) {
                    h[d] = gv * xp[d] + lv * h[d];
                    yp[d] = (float)h[d];
                }
            }
            for (i64 d = 0; d < D; d++) fin[(b * H + k) * D + d] = (float)h[d];
        }
    }
    free(h);
}

/* dg may be NULL (no gates); dy may be NULL (only the final state has a gradient); dfinal may be NULL.
   dg, dlam: (B, H, T) contiguous; dstate: (B, H, D) contiguous; dx has its own strides. */
void leaky_scan_bwd(const float *restrict dy, i64 db, i64 dh, i64 dt,
                    const float *restrict dfinal,
                    const float *restrict x, i64 xb, i64 xh, i64 xt,
                    const float *restrict g, i64 gb, i64 gh, i64 gt,
                    const float *restrict lam, i64 lb, i64 lh, i64 lt,
                    const float *restrict s0,
                    const float *restrict y, i64 yb, i64 yh, i64 yt,
                    float *restrict dx, i64 xdb, i64 xdh, i64 xdt,
                    float *restrict dg, float *restrict dlam, float *restrict dstate,
                    i64 B, i64 H, i64 T, i64 D) {
    double *restrict z = malloc(sizeof(double) * (size_t)(D > 0 ? D : 1));
    for (i64 b = 0; b < B; b++) {
        for (i64 k = 0; k < H; k++) {
            const i64 bh = b * H + k;
            for (i64 d = 0; d < D; d++) z[d] = dfinal ? (double)dfinal[bh * D + d] : 0.0;
            double next_lam = 1.0; /* lam_{t+1}; z_T is dfinal itself */
            for (i64 t = T - 1; t >= 0; t--) {
                const float *restrict dyp = dy ? dy + b * db + k * dh + t * dt : NULL;
                const float *restrict xp = x + b * xb + k * xh + t * xt;
                const float *restrict prev = t > 0 ? y + b * yb + k * yh + (t - 1) * yt : (s0 ? s0 + bh * D : NULL);
                float *restrict dxp = dx + b * xdb + k * xdh + t * xdt;
                const double gv = gate_at(g, gb, gh, gt, b, k, t);
                double sx = 0.0, sp = 0.0;
                for (i64 d = 0; d < D; d++) {
                    const double zd = (dyp ? (double)dyp[d] : 0.0) + next_lam * z[d];
                    z[d] = zd;
                    dxp[d] = (float)(gv * zd);
                    sx += zd * xp[d];
                }
                if (prev)
                    for (i64 d = 0; d < D; d++) sp += z[d] * prev[d];
                if (dg) dg[bh * T + t] = (float)sx;
                dlam[bh * T + t] = (float)sp;
                next_lam = lam[b * lb + k * lh + t * lt];
            }
            for (i64 d = 0; d < D; d++) dstate[bh * D + d] = (float)((T > 0 ? next_lam : 1.0) * z[d]);
        }
    }
    free(z);
}
