/* The backward of MIMN's fused write (included by mimn_kernel.c, once per element type). */

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
