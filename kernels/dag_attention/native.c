/* dag_attention: the path-gated linear attention of pLSTM on DAGs, one graph at a time.
 *
 * Compiled at first use by native.py (plain C, no Python or torch headers), once with
 * -DREAL=float and once with -DREAL=double; called through ctypes. The math, the plan
 * arrays and the backward are in README.md of this folder; the readable reference with the
 * same signature is reference.py.
 *
 * Per graph (W nodes, F DAG edges in a topological order of the line graph) and head:
 *
 *   P[p] = S_p e_{src(p)} + sum_{p' -> p} T_{p'p} P[p']       (F x W path weights)
 *   G[n] = sum_{p : dst(p) = n} M_p P[p]  + D_n e_n           (W x W gating, Eq. 7)
 *   h_n  = sum_{m in reach(n)} (q_n . k_m) G[n][m] v_m
 *
 * reach(n) is n and the nodes with a line-graph path into n (G's structural support); the
 * products run over it only, so the work is O(H (L W + F W + pairs C)) per graph, with
 * "pairs" the number of (ancestor, descendant) node pairs, instead of the dense
 * O(H (F^2 W + W^2 C)). Every graph writes only its own nodes', edges' and line-graph
 * edges' entries, so graphs run in parallel without locks.
 *
 * Two forms of the products, the same sums: graphs with at least dense_rows pairs per node
 * on average (grids: about N / 4 per corner) run the row kernels (every row's scores over
 * its span with the vector lanes on the nodes, its accumulators in registers, the common
 * head sizes compiled as constants); sparser graphs (molecules: about 7 per node) go pair by
 * pair, where the row kernels' set-up per row would cost more than it saves.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#define REAL float
#endif
typedef REAL real;
typedef int64_t i64;

/* The plan of a batch: G graphs; graph g has nodes node[node_ptr[g] .. node_ptr[g+1]) and
 * DAG edges at positions edge_ptr[g] .. edge_ptr[g+1] of edge/esrc/edst (esrc, edst: local
 * node positions); the line-graph edges into the edge at position p are
 * lg_ptr[p] .. lg_ptr[p+1] of lg_id (their column, for T and dT) and lg_pred (the local
 * position of their source edge, always < the local position of p). */
typedef struct {
    i64 num_graphs;
    const i64 *node_ptr, *node, *edge_ptr, *edge, *esrc, *edst, *lg_ptr, *lg_id, *lg_pred;
} Plan;

/* Scratch of one graph. */
typedef struct {
    i64 W, F, C;
    unsigned char *edge_reach; /* F x W */
    unsigned char *node_reach; /* W x W */
    i64 *pair_ptr;             /* W + 1 */
    i64 *pair_m;               /* <= W x W */
    i64 *lo, *hi;              /* F: P[p] is zero outside local nodes lo[p] .. hi[p]-1 */
    i64 *nlo, *nhi;            /* W: row n of G is zero outside nlo[n] .. nhi[n]-1 */
    real *P, *dP;              /* F x W */
    real *Gm, *dG;             /* W x W */
    real *q, *k, *v, *dh;      /* H x W x C: every head's rows, gathered once per graph */
    real *dq, *dk, *dv;        /* H x W x C (the forward's output goes to dq) */
    real *kT, *vT;             /* H x C x W: k and v transposed, for scores over a span */
    real *sc, *dw;             /* W: one row's q_n . k_m and dh_n . v_m */
    int dense; /* the graph runs the row kernels (see dense_rows) */
} Scratch;

static int scratch_alloc(Scratch *s, i64 W, i64 F, i64 H, i64 C, int backward) {
    memset(s, 0, sizeof(*s));
    s->W = W;
    s->F = F;
    s->C = C;
    i64 fw = F * W > 0 ? F * W : 1, ww = W * W, wc = H * W * C;
    s->edge_reach = malloc((size_t)fw);
    s->node_reach = malloc((size_t)ww);
    s->pair_ptr = malloc(sizeof(i64) * (size_t)(W + 1));
    s->pair_m = malloc(sizeof(i64) * (size_t)ww);
    s->lo = malloc(sizeof(i64) * (size_t)(F > 0 ? F : 1));
    s->hi = malloc(sizeof(i64) * (size_t)(F > 0 ? F : 1));
    s->nlo = malloc(sizeof(i64) * (size_t)W);
    s->nhi = malloc(sizeof(i64) * (size_t)W);
    s->kT = malloc(sizeof(real) * (size_t)wc);
    s->vT = malloc(sizeof(real) * (size_t)wc);
    s->sc = malloc(sizeof(real) * (size_t)W);
    s->dw = malloc(sizeof(real) * (size_t)W);
    s->P = malloc(sizeof(real) * (size_t)fw);
    s->Gm = malloc(sizeof(real) * (size_t)ww);
    s->q = malloc(sizeof(real) * (size_t)wc);
    s->k = malloc(sizeof(real) * (size_t)wc);
    s->v = malloc(sizeof(real) * (size_t)wc);
    s->dq = malloc(sizeof(real) * (size_t)wc);
    int ok = s->edge_reach && s->node_reach && s->pair_ptr && s->pair_m && s->lo && s->hi &&
             s->nlo && s->nhi && s->kT && s->vT && s->sc && s->dw && s->P && s->Gm &&
             s->q && s->k && s->v && s->dq;
    if (backward) {
        s->dP = malloc(sizeof(real) * (size_t)fw);
        s->dG = malloc(sizeof(real) * (size_t)ww);
        s->dh = malloc(sizeof(real) * (size_t)wc);
        s->dk = malloc(sizeof(real) * (size_t)wc);
        s->dv = malloc(sizeof(real) * (size_t)wc);
        ok = ok && s->dP && s->dG && s->dh && s->dk && s->dv;
    }
    return ok;
}

static void scratch_free(Scratch *s) {
    free(s->edge_reach);
    free(s->node_reach);
    free(s->pair_ptr);
    free(s->pair_m);
    free(s->lo);
    free(s->hi);
    free(s->nlo);
    free(s->nhi);
    free(s->kT);
    free(s->vT);
    free(s->sc);
    free(s->dw);
    free(s->P);
    free(s->Gm);
    free(s->q);
    free(s->k);
    free(s->v);
    free(s->dP);
    free(s->dG);
    free(s->dh);
    free(s->dq);
    free(s->dk);
    free(s->dv);
}

/* The structural support of G: for every local node n, the nodes m with G[n][m] possibly
 * non-zero (m = n, or a line-graph path from an edge leaving m into an edge entering n),
 * as CSR pair_ptr / pair_m, increasing m; every edge's span lo[p] .. hi[p]-1, the
 * smallest range of local nodes holding the support of P[p] (the loops over a row of P or
 * dP run over it only: on a grid in row-major order it is half a row on average); and
 * every node's span nlo[n] .. nhi[n]-1, the union of its in-edges' spans and n, which holds
 * row n's support. Head-independent: built once per graph. */
static inline void or_into(unsigned char *restrict dst, const unsigned char *restrict src,
                           i64 len) {
#pragma omp simd
    for (i64 m = 0; m < len; ++m) dst[m] |= src[m];
}

static void graph_pairs(Scratch *s, const Plan *pl, i64 e0) {
    const i64 W = s->W, F = s->F;
    memset(s->node_reach, 0, (size_t)(W * W));
    for (i64 n = 0; n < W; ++n) {
        s->nlo[n] = n;
        s->nhi[n] = n + 1;
    }
    for (i64 p = 0; p < F; ++p) {
        unsigned char *row = s->edge_reach + p * W;
        i64 lo = pl->esrc[e0 + p], hi = lo + 1;
        for (i64 j = pl->lg_ptr[e0 + p]; j < pl->lg_ptr[e0 + p + 1]; ++j) {
            const i64 pp = pl->lg_pred[j];
            lo = s->lo[pp] < lo ? s->lo[pp] : lo;
            hi = s->hi[pp] > hi ? s->hi[pp] : hi;
        }
        s->lo[p] = lo;
        s->hi[p] = hi;
        memset(row + lo, 0, (size_t)(hi - lo));
        row[pl->esrc[e0 + p]] = 1;
        for (i64 j = pl->lg_ptr[e0 + p]; j < pl->lg_ptr[e0 + p + 1]; ++j) {
            const i64 pp = pl->lg_pred[j];
            or_into(row + s->lo[pp], s->edge_reach + pp * W + s->lo[pp], s->hi[pp] - s->lo[pp]);
        }
        const i64 n = pl->edst[e0 + p];
        or_into(s->node_reach + n * W + lo, row + lo, hi - lo);
        s->nlo[n] = lo < s->nlo[n] ? lo : s->nlo[n];
        s->nhi[n] = hi > s->nhi[n] ? hi : s->nhi[n];
    }
    i64 count = 0;
    s->pair_ptr[0] = 0;
    for (i64 n = 0; n < W; ++n) {
        const unsigned char *reach = s->node_reach + n * W;
        s->node_reach[n * W + n] = 1;
        for (i64 m = s->nlo[n]; m < s->nhi[n]; ++m) { /* branch-free: reach[m] is 0 or 1 */
            s->pair_m[count] = m;
            count += reach[m];
        }
        s->pair_ptr[n + 1] = count;
    }
}

/* q (times scale), k, v of every head of the graph's nodes into H x W x C blocks: one
 * sequential read of each node's [3, H, C] row (a read per head would stride through it). */
static void gather_qkv(Scratch *s, const Plan *pl, i64 n0, const real *qkv, i64 H,
                       real scale) {
    const i64 W = s->W, C = s->C;
    for (i64 i = 0; i < W; ++i) {
        const real *row = qkv + pl->node[n0 + i] * 3 * H * C;
        for (i64 h = 0; h < H; ++h) {
            const real *restrict q = row + h * C;
            real *restrict sq = s->q + (h * W + i) * C;
#pragma omp simd
            for (i64 c = 0; c < C; ++c) sq[c] = scale * q[c];
            memcpy(s->k + (h * W + i) * C, row + (H + h) * C, sizeof(real) * (size_t)C);
            memcpy(s->v + (h * W + i) * C, row + (2 * H + h) * C, sizeof(real) * (size_t)C);
            if (s->dense)
                for (i64 c = 0; c < C; ++c) {
                    s->kT[(h * C + c) * W + i] = row[(H + h) * C + c];
                    s->vT[(h * C + c) * W + i] = row[(2 * H + h) * C + c];
                }
        }
    }
}

/* (the simd pragma lets the compiler reassociate the sum into vector lanes; it needs
 * -fopenmp or -fopenmp-simd, without them it is ignored and the loop stays scalar) */
static inline real dot(const real *restrict a, const real *restrict b, i64 C) {
    real acc = 0;
#pragma omp simd reduction(+ : acc)
    for (i64 c = 0; c < C; ++c) acc += a[c] * b[c];
    return acc;
}

/* a . b over the entries where mask is set (an edge's structural support): outside it b is
 * an exact zero, and a may be an inf or NaN score of a node that reaches the row's node by
 * another edge, which must not enter the sum as 0 * inf = NaN */
static inline real masked_dot(const unsigned char *restrict mask, const real *restrict a,
                              const real *restrict b, i64 len) {
    real acc = 0;
#pragma omp simd reduction(+ : acc)
    for (i64 m = 0; m < len; ++m) acc += mask[m] ? a[m] * b[m] : (real)0;
    return acc;
}

static inline void axpy(real a, const real *restrict x, real *restrict y, i64 C) {
#pragma omp simd
    for (i64 c = 0; c < C; ++c) y[c] += a * x[c];
}

/* out[m] = y . x_m for the len nodes m of a span, from x transposed (xT[c * W + m], offset
 * to the span's first node): vector lanes run over the nodes, no horizontal sums. Nodes of
 * the span outside G's support get a score that is never read. */
static inline void span_scores(real *restrict out, const real *restrict xT,
                               const real *restrict y, i64 C, i64 W, i64 len) {
#pragma omp simd
    for (i64 m = 0; m < len; ++m) out[m] = 0;
    for (i64 c = 0; c < C; ++c) {
        const real yc = y[c];
        const real *restrict row = xT + c * W;
#pragma omp simd
        for (i64 m = 0; m < len; ++m) out[m] += yc * row[m];
    }
}

/* zero row n of a W x W matrix over n's span (the only entries its readers touch) */
static void zero_rows(real *A, const Scratch *s) {
    for (i64 n = 0; n < s->W; ++n)
        memset(A + n * s->W + s->nlo[n], 0, sizeof(real) * (size_t)(s->nhi[n] - s->nlo[n]));
}

/* rows [H, C] of node n of a [N, H, C] tensor <-> H x W x C block, for every head */
static void gather_heads(real *restrict block, const real *restrict x, const Plan *pl, i64 n0,
                         i64 W, i64 H, i64 C) {
    for (i64 i = 0; i < W; ++i)
        for (i64 h = 0; h < H; ++h)
            memcpy(block + (h * W + i) * C, x + (pl->node[n0 + i] * H + h) * C,
                   sizeof(real) * (size_t)C);
}

static void scatter_heads(real *restrict x, const real *restrict block, const Plan *pl, i64 n0,
                          i64 W, i64 H, i64 C) {
    for (i64 i = 0; i < W; ++i)
        for (i64 h = 0; h < H; ++h)
            memcpy(x + (pl->node[n0 + i] * H + h) * C, block + (h * W + i) * C,
                   sizeof(real) * (size_t)C);
}

/* P (path weights) and G (gating) of head h. */
static void paths_and_gating(Scratch *s, const Plan *pl, i64 n0, i64 e0, i64 H, i64 h,
                             const real *S, const real *T, const real *M, const real *D) {
    const i64 W = s->W, F = s->F;
    for (i64 p = 0; p < F; ++p) {
        real *row = s->P + p * W;
        memset(row + s->lo[p], 0, sizeof(real) * (size_t)(s->hi[p] - s->lo[p]));
        row[pl->esrc[e0 + p]] = S[pl->edge[e0 + p] * H + h];
        for (i64 j = pl->lg_ptr[e0 + p]; j < pl->lg_ptr[e0 + p + 1]; ++j) {
            const i64 pp = pl->lg_pred[j];
            const real t = T[pl->lg_id[j] * H + h];
            const real *pred = s->P + pp * W;
#pragma omp simd
            for (i64 m = s->lo[pp]; m < s->hi[pp]; ++m) row[m] += t * pred[m];
        }
    }
    zero_rows(s->Gm, s);
    for (i64 p = 0; p < F; ++p) {
        const real mk = M[pl->edge[e0 + p] * H + h];
        const real *row = s->P + p * W;
        real *into = s->Gm + pl->edst[e0 + p] * W;
#pragma omp simd
        for (i64 m = s->lo[p]; m < s->hi[p]; ++m) into[m] += mk * row[m];
    }
    for (i64 i = 0; i < W; ++i) s->Gm[i * W + i] += D[pl->node[n0 + i] * H + h];
}


/* The pair loops of one row i of G, with the head size C a compile-time constant where it
 * is one of the common sizes (row_forward / row_backward switch on it and inline these), so
 * that the row's accumulator and its q_i, dh_i stay in vector registers instead of being
 * read and written back through memory at every pair (a store-to-load chain that bounded
 * the loop). */
#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif
#define MAX_FIXED_C 64

/* o[0 .. C) += sum over the pairs r0 .. r1-1 of (sc[m] g[m]) v_m[0 .. C), rows of v ld apart
 * (C <= MAX_FIXED_C: a column block of the head when ld > C) */
static ALWAYS_INLINE void row_forward_c(const real *restrict sc, const real *restrict g,
                                        const i64 *restrict pm, i64 r0, i64 r1,
                                        const real *restrict v, real *restrict o, const i64 ld,
                                        const i64 C) {
    real acc[MAX_FIXED_C];
    for (i64 c = 0; c < C; ++c) acc[c] = 0;
    for (i64 r = r0; r < r1; ++r) {
        const i64 m = pm[r];
        const real w = sc[m] * g[m];
#pragma omp simd
        for (i64 c = 0; c < C; ++c) acc[c] += w * v[m * ld + c];
    }
    for (i64 c = 0; c < C; ++c) o[c] += acc[c];
}

/* the backward of row_forward_c, with score = sc[m] = q_i . k_m and dweight = dw[m] =
 * dh_i . v_m: dv_m += score g[m] dh_i, dq_i += dweight g[m] k_m, dk_m += dweight g[m] q_i,
 * dg[m] = dweight score (rewritten with the same value by every column block) */
static ALWAYS_INLINE void row_backward_c(const real *restrict sc, const real *restrict dw,
                                         const real *restrict g, real *restrict dg,
                                         const i64 *restrict pm, i64 r0, i64 r1,
                                         const real *restrict k, const real *restrict qi,
                                         const real *restrict dhi, real *restrict dk,
                                         real *restrict dv, real *restrict dqi, const i64 ld,
                                         const i64 C) {
    real acc[MAX_FIXED_C];
    for (i64 c = 0; c < C; ++c) acc[c] = 0;
    for (i64 r = r0; r < r1; ++r) {
        const i64 m = pm[r];
        const real score = sc[m], dweight = dw[m];
        const real weight = score * g[m], dscore = dweight * g[m];
#pragma omp simd
        for (i64 c = 0; c < C; ++c) {
            dv[m * ld + c] += weight * dhi[c];
            acc[c] += dscore * k[m * ld + c];
            dk[m * ld + c] += dscore * qi[c];
        }
        dg[m] = dweight * score;
    }
    for (i64 c = 0; c < C; ++c) dqi[c] += acc[c];
}

/* Calls BODY(cc) with cc the head size C as a compile-time constant for the common sizes,
 * else once per column block of at most MAX_FIXED_C columns (c0 its first column). */
#define FOR_HEAD_SIZE(C, BODY)                                                    \
    switch (C) {                                                                  \
    case 4: { const i64 c0 = 0; BODY(4); break; }                                 \
    case 8: { const i64 c0 = 0; BODY(8); break; }                                 \
    case 16: { const i64 c0 = 0; BODY(16); break; }                               \
    case 24: { const i64 c0 = 0; BODY(24); break; }                               \
    case 32: { const i64 c0 = 0; BODY(32); break; }                               \
    case 48: { const i64 c0 = 0; BODY(48); break; }                               \
    case 64: { const i64 c0 = 0; BODY(64); break; }                               \
    default:                                                                      \
        for (i64 c0 = 0; c0 < (C); c0 += MAX_FIXED_C) {                           \
            BODY((C) - c0 < MAX_FIXED_C ? (C) - c0 : MAX_FIXED_C);                \
        }                                                                         \
    }

static void row_forward(const real *restrict sc, const real *restrict g,
                        const i64 *restrict pm, i64 r0, i64 r1, const real *restrict v,
                        real *restrict o, i64 C) {
#define FORWARD(cc) row_forward_c(sc, g, pm, r0, r1, v + c0, o + c0, C, cc)
    FOR_HEAD_SIZE(C, FORWARD)
#undef FORWARD
}

static void row_backward(const real *restrict sc, const real *restrict dw,
                         const real *restrict g, real *restrict dg, const i64 *restrict pm,
                         i64 r0, i64 r1, const real *restrict k, const real *restrict qi,
                         const real *restrict dhi, real *restrict dk, real *restrict dv,
                         real *restrict dqi, i64 C) {
#define BACKWARD(cc)                                                                    \
    row_backward_c(sc, dw, g, dg, pm, r0, r1, k + c0, qi + c0, dhi + c0, dk + c0, dv + c0, \
                   dqi + c0, C, cc)
    FOR_HEAD_SIZE(C, BACKWARD)
#undef BACKWARD
}

/* Start graph g: its scratch, G's support pairs and every head's q, k, v rows. Returns 0
 * for a graph without nodes (nothing to do), -1 when the scratch cannot be allocated, else 1
 * (the caller frees the scratch). */
static int graph_begin(Scratch *s, const Plan *pl, i64 g, i64 H, i64 C, const real *qkv,
                       real scale, i64 dense_rows, int backward) {
    const i64 n0 = pl->node_ptr[g], W = pl->node_ptr[g + 1] - n0;
    const i64 e0 = pl->edge_ptr[g], F = pl->edge_ptr[g + 1] - e0;
    if (W == 0) return 0;
    if (!scratch_alloc(s, W, F, H, C, backward)) {
        scratch_free(s);
        return -1;
    }
    graph_pairs(s, pl, e0);
    s->dense = s->pair_ptr[W] >= dense_rows * W;
    gather_qkv(s, pl, n0, qkv, H, scale);
    return 1;
}

/* h [N, H, C] for the plan's nodes from qkv [N, 3, H, C] (contiguous), S, M [E, H],
 * T [L, H], D [N, H]; dense_rows as above. Returns the number of graphs whose scratch could not be allocated
 * (their outputs are left untouched; the caller raises). */
i64 dag_attention_forward(i64 num_graphs, const i64 *node_ptr, const i64 *node,
                          const i64 *edge_ptr, const i64 *edge, const i64 *esrc,
                          const i64 *edst, const i64 *lg_ptr, const i64 *lg_id,
                          const i64 *lg_pred, const real *qkv, i64 H, i64 C, double scale,
                          const real *S, const real *T, const real *M, const real *D, real *out,
                          i64 dense_rows, int num_threads) {
    const Plan pl = {num_graphs, node_ptr, node, edge_ptr, edge, esrc, edst, lg_ptr, lg_id,
                     lg_pred};
    i64 failed = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads) reduction(+ : failed)
    for (i64 g = 0; g < num_graphs; ++g) {
        Scratch s;
        const int started = graph_begin(&s, &pl, g, H, C, qkv, (real)scale, dense_rows, 0);
        failed += started < 0;
        if (started <= 0) continue;
        const i64 n0 = node_ptr[g], e0 = edge_ptr[g], W = s.W;
        memset(s.dq, 0, sizeof(real) * (size_t)(H * W * C));
        for (i64 h = 0; h < H; ++h) {
            paths_and_gating(&s, &pl, n0, e0, H, h, S, T, M, D);
            const real *q = s.q + h * W * C, *k = s.k + h * W * C, *v = s.v + h * W * C;
            const real *kT = s.kT + h * C * W;
            for (i64 i = 0; i < W; ++i) {
                real *o = s.dq + (h * W + i) * C;
                const i64 r0 = s.pair_ptr[i], r1 = s.pair_ptr[i + 1];
                if (!s.dense) {
                    for (i64 r = r0; r < r1; ++r) {
                        const i64 m = s.pair_m[r];
                        axpy(dot(q + i * C, k + m * C, C) * s.Gm[i * W + m], v + m * C, o, C);
                    }
                    continue;
                }
                span_scores(s.sc + s.nlo[i], kT + s.nlo[i], q + i * C, C, W, s.nhi[i] - s.nlo[i]);
                row_forward(s.sc, s.Gm + i * W, s.pair_m, s.pair_ptr[i], s.pair_ptr[i + 1], v,
                            o, C);
            }
        }
        scatter_heads(out, s.dq, &pl, n0, W, H, C);
        scratch_free(&s);
    }
    return failed;
}

/* The backward of dag_attention_forward for dh [N, H, C]: writes dqkv [N, 3, H, C] (the
 * gradient with respect to the unscaled q), dS, dM [E, H], dT [L, H], dD [N, H] at the
 * plan's entries (the caller zero-fills the others). P and G are recomputed (O(L W + F W)
 * per graph and head, small against the products). */
i64 dag_attention_backward(i64 num_graphs, const i64 *node_ptr, const i64 *node,
                           const i64 *edge_ptr, const i64 *edge, const i64 *esrc,
                           const i64 *edst, const i64 *lg_ptr, const i64 *lg_id,
                           const i64 *lg_pred, const real *qkv, i64 H, i64 C, double scale,
                           const real *S, const real *T, const real *M, const real *D,
                           const real *dh, real *dqkv, real *dS, real *dT, real *dM, real *dD,
                           i64 dense_rows, int num_threads) {
    const Plan pl = {num_graphs, node_ptr, node, edge_ptr, edge, esrc, edst, lg_ptr, lg_id,
                     lg_pred};
    i64 failed = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads) reduction(+ : failed)
    for (i64 g = 0; g < num_graphs; ++g) {
        Scratch s;
        const int started = graph_begin(&s, &pl, g, H, C, qkv, (real)scale, dense_rows, 1);
        failed += started < 0;
        if (started <= 0) continue;
        const i64 n0 = node_ptr[g], e0 = edge_ptr[g], W = s.W, F = s.F;
        gather_heads(s.dh, dh, &pl, n0, W, H, C);
        memset(s.dq, 0, sizeof(real) * (size_t)(H * W * C));
        memset(s.dk, 0, sizeof(real) * (size_t)(H * W * C));
        memset(s.dv, 0, sizeof(real) * (size_t)(H * W * C));
        for (i64 h = 0; h < H; ++h) {
            paths_and_gating(&s, &pl, n0, e0, H, h, S, T, M, D);
            const i64 off = h * W * C;
            const real *q = s.q + off, *k = s.k + off, *v = s.v + off, *dhh = s.dh + off;
            const real *kT = s.kT + off, *vT = s.vT + off; /* H x C x W: same offset */
            real *dq = s.dq + off, *dk = s.dk + off, *dv = s.dv + off;
            zero_rows(s.dG, &s);
            /* the masked attention: score = q_i . k_m, weight = score * G[i][m] */
            for (i64 i = 0; i < W; ++i) {
                const real *restrict qi = q + i * C, *restrict dhi = dhh + i * C;
                real *restrict dqi = dq + i * C;
                const i64 r0 = s.pair_ptr[i], r1 = s.pair_ptr[i + 1];
                if (s.dense) {
                    const i64 lo = s.nlo[i], len = s.nhi[i] - lo;
                    span_scores(s.sc + lo, kT + lo, qi, C, W, len); /* q_i . k_m */
                    span_scores(s.dw + lo, vT + lo, dhi, C, W, len); /* dh_i . v_m */
                    row_backward(s.sc, s.dw, s.Gm + i * W, s.dG + i * W, s.pair_m, r0, r1, k, qi,
                                 dhi, dk, dv, dqi, C);
                    continue;
                }
                for (i64 r = r0; r < r1; ++r) {
                    const i64 m = s.pair_m[r];
                    const real *restrict km = k + m * C, *restrict vm = v + m * C;
                    real *restrict dkm = dk + m * C, *restrict dvm = dv + m * C;
                    const real g_im = s.Gm[i * W + m];
                    real score = 0, dweight = 0; /* q_i . k_m and dh_i . v_m, one pass */
#pragma omp simd reduction(+ : score, dweight)
                    for (i64 c = 0; c < C; ++c) {
                        score += qi[c] * km[c];
                        dweight += dhi[c] * vm[c];
                    }
                    const real weight = score * g_im, dscore = dweight * g_im;
#pragma omp simd
                    for (i64 c = 0; c < C; ++c) {
                        dvm[c] += weight * dhi[c];
                        dqi[c] += dscore * km[c];
                        dkm[c] += dscore * qi[c];
                    }
                    s.dG[i * W + m] = dweight * score;
                }
            }
            for (i64 i = 0; i < W; ++i) dD[pl.node[n0 + i] * H + h] = s.dG[i * W + i];
            /* G[n] = sum_{dst(p) = n} M_p P[p]: dM_p = dG[n] . P[p], dP[p] = M_p dG[n] */
            for (i64 p = 0; p < F; ++p) {
                const i64 e = pl.edge[e0 + p];
                const i64 lo = s.lo[p], len = s.hi[p] - lo;
                const real *dgn = s.dG + pl.edst[e0 + p] * W + lo, *row = s.P + p * W + lo;
                real *drow = s.dP + p * W + lo;
                const real mk = M[e * H + h];
                dM[e * H + h] = masked_dot(s.edge_reach + p * W + lo, dgn, row, len);
#pragma omp simd
                for (i64 m = 0; m < len; ++m) drow[m] = mk * dgn[m];
            }
            /* P[p] = S_p e_src + sum T_{p'p} P[p'], in reverse topological order */
            for (i64 p = F - 1; p >= 0; --p) {
                const real *drow = s.dP + p * W;
                dS[pl.edge[e0 + p] * H + h] = drow[pl.esrc[e0 + p]];
                for (i64 j = pl.lg_ptr[e0 + p]; j < pl.lg_ptr[e0 + p + 1]; ++j) {
                    /* P[pp] and the part of dP[pp] that matters live in pp's span, which
                     * lies inside p's */
                    const i64 pp = pl.lg_pred[j], lo = s.lo[pp], len = s.hi[pp] - lo;
                    dT[pl.lg_id[j] * H + h] =
                        masked_dot(s.edge_reach + pp * W + lo, drow + lo, s.P + pp * W + lo, len);
                    axpy(T[pl.lg_id[j] * H + h], drow + lo, s.dP + pp * W + lo, len);
                }
            }
        }
        for (i64 i = 0; i < W; ++i) {
            real *row = dqkv + pl.node[n0 + i] * 3 * H * C;
            for (i64 h = 0; h < H; ++h) {
                const real *restrict dq = s.dq + (h * W + i) * C;
                real *restrict out_q = row + h * C;
#pragma omp simd
                for (i64 c = 0; c < C; ++c) out_q[c] = (real)scale * dq[c];
                memcpy(row + (H + h) * C, s.dk + (h * W + i) * C, sizeof(real) * (size_t)C);
                memcpy(row + (2 * H + h) * C, s.dv + (h * W + i) * C, sizeof(real) * (size_t)C);
            }
        }
        scratch_free(&s);
    }
    return failed;
}
