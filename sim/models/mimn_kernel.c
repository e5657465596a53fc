/* MIMN's memory write, forward and backward, fused: built and called by sim/models/mimn_fused.py, whose
 * docstring says what this computes and why the results are those of the reference (MIMN._step in
 * sim/models/mimn.py). Every function here is one operation of _step, or its derivative, on V rows.
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
#define SBUF 32 /* (step, chosen slot) pairs a weight gradient's products are buffered over */

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

static inline vec NAME(sel)(ivec mask, vec a, vec b) { return (vec)(((ivec)a & mask) | ((ivec)b & ~mask)); }
static inline vec NAME(vmax)(vec a, vec b) { return NAME(sel)(a > b, a, b); }

#if VEC_POLY
/* exp by Cephes' expf: 2^n exp(r), |r| <= ln2 / 2, a degree-7 polynomial; a few ulp. Arguments are
 * clamped to [-87.3, 88] (results stay normal and finite; no use here needs more). */
static inline vec NAME(vexp)(vec x) {
    x = NAME(sel)(x > B(88.0), B(88.0), x);
    x = NAME(sel)(x < B(-87.3), B(-87.3), x);
    const vec fx = x * B(1.44269504088896341) + B(0.5);
    vec t = __builtin_convertvector(__builtin_convertvector(fx, ivec), vec);
    t = t - NAME(sel)(t > fx, B(1), B(0)); /* floor */
    x = x - t * B(0.693359375) - t * B(-2.12194440e-4);
    vec y = B(1.9875691500E-4);
    y = y * x + B(1.3981999507E-3);
    y = y * x + B(8.3334519073E-3);
    y = y * x + B(4.1665795894E-2);
    y = y * x + B(1.6666665459E-1);
    y = y * x + B(5.0000001201E-1);
    y = y * (x * x) + x + B(1);
    const ivec e = (__builtin_convertvector(t, ivec) + 127) << 23;
    return y * (vec)e;
}

/* tanh: its Taylor series to x^11 below |x| = 0.3 (error < 1e-8 relative), (1 - t) / (1 + t) with
 * t = exp(-2|x|) above. */
static inline vec NAME(vtanh)(vec x) {
    const ivec neg = x < B(0);
    const vec ax = NAME(sel)(neg, -x, x);
    const vec t = NAME(vexp)(B(-2) * ax);
    vec big = (B(1) - t) / (B(1) + t);
    big = NAME(sel)(neg, -big, big);
    const vec x2 = x * x;
    const vec small = x + x * x2 * (B(-1.0 / 3) + x2 * (B(2.0 / 15) + x2 * (B(-17.0 / 315) + x2 * (B(62.0 / 2835)
                                                                        + x2 * B(-1382.0 / 155925)))));
    return NAME(sel)(ax < B(0.3), small, big);
}
#else
static inline vec NAME(vexp)(vec x) {
    for (int l = 0; l < V; l++) x[l] = exp(x[l]);
    return x;
}

static inline vec NAME(vtanh)(vec x) {
    for (int l = 0; l < V; l++) x[l] = tanh(x[l]);
    return x;
}
#endif

static inline vec NAME(vsigmoid)(vec x) { return B(1) / (B(1) + NAME(vexp)(-x)); }

static inline vec NAME(vsqrt)(vec x) {
    for (int l = 0; l < V; l++) x[l] = sqrt(x[l]);
    return x;
}

/* torch.nn.functional.softplus with beta 1, threshold 20 (two per step: the C library's, lane by lane). */
static inline vec NAME(vsoftplus)(vec x) {
    for (int l = 0; l < V; l++) x[l] = x[l] > (real)20 ? x[l] : log1p(exp(x[l]));
    return x;
}

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

/* Keeps a vector in a register: without it GCC reloads v[q] from memory for each of the eight products
 * below (as a memory operand), and loads, not multiply-adds, bound the loops. Only where a vector fits
 * one register (float with AVX). */
#if VEC_POLY && defined(__AVX__)
#define IN_REGISTER(x) __asm__("" : "+x"(x))
#else
#define IN_REGISTER(x) (void)(x)
#endif

/* y[j] = x0[j] (or 0) + b[j] (or 0) + sum_q W[j][q] v[q], W out x in; eight outputs share each v[q]. */
static void NAME(mv)(vec *y, const vec *x0, const real *b, const real *W, const vec *v, int64_t in, int64_t out) {
    int64_t j = 0;
    for (; j + 8 <= out; j += 8) {
        vec acc[8];
        for (int u = 0; u < 8; u++) acc[u] = (x0 ? x0[j + u] : B(0)) + (b ? b[j + u] : (real)0);
        const real *w0 = W + j * in;
        for (int64_t q = 0; q < in; q++) {
            vec vq = v[q];
            IN_REGISTER(vq);
            for (int u = 0; u < 8; u++) acc[u] += w0[u * in + q] * vq;
        }
        for (int u = 0; u < 8; u++) y[j + u] = acc[u];
    }
    for (; j < out; j++) {
        vec acc = (x0 ? x0[j] : B(0)) + (b ? b[j] : (real)0);
        for (int64_t q = 0; q < in; q++) acc += W[j * in + q] * v[q];
        y[j] = acc;
    }
}

/* dx[q] += sum_j WT[q][j] dy[j], WT in x out (the backward of mv); eight inputs share each dy[j]. */
static void NAME(mvT)(vec *dx, const real *WT, const vec *dy, int64_t in, int64_t out) {
    int64_t q = 0;
    for (; q + 8 <= in; q += 8) {
        vec acc[8];
        for (int u = 0; u < 8; u++) acc[u] = dx[q + u];
        const real *w0 = WT + q * out;
        for (int64_t j = 0; j < out; j++) {
            vec dj = dy[j];
            IN_REGISTER(dj);
            for (int u = 0; u < 8; u++) acc[u] += w0[u * out + j] * dj;
        }
        for (int u = 0; u < 8; u++) dx[q + u] = acc[u];
    }
    for (; q < in; q++)
        for (int64_t j = 0; j < out; j++) dx[q] += WT[q * out + j] * dy[j];
}

static real NAME(hsum)(vec x) {
    real s = 0;
    for (int l = 0; l < V; l++) s += x[l];
    return s;
}

/* G += the buffered products: tiles of 2 outputs X 4 inputs in registers over the buffered steps. */
static void NAME(outer_flush)(NAME(Outer) *o) {
    const int64_t J = o->J, Q = o->Q, n = o->n;
    if (!n) return;
    int64_t j = 0;
    for (; j + 2 <= J; j += 2) {
        const vec *d0 = o->dy + j * SBUF, *d1 = d0 + SBUF;
        int64_t q = 0;
        for (; q + 4 <= Q; q += 4) {
            vec a[2][4] = {{B(0), B(0), B(0), B(0)}, {B(0), B(0), B(0), B(0)}};
            const vec *v0 = o->v + q * SBUF;
            for (int64_t s = 0; s < n; s++) {
                vec e0 = d0[s], e1 = d1[s];
                IN_REGISTER(e0);
                IN_REGISTER(e1);
                for (int u = 0; u < 4; u++) {
                    vec vu = v0[u * SBUF + s];
                    IN_REGISTER(vu);
                    a[0][u] += e0 * vu;
                    a[1][u] += e1 * vu;
                }
            }
            for (int u = 0; u < 4; u++) {
                o->G[j * Q + q + u] += NAME(hsum)(a[0][u]);
                o->G[(j + 1) * Q + q + u] += NAME(hsum)(a[1][u]);
            }
        }
        for (; q < Q; q++) {
            vec a0 = B(0), a1 = B(0);
            for (int64_t s = 0; s < n; s++) a0 += d0[s] * o->v[q * SBUF + s], a1 += d1[s] * o->v[q * SBUF + s];
            o->G[j * Q + q] += NAME(hsum)(a0);
            o->G[(j + 1) * Q + q] += NAME(hsum)(a1);
        }
    }
    for (; j < J; j++)
        for (int64_t q = 0; q < Q; q++) {
            vec a = B(0);
            for (int64_t s = 0; s < n; s++) a += o->dy[j * SBUF + s] * o->v[q * SBUF + s];
            o->G[j * Q + q] += NAME(hsum)(a);
        }
    o->n = 0;
}

/* Buffers dy (J vectors) and v (Q vectors) of one step for G += dy v^T, lane by lane. */
static void NAME(outer)(NAME(Outer) *o, const vec *dy, const vec *v) {
    for (int64_t j = 0; j < o->J; j++) o->dy[j * SBUF + o->n] = dy[j];
    for (int64_t q = 0; q < o->Q; q++) o->v[q * SBUF + o->n] = v[q];
    if (++o->n == SBUF) NAME(outer_flush)(o);
}

static void NAME(reduce)(real *G, const vec *gW, int64_t n) {
    for (int64_t i = 0; i < n; i++) G[i] += NAME(hsum)(gW[i]);
}

/* One GRU step in PyTorch's gate layout (r, z, n): gi = W_i x + b_i, gh = W_h h + b_h, both 3 X width. */
static void NAME(gru)(vec *hn, vec *rg, vec *zg, vec *n, const vec *gi, const vec *gh, const vec *h, int64_t width) {
    for (int64_t j = 0; j < width; j++) {
        rg[j] = NAME(vsigmoid)(gi[j] + gh[j]);
        zg[j] = NAME(vsigmoid)(gi[width + j] + gh[width + j]);
        n[j] = NAME(vtanh)(gi[2 * width + j] + rg[j] * gh[2 * width + j]);
        hn[j] = n[j] + zg[j] * (h[j] - n[j]);
    }
}

/* The GRU step's backward: dgi, dgh (3 X width) from dhn; dh = its direct part (z dhn). ghn: gh's n part. */
static void NAME(gru_back)(vec *dgi, vec *dgh, vec *dh, const vec *dhn, const vec *rg, const vec *zg, const vec *n,
                           const vec *ghn, const vec *h, int64_t width) {
    for (int64_t j = 0; j < width; j++) {
        const vec dn = dhn[j] * (B(1) - zg[j]);
        const vec dz = dhn[j] * (h[j] - n[j]);
        dh[j] = dhn[j] * zg[j];
        const vec dnp = dn * (B(1) - n[j] * n[j]);
        const vec dr = dnp * ghn[j];
        const vec dzp = dz * zg[j] * (B(1) - zg[j]);
        const vec drp = dr * rg[j] * (B(1) - rg[j]);
        dgi[j] = dgh[j] = drp;
        dgi[width + j] = dgh[width + j] = dzp;
        dgi[2 * width + j] = dnp;
        dgh[2 * width + j] = dnp * rg[j];
    }
}

/* torch.nn.functional.normalize: y = x / max(|x|, 1e-12); returns |x|. */
static vec NAME(normalize)(vec *y, const vec *x, int64_t n) {
    vec s = B(0);
    for (int64_t q = 0; q < n; q++) s += x[q] * x[q];
    const vec norm = NAME(vsqrt)(s);
    const vec c = NAME(vmax)(norm, B(1e-12));
    for (int64_t q = 0; q < n; q++) y[q] = x[q] / c;
    return norm;
}

/* normalize's backward: dx += (dy - y (y . dy) [|x| >= eps]) / max(|x|, eps). */
static void NAME(normalize_back)(vec *dx, const vec *dy, const vec *y, vec norm, int64_t n) {
    const vec c = NAME(vmax)(norm, B(1e-12));
    vec dot = B(0);
    for (int64_t q = 0; q < n; q++) dot += y[q] * dy[q];
    dot = NAME(sel)(norm >= B(1e-12), dot, B(0));
    for (int64_t q = 0; q < n; q++) dx[q] += (dy[q] - y[q] * dot) / c;
}

static void NAME(softmax)(vec *y, const vec *x, int64_t n) {
    vec mx = x[0], s = B(0);
    for (int64_t i = 1; i < n; i++) mx = NAME(vmax)(x[i], mx);
    for (int64_t i = 0; i < n; i++) s += (y[i] = NAME(vexp)(x[i] - mx));
    for (int64_t i = 0; i < n; i++) y[i] = y[i] / s;
}

/* Lane l's slot chosen[l] of src (m X E vectors) into dst (E vectors). */
static void NAME(gather)(vec *dst, const vec *src, const int64_t *chosen, int64_t E) {
    real *out = (real *)dst;
    for (int l = 0; l < V; l++) {
        const real *slot = (const real *)(src + chosen[l] * E);
        for (int64_t q = 0; q < E; q++) out[q * V + l] = slot[q * V + l];
    }
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
        const vec c = NAME(vmax)(w->nk[j], B(1e-12));
        for (int64_t q = 0; q < E; q++) w->kh[j * E + q] = w->p[j * E + q] / c;
    }
    for (int64_t i = 0; i < m; i++) {
        const vec c = NAME(vmax)(w->nM[i], B(1e-12));
        for (int64_t q = 0; q < E; q++) w->Mh[i * E + q] = M[i * E + q] / c;
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

/* The backward of mimn_forward for blocks [R->blk0, R->blk1), from the gradients of the final states
 * (gout) and the saved states: each step is computed again from its saved state, then differentiated.
 * Writes the behaviors' gradient into dx (B * L X E; rows of padding are left alone) and adds the
 * parameters' gradients to G. 0, or -1 without memory. */
int NAME(mimn_backward)(const MimnDims *d, const NAME(Weights) *W, const MimnRows *R, const real *x,
                        const real *saved, const NAME(State) *gout, real *dx, NAME(Grads) *G) {
    const int64_t E = d->E, H = d->H, m = d->m, k = d->k, P = 4 * E + 2, sv = NAME(saved_size)(d);
    NAME(Work) w;
    if (NAME(work_alloc)(d, &w)) return -1;
    w.oWx.G = G->Wx, w.oWch.G = G->Wch, w.oWhd.G = G->Whd, w.oWm.G = G->Wm, w.oWmh.G = G->Wmh;
    int64_t row[V], len[V], idx[V];
    for (int64_t blk = R->blk0; blk < R->blk1; blk++) {
        NAME(lanes)(R, blk, row, len);
        NAME(load_rows)(w.dh, gout->h, row, H);
        NAME(load_rows)(w.dr, gout->r, row, E);
        NAME(load_rows)(w.dM, gout->M, row, m * E);
        NAME(load_rows)(w.dg, gout->g, row, m);
        NAME(load_rows)(w.dS, gout->S, row, m * E);
        NAME(load_rows)(w.gR, gout->wR, row, m);
        NAME(load_rows)(w.gW, gout->wW, row, m);
        for (int64_t s = R->boff[blk + 1] - R->boff[blk] - 1; s >= 0; s--) {
            const ivec act = NAME(active)(len, s);
            ivec last;
            for (int l = 0; l < V; l++) last[l] = s == len[l] - 1 ? -1 : 0;
            NAME(load_x)(d, R, &w, x, row, len, s, idx);
            const vec *sp = (const vec *)saved + (R->boff[blk] + s) * sv;
            const vec *h = sp, *r = sp + H, *M = sp + H + E, *g = sp + H + E + m * E;
            memcpy(w.Sc, sp + H + E + m * E + m, k * E * sizeof(vec));
            NAME(set_frame)(d, &w, (vec *)(sp + NAME(state_size)(d)));
            NAME(step_again)(d, &w, r, M, g);
            /* The MIU (after the write): its gradient reaches the written memory and the behavior. */
            memcpy(w.dMn, w.dM, m * E * sizeof(vec));
            for (int64_t q = 0; q < E; q++) w.dx[q] = B(0);
            for (int64_t j = 0; j < k; j++) {
                const int64_t *c = w.chosen + j * V;
                const vec *Sc = w.Sc + j * E;
                NAME(gather)(w.dSc, w.dS, c, E); /* the gradient of the updated MIU state */
                NAME(gru_back)(w.dxin, w.dgh2, w.dSc, w.dSc, w.rg2 + j * E, w.zg2 + j * E, w.n2 + j * E,
                               w.ghn2 + j * E, Sc, E);
                for (int64_t q = 0; q < 3 * E; q++) {
                    w.dxin[q] = NAME(sel)(act, w.dxin[q], B(0));
                    w.dgh2[q] = NAME(sel)(act, w.dgh2[q], B(0));
                    w.gbm[q] += w.dxin[q];
                    w.gbmh[q] += w.dgh2[q];
                }
                for (int64_t q = 0; q < 2 * E; q++) w.dxm[q] = B(0);
                NAME(mvT)(w.dxm, W->WmT, w.dxin, 2 * E, 3 * E);
                for (int64_t q = 0; q < E; q++) w.dx[q] += w.dxm[q];
                NAME(outer)(&w.oWm, w.dxin, w.xm + j * 2 * E);
                NAME(outer)(&w.oWmh, w.dgh2, Sc);
                NAME(mvT)(w.dSc, W->WmhT, w.dgh2, E, 3 * E);
                for (int l = 0; l < V; l++) {
                    if (!act[l]) continue;
                    const int64_t o = c[l] * E;
                    for (int64_t q = 0; q < E; q++) {
                        w.dMn[o + q][l] += w.dxm[E + q][l];
                        w.dS[o + q][l] = w.dSc[q][l];
                    }
                }
            }
            /* The row's newest behavior (its last step) also produced the returned weights. */
            for (int64_t i = 0; i < m; i++) {
                w.dwR[i] = NAME(sel)(last, w.gR[i], B(0));
                w.dwW[i] = w.dg[i] + NAME(sel)(last, w.gW[i], B(0));
            }
            /* Read r' = sum_i wR_i M'_i and write M' = M (1 - wW e) + wW a; dMn becomes dL/dM. */
            for (int64_t q = 0; q < E; q++) w.de[q] = w.da[q] = B(0);
            for (int64_t i = 0; i < m; i++) {
                vec dwr = B(0), dww = B(0);
                const vec ww = w.wW[i];
                for (int64_t q = 0; q < E; q++) {
                    const vec dmn = w.dMn[i * E + q] + w.wR[i] * w.dr[q];
                    const vec mv = M[i * E + q];
                    dwr += w.dr[q] * w.Mn[i * E + q];
                    dww += dmn * (w.a[q] - mv * w.e[q]);
                    w.de[q] -= dmn * mv * ww;
                    w.da[q] += dmn * ww;
                    w.dMn[i * E + q] = dmn * (B(1) - ww * w.e[q]);
                }
                w.dwR[i] += dwr;
                w.dwW[i] += dww;
            }
            /* Softmaxes of the read logits and of the write logits with the usage re-scaling. */
            vec sW = B(0), sR = B(0);
            for (int64_t i = 0; i < m; i++) {
                sW += w.wW[i] * w.dwW[i];
                sR += w.wR[i] * w.dwR[i];
            }
            vec dbeta[2] = {B(0), B(0)}, sq = B(0);
            for (int64_t i = 0; i < m; i++) {
                const vec dxW = w.wW[i] * (w.dwW[i] - sW), dxR = w.wR[i] * (w.dwR[i] - sR);
                w.dc[i] = dxR * w.beta[0];
                w.dc[m + i] = dxW * w.beta[1];
                dbeta[0] += dxR * w.cos[i];
                dbeta[1] += dxW * w.cos[m + i];
                sq += dxW;
                w.du[i] = dxW;
            }
            for (int64_t i = 0; i < m; i++) /* log_softmax */
                w.du[i] = NAME(sel)(act, w.du[i] - NAME(vexp)(w.q[i]) * sq, B(0));
            for (int64_t j = 0; j < m; j++) w.dsh[j] = B(0);
            NAME(mvT)(w.dsh, W->WgT, w.du, m, m);
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < m; j++) w.gWg[i * m + j] += w.du[i] * w.sh[j];
            vec dot = B(0);
            for (int64_t j = 0; j < m; j++) dot += w.dsh[j] * g[j];
            /* share = g / max(sum g, 1): the clamp passes the gradient where sum g >= 1. */
            const vec dsum = NAME(sel)(w.Ssum[0] >= B(1), -dot / (w.Sg[0] * w.Sg[0]), B(0));
            for (int64_t j = 0; j < m; j++) w.dg[j] = NAME(sel)(act, w.dg[j] + w.dsh[j] / w.Sg[0] + dsum, w.dg[j]);
            /* Cosine addressing: unit keys . unit slots. */
            for (int64_t q = 0; q < 2 * E; q++) w.dkh[q] = B(0);
            for (int64_t q = 0; q < m * E; q++) w.dMh[q] = B(0);
            for (int j = 0; j < 2; j++)
                for (int64_t i = 0; i < m; i++) {
                    const vec dcji = w.dc[j * m + i];
                    for (int64_t q = 0; q < E; q++) {
                        w.dkh[j * E + q] += dcji * w.Mh[i * E + q];
                        w.dMh[i * E + q] += dcji * w.kh[j * E + q];
                    }
                }
            for (int64_t i = 0; i < m; i++)
                NAME(normalize_back)(w.dMn + i * E, w.dMh + i * E, w.Mh + i * E, w.nM[i], E);
            NAME(keep)(w.dM, w.dMn, act, m * E);
            /* Heads: keys, strengths (1 + softplus), erase (sigmoid), add (tanh). */
            for (int64_t q = 0; q < P; q++) w.dp[q] = B(0);
            for (int j = 0; j < 2; j++) {
                NAME(normalize_back)(w.dp + j * E, w.dkh + j * E, w.kh + j * E, w.nk[j], E);
                vec v = w.p[2 * E + j];
                for (int l = 0; l < V; l++) {
                    const real x0 = v[l], ez = exp(x0);
                    v[l] = x0 > (real)20 ? dbeta[j][l] : dbeta[j][l] * ez / (ez + (real)1);
                }
                w.dp[2 * E + j] = v;
            }
            for (int64_t q = 0; q < E; q++) {
                w.dp[2 * E + 2 + q] = w.de[q] * w.e[q] * (B(1) - w.e[q]);
                w.dp[3 * E + 2 + q] = w.da[q] * (B(1) - w.a[q] * w.a[q]);
            }
            for (int64_t q = 0; q < P; q++) {
                w.dp[q] = NAME(sel)(act, w.dp[q], B(0));
                w.gbhd[q] += w.dp[q];
            }
            memcpy(w.dhn, w.dh, H * sizeof(vec));
            NAME(mvT)(w.dhn, W->WhdT, w.dp, H, P);
            NAME(outer)(&w.oWhd, w.dp, w.hn);
            /* The controller's GRU: gi = W_x [e_t, r] + b_x, gh = W_ch h + b_ch. */
            NAME(gru_back)(w.dgi, w.dgh, w.dhd, w.dhn, w.rg, w.zg, w.n, w.ghn, h, H);
            for (int64_t q = 0; q < 3 * H; q++) {
                w.dgi[q] = NAME(sel)(act, w.dgi[q], B(0));
                w.dgh[q] = NAME(sel)(act, w.dgh[q], B(0));
                w.gbx[q] += w.dgi[q];
                w.gbch[q] += w.dgh[q];
            }
            for (int64_t q = 0; q < 2 * E; q++) w.dxr[q] = B(0);
            NAME(mvT)(w.dxr, W->WxT, w.dgi, 2 * E, 3 * H);
            NAME(outer)(&w.oWx, w.dgi, w.xr);
            for (int64_t q = 0; q < E; q++) {
                w.dx[q] += w.dxr[q];
                w.dr[q] = NAME(sel)(act, w.dxr[E + q], w.dr[q]);
            }
            NAME(keep)(w.dh, w.dhd, act, H);
            NAME(mvT)(w.dh, W->WchT, w.dgh, H, 3 * H);
            NAME(outer)(&w.oWch, w.dgh, h);
            for (int l = 0; l < V; l++)
                if (idx[l] >= 0)
                    for (int64_t q = 0; q < E; q++) dx[idx[l] * E + q] = w.dx[q][l];
        }
        /* Before a row's oldest behavior the memory was M_0; the other states were zeros. */
        for (int64_t q = 0; q < m * E; q++) w.gM0[q] += w.dM[q];
    }
    NAME(Outer) *outers[] = {&w.oWx, &w.oWch, &w.oWhd, &w.oWm, &w.oWmh};
    for (int i = 0; i < 5; i++) NAME(outer_flush)(outers[i]);
    NAME(reduce)(G->bx, w.gbx, 3 * H);
    NAME(reduce)(G->bch, w.gbch, 3 * H);
    NAME(reduce)(G->bhd, w.gbhd, P);
    NAME(reduce)(G->Wg, w.gWg, m * m);
    NAME(reduce)(G->bm, w.gbm, 3 * E);
    NAME(reduce)(G->bmh, w.gbmh, 3 * E);
    NAME(reduce)(G->M0, w.gM0, m * E);
    free(w.block);
    return 0;
}

#undef real
#undef vec
#undef ivec
#undef B
#undef IN_REGISTER
#undef SBUF
