/* Vector operations of MIMN's fused write (included by mimn_kernel.c, once per element type): exp,
 * tanh, sigmoid, matrix-vector products and their transposes, the buffered weight-gradient products,
 * the GRU step and its backward, normalize, softmax, slot gathers. */
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
    const vec c = B(1) / NAME(vmax)(norm, B(1e-12)); /* one division, n products */
    for (int64_t q = 0; q < n; q++) y[q] = x[q] * c;
    return norm;
}

/* normalize's backward: dx += (dy - y (y . dy) [|x| >= eps]) / max(|x|, eps). */
static void NAME(normalize_back)(vec *dx, const vec *dy, const vec *y, vec norm, int64_t n) {
    const vec c = B(1) / NAME(vmax)(norm, B(1e-12));
    vec dot = B(0);
    for (int64_t q = 0; q < n; q++) dot += y[q] * dy[q];
    dot = NAME(sel)(norm >= B(1e-12), dot, B(0));
    for (int64_t q = 0; q < n; q++) dx[q] += (dy[q] - y[q] * dot) * c;
}

static void NAME(softmax)(vec *y, const vec *x, int64_t n) {
    vec mx = x[0], s = B(0);
    for (int64_t i = 1; i < n; i++) mx = NAME(vmax)(x[i], mx);
    for (int64_t i = 0; i < n; i++) s += (y[i] = NAME(vexp)(x[i] - mx));
    s = B(1) / s;
    for (int64_t i = 0; i < n; i++) y[i] = y[i] * s;
}

/* Lane l's slot chosen[l] of src (m X E vectors) into dst (E vectors). */
static void NAME(gather)(vec *dst, const vec *src, const int64_t *chosen, int64_t E) {
    real *out = (real *)dst;
    for (int l = 0; l < V; l++) {
        const real *slot = (const real *)(src + chosen[l] * E);
        for (int64_t q = 0; q < E; q++) out[q * V + l] = slot[q * V + l];
    }
}
