/* MIMN's memory write, forward and backward, fused: built and called by sim/models/mimn_fused.py, whose
 * docstring says what this computes and why the results are those of the reference (MIMN._step in
 * sim/models/mimn.py). Every function here is one operation of _step, or its derivative, on V rows: the
 * step, the forward and the work space here, the vector operations in mimn_kernel_ops.h, the backward in
 * mimn_kernel_backward.h.
 *
 * Layout: rows are processed V = 8 at a time, one row per SIMD lane (GCC vector extensions), every
 * quantity of the step a vector of V lanes, so even the small loops over m slots or 2 heads are vector
 * operations. Rows are sorted by length, so a block's rows walk about as many behaviors; a lane whose row
 * is done (or empty) is inactive: its state is kept, its gradient passes through, it adds nothing.
 *
 * Compiled once per element type: the includer defines REAL (float, double), IREAL (the integer type of
 * the same width), SUFFIX (_f32, _f64) and VEC_POLY (1: exp and tanh by polynomials, for float; 0: the
 * C library's, lane by lane). Every name that depends on the type goes through NAME().
 *
 * Sizes: E behavior / slot width, H controller width, m slots, k MIU slots per behavior, P = 4E + 2 head
 * outputs (read key, write key, two strengths, erase, add). Weights as nn.Linear stores them (out x in)
 * for the forward, transposed (in x out) for the backward: either way the inner loop reads one row.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define NAME(x) CAT(x, SUFFIX)
#define V 8

#ifndef MIMN_TYPES_DEFINED
#define MIMN_TYPES_DEFINED
typedef struct {
    int64_t E, H, m, k;
} MimnDims;

typedef struct { /* which rows a call walks: rows order[V * blk + lane] of blocks [blk0, blk1) */
    const int64_t *off;   /* B + 1: row b's behaviors are pos[off[b]] .. pos[off[b + 1] - 1], newest first */
    const int64_t *pos;   /* their rows in the behaviors (B * L X E): b * L + position */
    const int64_t *order; /* B: rows by length, longest first */
    const int64_t *boff;  /* blocks + 1: block i's saved steps start at boff[i] (its longest row's length) */
    int64_t rows, blk0, blk1;
} MimnRows;
#endif

typedef REAL NAME(real);
typedef REAL NAME(vec) __attribute__((vector_size(V * sizeof(REAL))));
typedef IREAL NAME(ivec) __attribute__((vector_size(V * sizeof(REAL))));
#define real NAME(real)
#define vec NAME(vec)
#define ivec NAME(ivec)
#define B(x) ((vec){0} + (real)(x))
#define SBUF 16 /* (step, chosen slot) pairs a weight gradient's products are buffered over */

/* The parameters, nn.Linear's (out x in) layout; the backward reads the transposes. Wx = [W_ci | W_cr]
 * (controller_in, controller_read: the controller GRU's input part from [e_t, r_{t-1}]), Wm = [W_mi | W_ms]
 * (miu_in, miu_slot: the MIU GRU's input part from [e_t, M_t(c)]). */
typedef struct {
    const real *Wx, *bx, *Wch, *bch, *Whd, *bhd, *Wg, *Wm, *bm, *Wmh, *bmh, *M0;
    const real *WxT, *WchT, *WhdT, *WgT, *WmT, *WmhT;
} NAME(Weights);

typedef struct { /* gradients of the parameters above, as stored; the kernel adds to them */
    real *Wx, *bx, *Wch, *bch, *Whd, *bhd, *Wg, *Wm, *bm, *Wmh, *bmh, *M0;
} NAME(Grads);

typedef struct { /* B rows each: the state after a row's newest behavior (or its gradient) */
    real *h, *r, *M, *g, *S, *wR, *wW;
} NAME(State);

/* One weight's gradient sum_{steps, lanes} dy v^T, its products buffered over SBUF steps then summed in
 * register tiles (a lane-wise accumulator per weight would be read and written for every product). */
typedef struct {
    vec *dy, *v; /* J X SBUF, Q X SBUF */
    real *G;     /* J X Q */
    int64_t J, Q, n;
} NAME(Outer);

typedef struct { /* one block's step intermediates, running state and gradients: V lanes each */
    /* The frame: what the backward needs of a step and costs most to compute (matrix products and
     * transcendental functions); forward writes it into the saved steps, the backward reads it there. */
    vec *ghn, *rg, *zg, *n, *hn, *p, *beta, *e, *a, *nk, *nM, *wR, *wW, *q, *Ssum, *Sg, *chf, *ghn2, *rg2, *zg2, *n2;
    /* Scratch, or computed again from the frame and the state (a few divisions and products). */
    vec *xr, *xm, *gi, *gh, *kh, *Mh, *cos, *sh, *u, *Mn, *rn, *gn, *xin, *gh2, *Sn, *Sc, *h, *r, *M, *g, *S, *fR, *fW,
        *fbuf;
    vec *dh, *dr, *dM, *dg, *dS, *dhn, *dhd, *dMn, *dp, *dgi, *dgh, *dwR, *dwW, *de, *da, *dc, *dkh, *dMh, *du,
        *dsh, *dxin, *dgh2, *dSc, *dxr, *dxm, *dx, *gR, *gW, *tmp;
    vec *gbx, *gbch, *gbhd, *gWg, *gbm, *gbmh, *gM0, *buf;
    NAME(Outer) oWx, oWch, oWhd, oWm, oWmh;
    int64_t *chosen; /* k X V */
    void *block;
} NAME(Work);

#include "mimn_kernel_ops.h"

static int64_t NAME(frame_size)(const MimnDims *d) {
    return 5 * d->H + 4 * d->E + 2 + 2 + 2 * d->E + 2 + 4 * d->m + 2 + d->k + 4 * d->k * d->E;
}

/* Points the frame's arrays into base (frame_size vectors). */
static void NAME(set_frame)(const MimnDims *d, NAME(Work) *w, vec *base) {
    const int64_t E = d->E, H = d->H, m = d->m, k = d->k;
    const int64_t sizes[] = {H, H, H, H, H, 4 * E + 2, 2, E, E, 2, m, m, m, m, 1, 1, k, k * E, k * E, k * E, k * E};
    vec **slots[] = {&w->ghn, &w->rg, &w->zg, &w->n, &w->hn, &w->p, &w->beta, &w->e, &w->a, &w->nk, &w->nM,
                     &w->wR, &w->wW, &w->q, &w->Ssum, &w->Sg, &w->chf, &w->ghn2, &w->rg2, &w->zg2, &w->n2};
    for (int i = 0; i < (int)(sizeof(sizes) / sizeof(sizes[0])); i++) {
        *slots[i] = base;
        base += sizes[i];
    }
}

static int NAME(work_alloc)(const MimnDims *d, NAME(Work) *w) {
    const int64_t E = d->E, H = d->H, m = d->m, k = d->k, P = 4 * E + 2;
    const int64_t outer = SBUF * (3 * H + 2 * E + 3 * H + H + P + H + 3 * E + 2 * E + 3 * E + E);
    const int64_t sizes[] = {
        2 * E, k * 2 * E, 3 * H, 3 * H, 2 * E, m * E, 2 * m, m, m,
        m * E, E, m, k * 3 * E, k * 3 * E, k * E, k * E, H, E, m * E, m, m * E, m, m, NAME(frame_size)(d),
        H, E, m * E, m, m * E, H, H, m * E, P, 3 * H, 3 * H, m, m, E, E, 2 * m, 2 * E, m * E, m,
        m, 3 * E, 3 * E, E, 2 * E, 2 * E, E, m, m, 2 * m,
        3 * H, 3 * H, P, m * m, 3 * E, 3 * E, m * E, outer};
    vec **slots[] = {
        &w->xr, &w->xm, &w->gi, &w->gh, &w->kh, &w->Mh, &w->cos, &w->sh, &w->u,
        &w->Mn, &w->rn, &w->gn, &w->xin, &w->gh2, &w->Sn, &w->Sc,
        &w->h, &w->r, &w->M, &w->g, &w->S, &w->fR, &w->fW, &w->fbuf,
        &w->dh, &w->dr, &w->dM, &w->dg, &w->dS, &w->dhn, &w->dhd, &w->dMn, &w->dp, &w->dgi, &w->dgh, &w->dwR,
        &w->dwW, &w->de, &w->da, &w->dc, &w->dkh, &w->dMh, &w->du,
        &w->dsh, &w->dxin, &w->dgh2, &w->dSc, &w->dxr, &w->dxm, &w->dx, &w->gR, &w->gW, &w->tmp,
        &w->gbx, &w->gbch, &w->gbhd, &w->gWg, &w->gbm, &w->gbmh, &w->gM0, &w->buf};
    const int count = (int)(sizeof(sizes) / sizeof(sizes[0]));
    if (count != (int)(sizeof(slots) / sizeof(slots[0]))) return -1;
    int64_t total = 0;
    for (int i = 0; i < count; i++) total += sizes[i];
    const size_t bytes = (size_t)total * sizeof(vec) + (size_t)(k * V) * sizeof(int64_t);
    if (posix_memalign(&w->block, 64, bytes)) return -1;
    memset(w->block, 0, bytes);
    vec *at = (vec *)w->block;
    for (int i = 0; i < count; i++) {
        *slots[i] = at;
        at += sizes[i];
    }
    w->chosen = (int64_t *)at;
    NAME(set_frame)(d, w, w->fbuf);
    NAME(Outer) *o[] = {&w->oWx, &w->oWch, &w->oWhd, &w->oWm, &w->oWmh};
    const int64_t JQ[][2] = {{3 * H, 2 * E}, {3 * H, H}, {P, H}, {3 * E, 2 * E}, {3 * E, E}};
    vec *b = w->buf;
    for (int i = 0; i < 5; i++) {
        o[i]->J = JQ[i][0], o[i]->Q = JQ[i][1], o[i]->n = 0, o[i]->G = NULL;
        o[i]->dy = b, b += SBUF * o[i]->J;
        o[i]->v = b, b += SBUF * o[i]->Q;
    }
    return 0;
}

/* MIMN._step for V rows from the state (h, r, M, g) before it and the behaviors in w->xr[0:E], up to the
 * MIU: the controller, the heads, addressing, the write and the read, and the slots the MIU updates
 * (w->chosen: the top k of the read weights; on equal weights the lower slot). */
static void NAME(step)(const MimnDims *d, const NAME(Weights) *W, NAME(Work) *w, const vec *h, const vec *r,
                       const vec *M, const vec *g) {
    const int64_t E = d->E, H = d->H, m = d->m, k = d->k, P = 4 * E + 2;
    memcpy(w->xr + E, r, E * sizeof(vec));
    NAME(mv)(w->gi, NULL, W->bx, W->Wx, w->xr, 2 * E, 3 * H);
    NAME(mv)(w->gh, NULL, W->bch, W->Wch, h, H, 3 * H);
    memcpy(w->ghn, w->gh + 2 * H, H * sizeof(vec));
    NAME(gru)(w->hn, w->rg, w->zg, w->n, w->gi, w->gh, h, H);
    NAME(mv)(w->p, NULL, W->bhd, W->Whd, w->hn, H, P);
    for (int j = 0; j < 2; j++) {
        w->beta[j] = B(1) + NAME(vsoftplus)(w->p[2 * E + j]);
        w->nk[j] = NAME(normalize)(w->kh + j * E, w->p + j * E, E);
    }
    for (int64_t q = 0; q < E; q++) {
        w->e[q] = NAME(vsigmoid)(w->p[2 * E + 2 + q]);
        w->a[q] = NAME(vtanh)(w->p[3 * E + 2 + q]);
    }
    for (int64_t i = 0; i < m; i++) w->nM[i] = NAME(normalize)(w->Mh + i * E, M + i * E, E);
    for (int j = 0; j < 2; j++)
        for (int64_t i = 0; i < m; i++) {
            vec c = B(0);
            for (int64_t q = 0; q < E; q++) c += w->kh[j * E + q] * w->Mh[i * E + q];
            w->cos[j * m + i] = c;
        }
    vec *x = w->tmp;
    for (int64_t i = 0; i < m; i++) x[i] = w->beta[0] * w->cos[i];
    NAME(softmax)(w->wR, x, m);
    vec s = B(0);
    for (int64_t i = 0; i < m; i++) s += g[i];
    w->Ssum[0] = s;
    w->Sg[0] = NAME(vmax)(s, B(1));
    for (int64_t i = 0; i < m; i++) w->sh[i] = g[i] / w->Sg[0];
    NAME(mv)(w->u, NULL, NULL, W->Wg, w->sh, m, m);
    vec mx = w->u[0], z = B(0);
    for (int64_t i = 1; i < m; i++) mx = NAME(vmax)(w->u[i], mx);
    for (int64_t i = 0; i < m; i++) z += NAME(vexp)(w->u[i] - mx);
    for (int l = 0; l < V; l++) z[l] = log(z[l]);
    for (int64_t i = 0; i < m; i++) w->q[i] = w->u[i] - mx - z;
    for (int64_t i = 0; i < m; i++) x[i] = w->beta[1] * w->cos[m + i] + w->q[i];
    NAME(softmax)(w->wW, x, m);
    for (int64_t q = 0; q < E; q++) w->rn[q] = B(0);
    for (int64_t i = 0; i < m; i++) {
        const vec ww = w->wW[i], wr = w->wR[i];
        for (int64_t q = 0; q < E; q++) {
            const vec v = M[i * E + q] * (B(1) - ww * w->e[q]) + ww * w->a[q];
            w->Mn[i * E + q] = v;
            w->rn[q] += wr * v;
        }
        w->gn[i] = g[i] + ww;
    }
    for (int l = 0; l < V; l++)
        for (int64_t j = 0; j < k; j++) {
            int64_t best = -1;
            for (int64_t i = 0; i < m; i++) {
                int taken = 0;
                for (int64_t o = 0; o < j; o++) taken |= w->chosen[o * V + l] == i;
                if (!taken && (best < 0 || w->wR[i][l] > w->wR[best][l])) best = i;
            }
            w->chosen[j * V + l] = best;
            w->chf[j][l] = (real)best;
        }
}

/* What the backward needs of a step beyond its frame, computed again exactly as step() did: unit keys
 * and slots, their cosines, the usage share, the written memory, the chosen slots and the MIU inputs. */
static void NAME(step_again)(const MimnDims *d, NAME(Work) *w, const vec *r, const vec *M, const vec *g) {
    const int64_t E = d->E, m = d->m, k = d->k;
    memcpy(w->xr + E, r, E * sizeof(vec));
    for (int j = 0; j < 2; j++) {
        const vec c = B(1) / NAME(vmax)(w->nk[j], B(1e-12));
        for (int64_t q = 0; q < E; q++) w->kh[j * E + q] = w->p[j * E + q] * c;
    }
    for (int64_t i = 0; i < m; i++) {
        const vec c = B(1) / NAME(vmax)(w->nM[i], B(1e-12));
        for (int64_t q = 0; q < E; q++) w->Mh[i * E + q] = M[i * E + q] * c;
    }
    for (int j = 0; j < 2; j++)
        for (int64_t i = 0; i < m; i++) {
            vec c = B(0);
            for (int64_t q = 0; q < E; q++) c += w->kh[j * E + q] * w->Mh[i * E + q];
            w->cos[j * m + i] = c;
        }
    for (int64_t i = 0; i < m; i++) w->sh[i] = g[i] / w->Sg[0];
    for (int64_t i = 0; i < m; i++) {
        const vec ww = w->wW[i];
        for (int64_t q = 0; q < E; q++) w->Mn[i * E + q] = M[i * E + q] * (B(1) - ww * w->e[q]) + ww * w->a[q];
    }
    for (int64_t j = 0; j < k; j++) {
        for (int l = 0; l < V; l++) w->chosen[j * V + l] = (int64_t)w->chf[j][l];
        memcpy(w->xm + j * 2 * E, w->xr, E * sizeof(vec));
        NAME(gather)(w->xm + j * 2 * E + E, w->Mn, w->chosen + j * V, E);
    }
}

/* The MIU's GRU on the j-th chosen slot c: xin = W_mi e_t + b_mi + W_ms M_t(c), gh2 = W_mh S(c) + b_mh,
 * S(c) from w->Sc[j]. */
static void NAME(miu)(const MimnDims *d, const NAME(Weights) *W, NAME(Work) *w, int64_t j) {
    const int64_t E = d->E;
    vec *xm = w->xm + j * 2 * E, *xin = w->xin + j * 3 * E, *gh2 = w->gh2 + j * 3 * E, *Sc = w->Sc + j * E;
    memcpy(xm, w->xr, E * sizeof(vec));
    NAME(gather)(xm + E, w->Mn, w->chosen + j * V, E);
    NAME(mv)(xin, NULL, W->bm, W->Wm, xm, 2 * E, 3 * E);
    NAME(mv)(gh2, NULL, W->bmh, W->Wmh, Sc, E, 3 * E);
    memcpy(w->ghn2 + j * E, gh2 + 2 * E, E * sizeof(vec));
    NAME(gru)(w->Sn + j * E, w->rg2 + j * E, w->zg2 + j * E, w->n2 + j * E, xin, gh2, Sc, E);
}

/* Lane l's row (-1: none) and its length. */
static void NAME(lanes)(const MimnRows *R, int64_t blk, int64_t *row, int64_t *len) {
    for (int l = 0; l < V; l++) {
        const int64_t i = blk * V + l;
        row[l] = i < R->rows ? R->order[i] : -1;
        len[l] = row[l] >= 0 ? R->off[row[l] + 1] - R->off[row[l]] : 0;
    }
}

/* At walk step s (0: a row's oldest behavior), each active lane's behavior (its row of x in idx[l], -1
 * for inactive lanes, whose behavior is 0) into w->xr[0:E]. */
static void NAME(load_x)(const MimnDims *d, const MimnRows *R, NAME(Work) *w, const real *x, const int64_t *row,
                         const int64_t *len, int64_t s, int64_t *idx) {
    const int64_t E = d->E;
    real *dst = (real *)w->xr; /* element q * V + l is lane l of vector q */
    for (int l = 0; l < V; l++) {
        idx[l] = s < len[l] ? R->pos[R->off[row[l]] + len[l] - 1 - s] : -1;
        const real *src = idx[l] >= 0 ? x + idx[l] * E : NULL;
        for (int64_t q = 0; q < E; q++) dst[q * V + l] = src ? src[q] : (real)0;
    }
}

static ivec NAME(active)(const int64_t *len, int64_t s) {
    ivec a;
    for (int l = 0; l < V; l++) a[l] = s < len[l] ? -1 : 0;
    return a;
}

static void NAME(keep)(vec *dst, const vec *src, ivec act, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = NAME(sel)(act, src[i], dst[i]);
}

static int64_t NAME(state_size)(const MimnDims *d) { return d->H + d->E + d->m * d->E + d->m + d->k * d->E; }

/* Per block and step: the state before it (h, r, M, g, the chosen slots' MIU states), then its frame. */
static int64_t NAME(saved_size)(const MimnDims *d) { return NAME(state_size)(d) + NAME(frame_size)(d); }

/* Vectors of V lanes saved per block and step (the caller allocates the saved steps). */
int64_t NAME(mimn_saved_size)(const MimnDims *d) { return NAME(saved_size)(d); }

/* Blocks [R->blk0, R->blk1) of the behaviors x (B * L X E): every row's final state into out; with saved
 * (may be NULL), per block and step, the state (h, r, M, g) before it and the chosen slots' MIU states
 * before it. 0, or -1 without memory. */
int NAME(mimn_forward)(const MimnDims *d, const NAME(Weights) *W, const MimnRows *R, const real *x, real *saved,
                       NAME(State) *out) {
    const int64_t E = d->E, H = d->H, m = d->m, k = d->k, sv = NAME(saved_size)(d);
    NAME(Work) w;
    if (NAME(work_alloc)(d, &w)) return -1;
    int64_t row[V], len[V], idx[V];
    for (int64_t blk = R->blk0; blk < R->blk1; blk++) {
        NAME(lanes)(R, blk, row, len);
        for (int64_t q = 0; q < H; q++) w.h[q] = B(0);
        for (int64_t q = 0; q < E; q++) w.r[q] = B(0);
        for (int64_t q = 0; q < m * E; q++) w.M[q] = B(W->M0[q]), w.S[q] = B(0);
        for (int64_t i = 0; i < m; i++) w.g[i] = w.fR[i] = w.fW[i] = B(0);
        for (int64_t s = 0; s < R->boff[blk + 1] - R->boff[blk]; s++) {
            const ivec act = NAME(active)(len, s);
            NAME(load_x)(d, R, &w, x, row, len, s, idx);
            vec *sp = saved ? (vec *)saved + (R->boff[blk] + s) * sv : NULL;
            NAME(set_frame)(d, &w, sp ? sp + NAME(state_size)(d) : w.fbuf);
            if (sp) {
                memcpy(sp, w.h, H * sizeof(vec));
                memcpy(sp + H, w.r, E * sizeof(vec));
                memcpy(sp + H + E, w.M, m * E * sizeof(vec));
                memcpy(sp + H + E + m * E, w.g, m * sizeof(vec));
            }
            NAME(step)(d, W, &w, w.h, w.r, w.M, w.g);
            for (int64_t j = 0; j < k; j++) {
                NAME(gather)(w.Sc + j * E, w.S, w.chosen + j * V, E);
                if (sp) memcpy(sp + H + E + m * E + m + j * E, w.Sc + j * E, E * sizeof(vec));
                NAME(miu)(d, W, &w, j);
                for (int l = 0; l < V; l++)
                    if (act[l])
                        for (int64_t q = 0; q < E; q++) w.S[w.chosen[j * V + l] * E + q][l] = w.Sn[j * E + q][l];
            }
            NAME(keep)(w.h, w.hn, act, H);
            NAME(keep)(w.r, w.rn, act, E);
            NAME(keep)(w.M, w.Mn, act, m * E);
            NAME(keep)(w.g, w.gn, act, m);
            NAME(keep)(w.fR, w.wR, act, m);
            NAME(keep)(w.fW, w.wW, act, m);
        }
        for (int l = 0; l < V; l++) {
            const int64_t b = row[l];
            if (b < 0) continue;
            for (int64_t q = 0; q < H; q++) out->h[b * H + q] = w.h[q][l];
            for (int64_t q = 0; q < E; q++) out->r[b * E + q] = w.r[q][l];
            for (int64_t q = 0; q < m * E; q++) out->M[b * m * E + q] = w.M[q][l], out->S[b * m * E + q] = w.S[q][l];
            for (int64_t i = 0; i < m; i++)
                out->g[b * m + i] = w.g[i][l], out->wR[b * m + i] = w.fR[i][l], out->wW[b * m + i] = w.fW[i][l];
        }
    }
    free(w.block);
    return 0;
}

/* Lane l of row b's values (n per row) into dst (n vectors); 0 for lanes without a row. */
static void NAME(load_rows)(vec *dst, const real *src, const int64_t *row, int64_t n) {
    for (int64_t q = 0; q < n; q++) dst[q] = B(0);
    for (int l = 0; l < V; l++)
        if (row[l] >= 0)
            for (int64_t q = 0; q < n; q++) dst[q][l] = src[row[l] * n + q];
}

#include "mimn_kernel_backward.h"

#undef real
#undef vec
#undef ivec
#undef B
#undef IN_REGISTER
#undef SBUF
