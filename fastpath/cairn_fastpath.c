/* Cairn's placement core: htools' cluster score, hbal's move search and hail's allocation search.
 *
 * Mirrors fastpath/pure.py function for function. The search scores candidates incrementally
 * (only the two or three nodes a move touches change the sums) and re-scores exactly, with the
 * two-pass formulas htools uses, every candidate that comes within a hair of the best, so the
 * choice and its tie-breaking are those of the exact score.
 */
#include <math.h>
#include <string.h>
#include "cairn_fastpath.h"

enum { FAILOVER, REPLACE_SECONDARY, REPLACE_AND_FAILOVER, REPLACE_PRIMARY, FAILOVER_AND_REPLACE,
       FAILOVER_TO_ANY };
enum { NO_DISK_MOVES = 1, NO_INSTANCE_MOVES = 2, EVAC_MODE = 4, IGNORE_SOFT = 8, NO_PRUNING = 16,
       RESTRICTED_MIGRATION = 32, FORTH_MOVES = 64 };
enum { OK, FAIL_MEM, FAIL_DISK, FAIL_CPU, FAIL_N1, FAIL_TAGS, FAIL_MIG, FAIL_DISKCOUNT, FAIL_SPINDLES };
enum { KIND_NONE, KIND_LOCAL, KIND_MIRRORED, KIND_SHARED };

static const double WEIGHTS[CAIRN_METRICS] = {0.5, 0.5, 1.0, 1.0, 4.0, 16.0, 0.5, 1.0, 1.0, 1.0, 1.0,
                                             2.0, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 0.25};
/* 0: stddev over online nodes, 1: sum over online, 2: sum over offline, 3: location map. */
static const int AGG[CAIRN_METRICS] = {0, 0, 1, 0, 2, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 3, 1};

#define MAX_TOUCH 4

typedef struct {
    int n;
    int k[MAX_TOUCH];
    cairn_nstate st[MAX_TOUCH];
} touch_set;

static int popcount64(uint64_t x) { return __builtin_popcountll(x); }
static int ntags(const cairn_cluster *c) { return c->n_tags > 0 ? c->n_tags : 1; }

/* Instance i's exclusion tags: tag_words 64-bit words per instance, tag t in bit t % 64 of word t / 64. */
#define FOR_EACH_TAG(c, i, t)                                                                      \
    for (int w_ = 0; w_ < (c)->tag_words; w_++)                                                    \
        for (uint64_t b_ = (c)->excl_mask[(size_t)(i) * (size_t)(c)->tag_words + (size_t)w_];     \
             b_ && ((t) = w_ * 64 + __builtin_ctzll(b_), 1); b_ &= b_ - 1)

/* Node k's location tags and instance i's desired locations: loc_words 64-bit words each, location l
 * in bit l % 64 of word l / 64. */
static const uint64_t *node_locs(const cairn_cluster *c, int k)
{
    return c->loc_mask + (size_t)k * (size_t)c->loc_words;
}

static const uint64_t *desired_locs(const cairn_cluster *c, int i)
{
    return c->desired_mask + (size_t)i * (size_t)c->loc_words;
}

/* The locations node k adds to the location-exclusion map: the map is merged over the online nodes
 * of one group, so an offline node (or none, k = -1) adds none (NULL). */
static const uint64_t *counted_locs(const cairn_cluster *c, int k)
{
    return k >= 0 && !c->offline[k] ? node_locs(c, k) : NULL;
}

/* Each location l in `only` (loc_words words; NULL: none) that is not in `but` (NULL: none). */
#define FOR_EACH_LOC(c, only, but, l)                                                              \
    for (int lw_ = 0; (only) != NULL && lw_ < (c)->loc_words; lw_++)                              \
        for (uint64_t lb_ = (only)[lw_] & ~((but) != NULL ? (but)[lw_] : 0);                       \
             lb_ && ((l) = lw_ * 64 + __builtin_ctzll(lb_), 1); lb_ &= lb_ - 1)

static int any_word(const uint64_t *words, int n)
{
    for (int w = 0; w < n; w++)
        if (words[w])
            return 1;
    return 0;
}

static int has_tags(const cairn_cluster *c, int i)
{
    for (int w = 0; w < c->tag_words; w++)
        if (c->excl_mask[(size_t)i * (size_t)c->tag_words + (size_t)w])
            return 1;
    return 0;
}

int cairn_stddev(const double *values, size_t n, double *out)
{
    if (out == NULL || (n > 0 && values == NULL))
        return CAIRN_EINVAL;
    if (n == 0) {
        *out = 0.0;
        return CAIRN_OK;
    }
    double sum = 0.0;
    for (size_t i = 0; i < n; i++)
        sum += values[i];
    double mean = sum / (double)n;
    double acc = 0.0;
    for (size_t i = 0; i < n; i++)
        acc += (values[i] - mean) * (values[i] - mean);
    *out = sqrt(acc / (double)n);
    return CAIRN_OK;
}

/* ---- per-node values ------------------------------------------------------------------------ */

static long u_mem(const cairn_cluster *c, int k, const cairn_nstate *st) { return c->mem_base[k] - st->i_mem; }

/* htools' free disk ratio: of spindles on exclusive storage, else of disk (1 without any). */
static double free_disk_ratio(const cairn_cluster *c, int k, long f_dsk, long f_sp)
{
    if (c->excl[k])
        return c->t_sp[k] > 0 ? (double)f_sp / c->t_sp[k] : 1.0;
    return c->t_dsk[k] > 0 ? (double)f_dsk / c->t_dsk[k] : 1.0;
}

/* Add (sign 1) or take away (sign -1) instance i's dynamic load: all of it as a primary, only its
 * disk load as a secondary (htools' setPri/addPri/removePri and their secondary twins). */
static void load_change(const cairn_cluster *c, double *load, int i, double sign, int primary)
{
    if (primary) {
        load[0] += sign * c->util_cpu[i];
        load[1] += sign * c->util_mem[i];
        load[3] += sign * c->util_net[i];
    }
    load[2] += sign * c->util_dsk[i];
}

/* Free spindles counting forthcoming instances (htools' fSpindlesForth): -1 once an instance
 * without a spindle count was added in this state, as calcNewFreeSpindlesForth sets it. */
static long forth_free_sp(const cairn_cluster *c, int k, const cairn_nstate *st)
{
    return st->fsp_reset ? -1 : st->f_sp - c->forth_fsp[k];
}

static void node_values(const cairn_cluster *c, int k, const cairn_nstate *st, double *v)
{
    /* Offline nodes loaded with unknown resources have zero totals; their ratios are unused. */
    double t_mem = c->t_mem[k];
    double p_dsk = free_disk_ratio(c, k, st->f_dsk, st->f_sp);
    double r = t_mem != 0 ? (double)st->r_mem / t_mem : 0.0;
    double cpu = c->t_cpu[k] != 0 && c->cpu_speed[k] != 0 ? (double)st->u_cpu / c->t_cpu[k] / c->cpu_speed[k] : 0.0;
    double sp = c->hi_spindles[k] != 0 ? (double)st->inst_sp / c->hi_spindles[k] : 0.0;
    long both = st->pcnt + st->scnt;
    v[0] = t_mem != 0 ? (double)u_mem(c, k, st) / t_mem : 0.0;
    v[1] = p_dsk;
    v[2] = st->fail ? (double)both : 0.0;
    v[3] = r;
    v[4] = (double)both;
    v[5] = (double)st->pcnt;
    v[6] = cpu;
    v[7] = st->load[0];
    v[8] = st->load[1];
    v[9] = st->load[2];
    v[10] = st->load[3];
    v[11] = (double)st->tags_v;
    v[12] = sp;
    /* htools' *_forth metrics also count the forthcoming instances, which the state leaves out. */
    v[13] = t_mem != 0 ? (double)(c->forth_base[k] - st->all_mem - c->forth_mem[k]) / t_mem : 0.0;
    v[14] = free_disk_ratio(c, k, st->f_dsk - c->forth_dsk[k], forth_free_sp(c, k, st));
    v[15] = c->t_cpu[k] != 0 && c->cpu_speed[k] != 0
                ? (double)(st->u_cpu + c->forth_cpu[k]) / c->t_cpu[k] / c->cpu_speed[k] : 0.0;
    v[16] = c->hi_spindles[k] != 0 ? (double)(st->inst_sp + c->forth_sp[k]) / c->hi_spindles[k] : 0.0;
    v[17] = (double)st->loc_v;
    v[18] = 0.0;
    v[19] = r;
}

/* A group's location-exclusion value; group -1 means the whole cluster. */
/* Count of one (location, exclusion tag) key over all groups: the whole-cluster map. */
static long merged_count(const cairn_cluster *c, int l, int t)
{
    long count = 0;
    for (int g = 0; g < c->n_groups; g++)
        count += c->loccnt[((size_t)g * (size_t)c->n_locs + (size_t)l) * (size_t)ntags(c) + (size_t)t];
    return count;
}

/* A group's location-exclusion value; group -1 means the map merged over the whole cluster. */
static long loc_total(const cairn_cluster *c, int group)
{
    long total = 0;
    if (group >= 0 || c->n_groups == 1)
        return c->loc_totals[group >= 0 ? group : 0];
    for (int l = 0; l < c->n_locs; l++)
        for (int t = 0; t < ntags(c); t++) {
            long count = merged_count(c, l, t);
            total += count > 1 ? count - 1 : 0;
        }
    return total;
}

static int in_scope(const cairn_cluster *c, int k, int group) { return group < 0 || c->group[k] == group; }

/* Exact metrics over a group (-1: all nodes) from c->vals, two-pass, in node order. */
/* Forward: the two-pass statistics of a scope, shared with hail's pair score below. */
typedef struct {
    double n[CAIRN_METRICS], sum[CAIRN_METRICS], var[CAIRN_METRICS];
} hail_stats;
static void hail_stats_init(const cairn_cluster *c, int scope, hail_stats *h);

static void exact_metrics(const cairn_cluster *c, int group, long loc_delta, double *out)
{
    hail_stats h;
    hail_stats_init(c, group, &h);
    for (int m = 0; m < CAIRN_METRICS; m++)
        out[m] = AGG[m] == 3 ? (double)(loc_total(c, group) + loc_delta)
                 : AGG[m] == 0 ? (h.n[m] > 0.0 ? sqrt(h.var[m]) : 0.0) : h.sum[m];
}

static double weighted(const double *metrics)
{
    double total = 0.0;
    for (int m = 0; m < CAIRN_METRICS; m++)
        total += WEIGHTS[m] * metrics[m];
    return total;
}

/* The exact score with some nodes' states replaced: swap their values in, score, swap back. */
static double exact_with(cairn_cluster *c, int group, const touch_set *t, long loc_delta)
{
    double saved[MAX_TOUCH][CAIRN_METRICS], metrics[CAIRN_METRICS];
    for (int j = 0; j < t->n; j++) {
        memcpy(saved[j], c->vals + t->k[j] * CAIRN_METRICS, sizeof saved[j]);
        node_values(c, t->k[j], &t->st[j], c->vals + t->k[j] * CAIRN_METRICS);
    }
    exact_metrics(c, group, loc_delta, metrics);
    for (int j = t->n - 1; j >= 0; j--)
        memcpy(c->vals + t->k[j] * CAIRN_METRICS, saved[j], sizeof saved[j]);
    return weighted(metrics);
}

/* ---- incremental statistics ------------------------------------------------------------------ */

/* Metrics of equal value per node share one standard deviation: the approximate score sums each
 * distinct deviation once with the weights of its copies (the exact re-check scores them apart).
 * The first 8 slots serve every cluster, the mem and net loads then sharing the cpu load's slot
 * and the *_forth figures their plain twins' (true without a -U file and without forthcoming
 * use); otherwise all 13 slots count, each with its own weight. */
#define SLOTS 13
#define COMPACT_SLOTS 8
static const int SLOT_METRIC[SLOTS] = {0, 1, 3, 6, 7, 9, 12, 13, 8, 10, 14, 15, 16};
static const double COMPACT_WEIGHT[SLOTS] = {0.5, 1.0, 1.0, 1.0, 3.0, 1.0, 1.0, 0.5};
static const double FULL_WEIGHT[SLOTS] = {0.5, 0.5, 1.0, 0.5, 1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 0.5, 0.5, 0.5};

typedef struct {
    int n;
    const double *weight;
} slot_layout;

static void slot_layout_init(const cairn_cluster *c, slot_layout *lay)
{
    int uniform = 1, forth = 0;
    for (int i = 0; i < c->n_inst && uniform; i++)
        uniform = c->util_cpu[i] == c->util_mem[i] && c->util_cpu[i] == c->util_net[i];
    for (int k = 0; k < c->n_nodes && !forth; k++)
        forth = c->forth_mem[k] || c->forth_dsk[k] || c->forth_cpu[k] || c->forth_sp[k] || c->forth_fsp[k];
    lay->n = uniform && !forth ? COMPACT_SLOTS : SLOTS;
    lay->weight = uniform && !forth ? COMPACT_WEIGHT : FULL_WEIGHT;
}

typedef struct {
    int n_on;
    double mean[CAIRN_METRICS], m2[CAIRN_METRICS], sum_on[CAIRN_METRICS], sum_off[CAIRN_METRICS];
    long loc_total;
    slot_layout lay;
} stats;

static void stats_init(const cairn_cluster *c, int group, stats *s)
{
    memset(s, 0, sizeof *s);
    for (int k = 0; k < c->n_nodes; k++) {
        if (!in_scope(c, k, group))
            continue;
        const double *v = c->vals + k * CAIRN_METRICS;
        if (c->offline[k]) {
            for (int m = 0; m < CAIRN_METRICS; m++)
                s->sum_off[m] += v[m];
            continue;
        }
        s->n_on++;
        for (int m = 0; m < CAIRN_METRICS; m++)
            s->sum_on[m] += v[m];
    }
    for (int m = 0; m < CAIRN_METRICS; m++)
        s->mean[m] = s->n_on ? s->sum_on[m] / s->n_on : 0.0;
    for (int k = 0; k < c->n_nodes; k++) {
        if (!in_scope(c, k, group) || c->offline[k])
            continue;
        for (int m = 0; m < CAIRN_METRICS; m++) {
            double d = c->vals[k * CAIRN_METRICS + m] - s->mean[m];
            s->m2[m] += d * d;
        }
    }
    s->loc_total = loc_total(c, group);
    slot_layout_init(c, &s->lay);
}
static const int ONLINE_SUMS[] = {2, 11, 17, 19};
static const int OFFLINE_SUMS[] = {4, 5};

/* The approximate score with the n nodes `ks` at the values `nvs` (n rows of CAIRN_METRICS). */
static double approx_values(const cairn_cluster *c, const stats *s, int n, const int *ks, const double *nvs,
                            long loc_delta)
{
    double dsum[CAIRN_METRICS] = {0}, dsq[SLOTS] = {0}, doff[CAIRN_METRICS] = {0};
    for (int j = 0; j < n; j++) {
        int k = ks[j];
        const double *ov = c->vals + k * CAIRN_METRICS, *nv = nvs + j * CAIRN_METRICS;
        if (c->offline[k]) {
            for (size_t j2 = 0; j2 < sizeof OFFLINE_SUMS / sizeof OFFLINE_SUMS[0]; j2++)
                doff[OFFLINE_SUMS[j2]] += nv[OFFLINE_SUMS[j2]] - ov[OFFLINE_SUMS[j2]];
            continue;
        }
        for (size_t j2 = 0; j2 < sizeof ONLINE_SUMS / sizeof ONLINE_SUMS[0]; j2++)
            dsum[ONLINE_SUMS[j2]] += nv[ONLINE_SUMS[j2]] - ov[ONLINE_SUMS[j2]];
        for (int q = 0; q < s->lay.n; q++) {
            int m = SLOT_METRIC[q];
            double x = ov[m] - s->mean[m], y = nv[m] - s->mean[m];
            dsum[m] += nv[m] - ov[m];
            dsq[q] += y * y - x * x;
        }
    }
    double total = WEIGHTS[18] * (double)(s->loc_total + loc_delta);
    for (int q = 0; q < s->lay.n && s->n_on > 0; q++) {
        int m = SLOT_METRIC[q];
        double shift = dsum[m] / s->n_on;
        double m2 = s->m2[m] + dsq[q] - s->n_on * shift * shift;
        total += s->lay.weight[q] * (m2 > 0 ? sqrt(m2 / s->n_on) : 0.0);
    }
    for (size_t j = 0; j < sizeof ONLINE_SUMS / sizeof ONLINE_SUMS[0]; j++)
        total += WEIGHTS[ONLINE_SUMS[j]] * (s->sum_on[ONLINE_SUMS[j]] + dsum[ONLINE_SUMS[j]]);
    for (size_t j = 0; j < sizeof OFFLINE_SUMS / sizeof OFFLINE_SUMS[0]; j++)
        total += WEIGHTS[OFFLINE_SUMS[j]] * (s->sum_off[OFFLINE_SUMS[j]] + doff[OFFLINE_SUMS[j]]);
    return total;
}

static double approx_with(const cairn_cluster *c, const stats *s, const touch_set *t, long loc_delta)
{
    /* On exclusive storage free disk counts spindles: the slots' steps do not hold there. */
    if (c->exact_only)
        return -INFINITY;
    double nvs[4 * CAIRN_METRICS];
    for (int j = 0; j < t->n; j++)
        node_values(c, t->k[j], &t->st[j], nvs + j * CAIRN_METRICS);
    return approx_values(c, s, t->n, t->k, nvs, loc_delta);
}

/* ---- state: tags, peers, location ---------------------------------------------------------- */

static long tag_count_at_least(const cairn_cluster *c, int k, int i, int floor)
{
    long count = 0;
    int t;
    FOR_EACH_TAG(c, i, t) {
        if (c->tagcnt[k * ntags(c) + t] >= floor)
            count++;
    }
    return count;
}

static void tag_change(cairn_cluster *c, int k, int i, int delta)
{
    int t;
    FOR_EACH_TAG(c, i, t) {
        c->tagcnt[k * ntags(c) + t] += delta;
    }
}

static long loc_contrib(const cairn_cluster *c, int i, int p, int s)
{
    const uint64_t *lp = node_locs(c, p), *ls = s >= 0 ? node_locs(c, s) : NULL, *d = desired_locs(c, i);
    long count = 0;
    for (int w = 0; w < c->loc_words; w++)
        count += (ls != NULL ? popcount64(lp[w] & ls[w]) : 0) + popcount64(d[w] & ~lp[w]);
    return count;
}

static int *loc_slot(const cairn_cluster *c, int k, int l, int t)
{
    return &c->loccnt[((size_t)c->group[k] * (size_t)c->n_locs + (size_t)l) * (size_t)ntags(c) + (size_t)t];
}

/* Change of the location-exclusion map value when instance i's primary goes from a to b (a may be -1). */
static long loc_delta(const cairn_cluster *c, int i, int a, int b)
{
    if (a == b || !has_tags(c, i))
        return 0;
    const uint64_t *la = counted_locs(c, a), *lb = counted_locs(c, b);
    int l;
    long delta = 0;
    for (int pass = 0; pass < 2; pass++) {
        FOR_EACH_LOC(c, pass == 0 ? la : lb, pass == 0 ? lb : la, l) {
            int t;
            FOR_EACH_TAG(c, i, t) {
                int cnt = *loc_slot(c, pass == 0 ? a : b, l, t);
                if (pass == 0 && cnt >= 2)
                    delta--;
                if (pass == 1 && cnt >= 1)
                    delta++;
            }
        }
    }
    return delta;
}

static void loccnt_change(cairn_cluster *c, int i, int p, int sign)
{
    const uint64_t *locs = counted_locs(c, p);
    int l;
    FOR_EACH_LOC(c, locs, (const uint64_t *)NULL, l) {
        int t;
        FOR_EACH_TAG(c, i, t) {
            int *cnt = loc_slot(c, p, l, t);
            if (sign > 0 && *cnt >= 1)
                c->loc_totals[c->group[p]]++;
            if (sign < 0 && *cnt >= 2)
                c->loc_totals[c->group[p]]--;
            *cnt += sign;
        }
    }
}

/* Node k's two largest peer entries (peer -1: none), which rebuild keeps: with them most
 * reserved-memory questions about one changed entry are answered without walking k's secondaries. */
static long top_peers(cairn_cluster *c, int k)
{
    long *acc = c->acc_a, *val = c->top_val + 2 * k;
    int *peer = c->top_peer + 2 * k;
    peer[0] = peer[1] = -1;
    val[0] = val[1] = 0;
    for (int j = c->sec_head[k]; j >= 0; j = c->sec_next[j])
        acc[c->pnode[j]] += c->sec_mem[j];
    for (int j = c->sec_head[k]; j >= 0; j = c->sec_next[j]) {
        int p = c->pnode[j];
        if (p == peer[0] || p == peer[1])
            continue;
        if (peer[0] < 0 || acc[p] > val[0]) {
            peer[1] = peer[0], val[1] = val[0];
            peer[0] = p, val[0] = acc[p];
        } else if (peer[1] < 0 || acc[p] > val[1]) {
            peer[1] = p, val[1] = acc[p];
        }
    }
    for (int j = c->sec_head[k]; j >= 0; j = c->sec_next[j])
        acc[c->pnode[j]] = 0;
    return val[0] > 0 ? val[0] : 0;
}

static long max2(long a, long b) { return a > b ? a : b; }

/* Node k's reserved memory after adding d1 to peer p1's entry and d2 to p2's (p < 0: none). */
static long rmem_with(cairn_cluster *c, int k, int p1, long d1, int p2, long d2)
{
    if (p1 >= 0 && p2 < 0) {
        const int *peer = c->top_peer + 2 * k;
        const long *val = c->top_val + 2 * k;
        if (p1 == peer[0])
            return max2(max2(val[0] + d1, val[1]), 0);
        if (p1 == peer[1])
            return max2(val[0], val[1] + d1);
        /* Any other entry is at most the second largest. */
        if (d1 <= 0 || val[0] >= val[1] + d1)
            return val[0];
    }
    long *acc = c->acc_a, best = 0;
    for (int j = c->sec_head[k]; j >= 0; j = c->sec_next[j])
        acc[c->pnode[j]] += c->sec_mem[j];
    if (p1 >= 0)
        acc[p1] += d1;
    if (p2 >= 0)
        acc[p2] += d2;
    for (int j = c->sec_head[k]; j >= 0; j = c->sec_next[j])
        best = max2(best, acc[c->pnode[j]]);
    if (p1 >= 0)
        best = max2(best, acc[p1]);
    if (p2 >= 0)
        best = max2(best, acc[p2]);
    for (int j = c->sec_head[k]; j >= 0; j = c->sec_next[j])
        acc[c->pnode[j]] = 0;
    if (p1 >= 0)
        acc[p1] = 0;
    if (p2 >= 0)
        acc[p2] = 0;
    return best;
}

/* ---- checked additions and removals (hbal's Node.addPri / addSec / remove*) ---------------- */

/* Spindle use counts only on nodes without exclusive storage (htools' calcSpindleUse). */
static long sp_use(const cairn_cluster *c, int k, int i) { return c->excl[k] ? 0 : c->spindle_use[i]; }

/* Free spindles after adding (sign -1) or removing (+1) instance i on node k (htools'
 * calcNewFreeSpindles): only exclusive storage counts them; an addition without a spindle count
 * leaves -1 (so it fails), a removal without one changes nothing. */
static long sp_after(const cairn_cluster *c, int k, int i, long f_sp, int sign)
{
    if (!c->excl[k])
        return f_sp;
    if (c->disk_sp[i] < 0)
        return sign < 0 ? -1 : f_sp;
    return f_sp + sign * c->disk_sp[i];
}

static void st_remove(cairn_cluster *c, int k, const cairn_nstate *in, int i, int role, int peer,
                      cairn_nstate *out)
{
    *out = *in;
    if (role == 1) {
        out->i_mem -= c->mem[i] * c->uses_mem[i];
        out->all_mem -= c->mem[i];
        out->f_dsk += c->dsk[i];
        out->u_cpu -= c->vcpus[i] * c->uses_cpu[i];
        out->pcnt--;
        out->inst_sp -= sp_use(c, k, i);
        out->tags_v -= tag_count_at_least(c, k, i, 2);
        load_change(c, out->load, i, -1.0, 1);
    } else {
        out->f_dsk += c->dsk[i];
        out->scnt--;
        load_change(c, out->load, i, -1.0, 0);
        out->inst_sp -= sp_use(c, k, i);
        out->r_mem = rmem_with(c, k, peer, -c->sec_mem[i], -1, 0);
    }
    out->f_sp = sp_after(c, k, i, out->f_sp, 1);
    out->fail = u_mem(c, k, out) <= out->r_mem;
}

/* Free memory counting forthcoming instances and every primary, running or not (htools' fMemForth). */
static long forth_mem_free(const cairn_cluster *c, int k, const cairn_nstate *st)
{
    return c->forth_base[k] - st->all_mem - c->forth_mem[k];
}

/* htools' disk limits counting forthcoming instances (free disk, its reserve, free spindles on
 * exclusive storage, spindle use), in its order. */
static int forth_disk_status(const cairn_cluster *c, int k, const cairn_nstate *st)
{
    long f_dsk = st->f_dsk - c->forth_dsk[k];
    if (f_dsk <= 0 || (double)f_dsk < c->lo_dsk[k])
        return FAIL_DISK;
    if (c->excl[k] && forth_free_sp(c, k, st) < 0)
        return FAIL_SPINDLES;
    return (double)(st->inst_sp + c->forth_sp[k]) > c->hi_spindles[k] ? FAIL_DISK : OK;
}

static int st_add_pri(cairn_cluster *c, int k, const cairn_nstate *in, int i, int force, cairn_nstate *out)
{
    long clash = tag_count_at_least(c, k, i, 1);
    int local = c->kind[i] == KIND_LOCAL || c->kind[i] == KIND_MIRRORED;
    *out = *in;
    out->i_mem += c->mem[i] * c->uses_mem[i];
    out->all_mem += c->mem[i];
    out->f_dsk -= c->dsk[i];
    out->u_cpu += c->vcpus[i] * c->uses_cpu[i];
    out->pcnt++;
    out->inst_sp += sp_use(c, k, i);
    out->f_sp = sp_after(c, k, i, out->f_sp, -1);
    out->fsp_reset |= c->excl[k] && c->disk_sp[i] < 0;
    load_change(c, out->load, i, 1.0, 1);
    long um = u_mem(c, k, out);
    long new_fail = um <= out->r_mem;
    if (um <= 0)
        return FAIL_MEM;
    if (local && out->f_dsk <= 0)
        return FAIL_DISK;
    if (!force && local && (double)out->f_dsk < c->lo_dsk[k])
        return FAIL_DISK;
    if (local && c->excl[k] && out->f_sp < 0)
        return FAIL_SPINDLES;
    if (!force) {
        if (local && (double)out->inst_sp > c->hi_spindles[k])
            return FAIL_DISK;
        if (new_fail && !in->fail)
            return FAIL_MEM;
        if ((double)out->u_cpu / c->t_cpu[k] > c->vcpu_ratio[k])
            return FAIL_CPU;
        if (clash > 0)
            return FAIL_TAGS;
        if (forth_mem_free(c, k, out) <= 0)
            return FAIL_MEM;
        int limit = local ? forth_disk_status(c, k, out) : OK;
        if (limit != OK)
            return limit;
        if ((double)(out->u_cpu + c->forth_cpu[k]) / c->t_cpu[k] > c->vcpu_ratio[k])
            return FAIL_CPU;
    }
    out->fail = new_fail;
    out->tags_v += clash;
    return OK;
}

static int st_add_sec(cairn_cluster *c, int k, const cairn_nstate *in, int i, int force, long r_mem,
                      int ignore_disks, cairn_nstate *out)
{
    *out = *in;
    if (c->kind[i] != KIND_MIRRORED)
        return FAIL_DISK;
    out->f_dsk -= c->dsk[i];
    out->scnt++;
    out->inst_sp += sp_use(c, k, i);
    out->f_sp = sp_after(c, k, i, out->f_sp, -1);
    out->fsp_reset |= c->excl[k] && c->disk_sp[i] < 0;
    load_change(c, out->load, i, 1.0, 0);
    long um = u_mem(c, k, out);
    long new_fail = um <= r_mem;
    long needed = c->sec_mem[i];
    if (!ignore_disks && out->f_dsk <= 0)
        return FAIL_DISK;
    if (!force && (double)out->f_dsk < c->lo_dsk[k])
        return FAIL_DISK;
    if (c->excl[k] && out->f_sp < 0)
        return FAIL_SPINDLES;
    if (!force) {
        if ((double)out->inst_sp > c->hi_spindles[k])
            return FAIL_DISK;
        if (needed >= um)
            return FAIL_MEM;
        if (new_fail && !in->fail)
            return FAIL_MEM;
        int limit = forth_disk_status(c, k, out);
        if (limit != OK)
            return limit;
        if (needed >= forth_mem_free(c, k, out))
            return FAIL_MEM;
    }
    out->r_mem = r_mem;
    out->fail = new_fail;
    return OK;
}

/* hbal re-adds the primary of a secondary replacement, so its N+1 flag takes the after-move test. */
static void refreshed_primary(const cairn_cluster *c, int op, cairn_nstate *out)
{
    *out = c->state[op];
    out->fail = u_mem(c, op, out) <= out->r_mem;
}

/* hbal (3.0's applyMoveEx) takes the primary of a secondary replacement off and adds it back,
 * forced: only the hard limits hold (memory, disk, free spindles on exclusive storage), and an
 * instance without a spindle count leaves the primary -1 free spindles there. */
static int primary_readd(const cairn_cluster *c, int op, int i, cairn_nstate *st)
{
    int local = c->kind[i] == KIND_LOCAL || c->kind[i] == KIND_MIRRORED;
    long f_sp = sp_after(c, op, i, sp_after(c, op, i, st->f_sp, 1), -1);
    if (u_mem(c, op, st) <= 0)
        return FAIL_MEM;
    if (local && st->f_dsk <= 0)
        return FAIL_DISK;
    if (local && c->excl[op] && f_sp < 0)
        return FAIL_SPINDLES;
    st->f_sp = f_sp;
    return OK;
}

static cairn_nstate *touch(touch_set *t, int k)
{
    for (int j = 0; j < t->n; j++)
        if (t->k[j] == k)
            return &t->st[j];
    t->k[t->n] = k;
    return &t->st[t->n++];
}

static const cairn_nstate *current(cairn_cluster *c, touch_set *t, int k)
{
    for (int j = 0; j < t->n; j++)
        if (t->k[j] == k)
            return &t->st[j];
    return &c->state[k];
}

static void new_nodes(int kind, int op, int os, int target, int *np, int *ns)
{
    switch (kind) {
    case FAILOVER: *np = os; *ns = op; break;
    case REPLACE_SECONDARY: *np = op; *ns = target; break;
    case REPLACE_AND_FAILOVER: *np = target; *ns = op; break;
    case REPLACE_PRIMARY: *np = target; *ns = os; break;
    case FAILOVER_AND_REPLACE: *np = os; *ns = target; break;
    default: *np = target; *ns = -1; break;
    }
}

static void move_location(cairn_cluster *c, touch_set *t, int i, int op, int os, int np, int ns)
{
    long old_c = loc_contrib(c, i, op, os), new_c = loc_contrib(c, i, np, ns);
    if (!old_c && !new_c)
        return;
    cairn_nstate tmp = *current(c, t, op);
    tmp.loc_v -= old_c;
    *touch(t, op) = tmp;
    tmp = *current(c, t, np);
    tmp.loc_v += new_c;
    *touch(t, np) = tmp;
}

/* Whether an instance may migrate from node a to node b: a's migration classes are all receivable on b. */
static int migration_ok(const cairn_cluster *c, int a, int b)
{
    return (c->mig_mask[a] & ~c->rmig_mask[b]) == 0;
}

/* hbal's migration-tag checks per move kind (replacing only the secondary migrates nothing). */
static int migrations_ok(const cairn_cluster *c, int kind, int op, int os, int target)
{
    switch (kind) {
    case FAILOVER: case FAILOVER_AND_REPLACE: return migration_ok(c, op, os);
    case FAILOVER_TO_ANY: case REPLACE_AND_FAILOVER: return migration_ok(c, op, target);
    case REPLACE_PRIMARY: return migration_ok(c, op, os) && migration_ok(c, os, target);
    default: return 1;
    }
}

/* The states of the nodes a move touches, following hbal's sequence and force flags per kind. */
static int move_states(cairn_cluster *c, int i, int kind, int target, int flags, touch_set *t, long *ldelta)
{
    int op = c->pnode[i], os = c->snode[i], np, ns, status = OK;
    int soft = (flags & IGNORE_SOFT) != 0;
    int force_p = soft || c->offline[op];
    int force_s = soft || (os >= 0 && c->offline[os]);
    long sec = c->sec_mem[i];
    cairn_nstate int_p, int_s, tmp;
    t->n = 0;
    *ldelta = 0;
    new_nodes(kind, op, os, target, &np, &ns);
    if (!migrations_ok(c, kind, op, os, target))
        return FAIL_MIG;
    switch (kind) {
    case FAILOVER:
        st_remove(c, op, &c->state[op], i, 1, -1, &int_p);
        st_remove(c, os, &c->state[os], i, 2, op, &int_s);
        status = st_add_pri(c, os, &int_s, i, force_p, touch(t, os));
        if (status == OK)
            status = st_add_sec(c, op, &int_p, i, force_p, rmem_with(c, op, os, sec, -1, 0), c->offline[op],
                                touch(t, op));
        break;
    case FAILOVER_TO_ANY:
        status = st_add_pri(c, target, &c->state[target], i, force_p, touch(t, target));
        st_remove(c, op, &c->state[op], i, 1, -1, touch(t, op));
        break;
    case REPLACE_SECONDARY:
        status = st_add_sec(c, target, &c->state[target], i, force_s, rmem_with(c, target, op, sec, -1, 0), 0,
                            touch(t, target));
        st_remove(c, os, &c->state[os], i, 2, op, touch(t, os));
        refreshed_primary(c, op, touch(t, op));
        if (status == OK)
            status = primary_readd(c, op, i, touch(t, op));
        break;
    case REPLACE_PRIMARY:
        st_remove(c, op, &c->state[op], i, 1, -1, touch(t, op));
        st_remove(c, os, &c->state[os], i, 2, op, &int_s);
        /* hbal first checks that the secondary could host the instance during the migration. */
        status = st_add_pri(c, os, &int_s, i, force_p, &tmp);
        if (status == OK)
            status = st_add_pri(c, target, &c->state[target], i, force_p, touch(t, target));
        if (status == OK)
            status = st_add_sec(c, os, &int_s, i, force_p, rmem_with(c, os, op, -sec, target, sec), 0,
                                touch(t, os));
        break;
    case REPLACE_AND_FAILOVER:
        st_remove(c, op, &c->state[op], i, 1, -1, &int_p);
        st_remove(c, os, &c->state[os], i, 2, op, touch(t, os));
        status = st_add_pri(c, target, &c->state[target], i, soft, touch(t, target));
        if (status == OK)
            status = st_add_sec(c, op, &int_p, i, force_s, rmem_with(c, op, target, sec, -1, 0), 0,
                                touch(t, op));
        break;
    default:
        st_remove(c, op, &c->state[op], i, 1, -1, touch(t, op));
        st_remove(c, os, &c->state[os], i, 2, op, &int_s);
        status = st_add_pri(c, os, &int_s, i, force_p, touch(t, os));
        if (status == OK)
            status = st_add_sec(c, target, &c->state[target], i, force_p, rmem_with(c, target, os, sec, -1, 0),
                                0, touch(t, target));
        break;
    }
    if (status != OK)
        return status;
    move_location(c, t, i, op, os, np, ns);
    *ldelta = loc_delta(c, i, op, np);
    return OK;
}

/* ---- rebuild from placement ---------------------------------------------------------------- */

static void add_instance_state(cairn_cluster *c, int i)
{
    int p = c->pnode[i], s = c->snode[i];
    cairn_nstate *st = &c->state[p];
    st->i_mem += c->mem[i] * c->uses_mem[i];
    st->all_mem += c->mem[i];
    st->u_cpu += c->vcpus[i] * c->uses_cpu[i];
    st->pcnt++;
    st->inst_sp += sp_use(c, p, i);
    if (!c->initialised)
        load_change(c, c->loads + 4 * p, i, 1.0, 1);
    st->tags_v += tag_count_at_least(c, p, i, 1);
    tag_change(c, p, i, 1);
    st->loc_v += loc_contrib(c, i, p, s);
    loccnt_change(c, i, p, 1);
    c->pri_next[i] = c->pri_head[p];
    c->pri_head[p] = i;
    if (s >= 0) {
        c->state[s].scnt++;
        c->state[s].inst_sp += sp_use(c, s, i);
        if (!c->initialised)
            load_change(c, c->loads + 4 * s, i, 1.0, 0);
        c->sec_next[i] = c->sec_head[s];
        c->sec_head[s] = i;
    }
}

/* Node states from the placement; relocate bumps the epochs of the nodes it changed, any other
 * caller the failover cache's generation (cairn_rebuild). */
static int rebuild_states(cairn_cluster *c)
{
    if (c == NULL || c->n_nodes < 0 || c->n_inst > c->cap_inst || c->tag_words < 1 || c->n_tags > 64 * c->tag_words
        || c->n_groups < 1 || c->loc_words < 1 || c->n_locs != 64 * c->loc_words)
        return CAIRN_EINVAL;
    for (int k = 0; k < c->n_nodes; k++)
        if (c->group[k] < 0 || c->group[k] >= c->n_groups)
            return CAIRN_EINVAL;
    memset(c->state, 0, sizeof(cairn_nstate) * (size_t)c->n_nodes);
    memset(c->tagcnt, 0, sizeof(int) * (size_t)c->n_nodes * (size_t)ntags(c));
    memset(c->loccnt, 0, sizeof(int) * (size_t)c->n_groups * (size_t)c->n_locs * (size_t)ntags(c));
    memset(c->loc_totals, 0, sizeof(long) * (size_t)c->n_groups);
    c->exact_only = 0;
    if (!c->initialised)
        memset(c->loads, 0, sizeof(double) * 4 * (size_t)c->n_nodes);
    for (int k = 0; k < c->n_nodes; k++) {
        c->exact_only |= c->excl[k];
        c->state[k].f_dsk = c->f_dsk0[k] + c->dsk_delta[k];
        c->state[k].f_sp = c->f_sp0[k] + c->sp_delta[k];
        c->state[k].u_cpu = c->node_cpus[k];
        c->sec_head[k] = c->pri_head[k] = -1;
    }
    for (int i = 0; i < c->n_inst; i++) {
        if (c->pnode[i] >= c->n_nodes || c->snode[i] >= c->n_nodes)
            return CAIRN_EINVAL;
        if (c->pnode[i] >= 0)
            add_instance_state(c, i);
        else if (c->forth_pnode[i] >= 0) {
            /* A forthcoming instance counts only in its primary's exclusion tags (htools' pTags). */
            c->state[c->forth_pnode[i]].tags_v += tag_count_at_least(c, c->forth_pnode[i], i, 1);
            tag_change(c, c->forth_pnode[i], i, 1);
        }
    }
    for (int k = 0; k < c->n_nodes; k++) {
        cairn_nstate *st = &c->state[k];
        memcpy(st->load, c->loads + 4 * k, sizeof st->load);
        st->r_mem = top_peers(c, k);
        st->fail = c->touched[k] ? u_mem(c, k, st) <= st->r_mem : c->f_mem[k] < st->r_mem;
        if (!c->initialised)
            c->forth_base[k] = c->f_mem[k] + st->i_mem;
    }
    c->initialised = 1;
    for (int k = 0; k < c->n_nodes; k++)
        node_values(c, k, &c->state[k], c->vals + k * CAIRN_METRICS);
    return CAIRN_OK;
}

int cairn_rebuild(cairn_cluster *c)
{
    if (c == NULL)
        return CAIRN_EINVAL;
    c->fo_gen++;
    return rebuild_states(c);
}

int cairn_metrics(cairn_cluster *c, int group, double *metrics, double *score)
{
    if (c == NULL || metrics == NULL || score == NULL)
        return CAIRN_EINVAL;
    exact_metrics(c, group, 0, metrics);
    *score = weighted(metrics);
    return CAIRN_OK;
}

static void forth_eval_move(cairn_cluster *c, int group, int i, int kind, int target, int flags,
                            int *status, double *score);

/* The status and exact score of one move of a placed instance, or of a forthcoming instance (one on
 * forthcoming nodes only: forthmove.Moves' checks and figures, without rebuilding the state). */
int cairn_eval_move(cairn_cluster *c, int group, int inst, int kind, int target, int flags,
                    int *status, double *score)
{
    touch_set t;
    long ld;
    if (c == NULL || inst < 0 || inst >= c->n_inst || kind < 0 || kind > 5)
        return CAIRN_EINVAL;
    int forthcoming = c->pnode[inst] < 0 && c->forth_pnode[inst] >= 0;
    if (c->pnode[inst] < 0 && !forthcoming)
        return CAIRN_EINVAL;
    if (kind != FAILOVER && (target < 0 || target >= c->n_nodes))
        return CAIRN_EINVAL;
    if (forthcoming) {  /* a move that needs a secondary it lacks fails FAIL_DISK, as in forthmove.Moves */
        forth_eval_move(c, group, inst, kind, target, flags, status, score);
        return CAIRN_OK;
    }
    if ((kind == FAILOVER || (kind >= REPLACE_SECONDARY && kind <= FAILOVER_AND_REPLACE)) && c->snode[inst] < 0)
        return CAIRN_EINVAL;
    *status = move_states(c, inst, kind, target, flags, &t, &ld);
    *score = *status == OK ? exact_with(c, group, &t, ld) : 0.0;
    return CAIRN_OK;
}

static int movable(const cairn_cluster *c, int i, int group, int flags)
{
    int op = c->pnode[i], os = c->snode[i];
    if (op < 0 || !c->movable[i] || c->group[op] != group)
        return 0;
    if (os >= 0 && c->group[os] != group)
        return 0;
    if (flags & EVAC_MODE)
        return c->offline[op] || (os >= 0 && c->offline[os]);
    return 1;
}

typedef struct {
    double best;
    int found, inst, kind, target;
    stats st;
} search;

/* Keep a move if it scores strictly below the best so far (of equal scores the first found wins). */
static void offer_move(search *s, int i, int kind, int target, double exact)
{
    if (exact < s->best) {
        s->best = exact;
        s->found = 1;
        s->inst = i;
        s->kind = kind;
        s->target = target;
    }
}

static void consider(cairn_cluster *c, int group, search *s, int i, int kind, int target, int flags)
{
    touch_set t;
    long ld;
    if (move_states(c, i, kind, target, flags, &t, &ld) != OK)
        return;
    double approx = approx_with(c, &s->st, &t, ld);
    if (approx > s->best + 1e-8 * (1.0 + fabs(s->best)))
        return;
    offer_move(s, i, kind, target, exact_with(c, group, &t, ld));
}

/* A failover through the cache: its status and its two nodes' new values are kept while neither
 * node changed (their epochs) and nothing else was rebuilt (the generation); only candidates
 * within reach of the best go on to `consider`, which decides exactly as without the cache. */
enum { FO_GEN, FO_FLAGS, FO_P, FO_S, FO_EP, FO_ES, FO_STATUS, FO_N, FO_K0, FO_K1, FO_TAG };
_Static_assert(FO_TAG == CAIRN_FO_TAG, "the failover cache's row");
#define FO_FULL_PATH (-1) /* a kept status: always evaluate in full */

static void consider_failover(cairn_cluster *c, int group, search *s, int i, int flags)
{
    if (c->fo_tag == NULL || c->exact_only) {
        consider(c, group, s, i, FAILOVER, -1, flags);
        return;
    }
    int op = c->pnode[i], os = c->snode[i];
    int *tag = c->fo_tag + (size_t)FO_TAG * (size_t)i;
    double *nv = c->fo_nv + (size_t)(2 * CAIRN_METRICS) * (size_t)i;
    if (tag[FO_GEN] != c->fo_gen || tag[FO_FLAGS] != flags || tag[FO_P] != op || tag[FO_S] != os
        || tag[FO_EP] != c->epoch[op] || tag[FO_ES] != c->epoch[os]) {
        touch_set t;
        long ld;
        int status = move_states(c, i, FAILOVER, -1, flags, &t, &ld);
        int kept[FO_TAG] = {c->fo_gen, flags, op, os, c->epoch[op], c->epoch[os], status, t.n,
                            t.n > 0 ? t.k[0] : -1, t.n > 1 ? t.k[1] : -1};
        if (status == OK && t.n > 2)
            kept[FO_STATUS] = FO_FULL_PATH; /* more nodes than kept */
        for (int j = 0; status == OK && j < t.n && j < 2; j++)
            node_values(c, t.k[j], &t.st[j], nv + j * CAIRN_METRICS);
        memcpy(tag, kept, sizeof kept);
    }
    if (tag[FO_STATUS] == FO_FULL_PATH) {
        consider(c, group, s, i, FAILOVER, -1, flags);
        return;
    }
    if (tag[FO_STATUS] != OK)
        return;
    double approx = approx_values(c, &s->st, tag[FO_N], tag + FO_K0, nv, loc_delta(c, i, op, os));
    if (approx <= s->best + 1e-8 * (1.0 + fabs(s->best)))
        consider(c, group, s, i, FAILOVER, -1, flags);
}

/* ---- pruning: a lower bound of the score over every target of one (instance, move kind) --------
 *
 * For a drbd instance and one move kind, the nodes other than the target change the same way
 * whatever the target is (the "fixed" part). The target T only adds the instance as primary or
 * secondary, which moves each standard-deviation metric by a known step (or, for reserved memory,
 * by a non-negative one), and never lowers a sum metric. Minimising each metric's variance change
 * over all targets separately gives a score no candidate of that kind can beat; when it is above
 * the best score found so far, the kind's candidates need no evaluation at all. Targets whose peer
 * entries change the fixed part ("special" targets) are always evaluated.
 */

static const int SUM_METRICS[] = {2, 4, 5, 11, 17, 18, 19};

typedef struct {
    int feasible;
    long r_fixed; /* the reserved memory of the kind's fixed secondary (0 when unknown) */
    double mean[SLOTS], m2[SLOTS], sums;
    double gmin[SLOTS];
    const slot_layout *lay;
} kind_bound;

/* Per slot, over the group's online nodes: extremes of the step scale c and of c * value, and the
 * smallest value. They bound the best target of any instance without looking at each target. */
typedef struct {
    double cmin[SLOTS], cmax[SLOTS], cxmin[SLOTS], cxmax[SLOTS], xmin[SLOTS];
    slot_layout lay;
} group_extremes;

static double slot_scale(const cairn_cluster *c, int t, int j)
{
    switch (j) {
    case 0: case 7: return 1.0 / c->t_mem[t];
    case 1: case 10: return c->t_dsk[t] > 0 ? 1.0 / c->t_dsk[t] : 0.0;
    case 3: case 11: return 1.0 / c->t_cpu[t] / c->cpu_speed[t];
    case 6: case 12: return 1.0 / c->hi_spindles[t];
    default: return 1.0;
    }
}

static void extremes_init(const cairn_cluster *c, int group, group_extremes *e)
{
    slot_layout_init(c, &e->lay);
    for (int j = 0; j < SLOTS; j++) {
        e->cmin[j] = e->cxmin[j] = e->xmin[j] = INFINITY;
        e->cmax[j] = e->cxmax[j] = -INFINITY;
    }
    for (int t = 0; t < c->n_nodes; t++) {
        if (c->group[t] != group || c->offline[t])
            continue;
        for (int j = 0; j < e->lay.n; j++) {
            double sc = slot_scale(c, t, j), x = c->vals[t * CAIRN_METRICS + SLOT_METRIC[j]];
            e->cmin[j] = fmin(e->cmin[j], sc), e->cmax[j] = fmax(e->cmax[j], sc);
            e->cxmin[j] = fmin(e->cxmin[j], sc * x), e->cxmax[j] = fmax(e->cxmax[j], sc * x);
            e->xmin[j] = fmin(e->xmin[j], x);
        }
    }
}

/* The quick bound: each slot's variance change minimised term by term over all nodes at once.
 * step[j] is the instance's scale a (the target's step is a * c); ranged marks the reserved-memory
 * slot, which only grows. */
static double quick_bound(const kind_bound *kb, const group_extremes *e, const double *step, int ranged, int n)
{
    double keep = n > 1 ? 1.0 - 1.0 / n : 1.0, total = kb->sums;
    for (int j = 0; j < e->lay.n; j++) {
        double a = step[j], g = 0.0;
        if (j == 2 && ranged) {
            double d = e->xmin[j] - kb->mean[j];
            g = d >= 0 ? 0.0 : -d * d / keep;
        } else if (a != 0.0 && e->cmin[j] <= e->cmax[j]) {
            g = 2.0 * a * (a > 0 ? e->cxmin[j] : e->cxmax[j])
                - 2.0 * a * kb->mean[j] * (a * kb->mean[j] > 0 ? e->cmax[j] : e->cmin[j])
                + a * a * keep * e->cmin[j] * e->cmin[j];
            if (g > 0)
                g = 0.0;
        }
        double v = n ? (kb->m2[j] + g) / n : 0.0;
        total += e->lay.weight[j] * (v > 0 ? sqrt(v) : 0.0);
    }
    return total;
}

static void bound_fixed(const cairn_cluster *c, const stats *s, const touch_set *t, kind_bound *kb)
{
    double dsum[CAIRN_METRICS] = {0}, dsq[CAIRN_METRICS] = {0}, doff[CAIRN_METRICS] = {0}, nv[CAIRN_METRICS];
    for (int j = 0; j < t->n; j++) {
        int k = t->k[j];
        const double *ov = c->vals + k * CAIRN_METRICS;
        node_values(c, k, &t->st[j], nv);
        for (int m = 0; m < CAIRN_METRICS; m++) {
            if (c->offline[k]) {
                doff[m] += nv[m] - ov[m];
                continue;
            }
            double x = ov[m] - s->mean[m], y = nv[m] - s->mean[m];
            dsum[m] += nv[m] - ov[m];
            dsq[m] += y * y - x * x;
        }
    }
    kb->lay = &s->lay;
    for (int j = 0; j < s->lay.n; j++) {
        int m = SLOT_METRIC[j];
        double shift = s->n_on ? dsum[m] / s->n_on : 0.0;
        kb->mean[j] = s->mean[m] + shift;
        kb->m2[j] = s->m2[m] + dsq[m] - s->n_on * shift * shift;
        kb->gmin[j] = 0.0;
    }
    kb->sums = 0.0;
    for (size_t q = 0; q < sizeof SUM_METRICS / sizeof SUM_METRICS[0]; q++) {
        int m = SUM_METRICS[q];
        double v = AGG[m] == 2 ? s->sum_off[m] + doff[m] : AGG[m] == 3 ? (double)s->loc_total
                                                                       : s->sum_on[m] + dsum[m];
        kb->sums += WEIGHTS[m] * v;
    }
}

static void bound_target(const cairn_cluster *c, int n, kind_bound *kb, int t, const double *delta, int ranged_r)
{
    const double *x = c->vals + t * CAIRN_METRICS;
    double keep = n > 1 ? 1.0 - 1.0 / n : 1.0;
    for (int j = 0; j < kb->lay->n; j++) {
        double d = x[SLOT_METRIC[j]] - kb->mean[j], g;
        if (j == 2 && ranged_r)
            g = d >= 0 ? 0.0 : -d * d / keep;
        else
            g = delta[j] * (2.0 * d + delta[j] * keep);
        if (g < kb->gmin[j])
            kb->gmin[j] = g;
    }
}

static double bound_value(const kind_bound *kb, int n)
{
    double total = kb->sums;
    for (int j = 0; j < kb->lay->n; j++) {
        double v = n ? (kb->m2[j] + kb->gmin[j]) / n : 0.0;
        total += kb->lay->weight[j] * (v > 0 ? sqrt(v) : 0.0);
    }
    return total;
}

/* Sum of peer entries: acc[node] += sec_mem of the instances on `k`'s secondary list (by primary). */
static void peers_of(cairn_cluster *c, int k, long *acc, int sign)
{
    for (int j = c->sec_head[k]; j >= 0; j = c->sec_next[j])
        acc[c->pnode[j]] = sign > 0 ? acc[c->pnode[j]] + c->sec_mem[j] : 0;
}

static void instance_bounds(cairn_cluster *c, int group, search *s, int i, int flags, kind_bound *kb,
                            const group_extremes *e)
{
    int op = c->pnode[i], os = c->snode[i], soft = (flags & IGNORE_SOFT) != 0;
    int force_p = soft || c->offline[op], force_s = soft || c->offline[os];
    long sec = c->sec_mem[i];
    cairn_nstate int_p, int_s, tmp;
    touch_set t;
    st_remove(c, op, &c->state[op], i, 1, -1, &int_p);
    st_remove(c, os, &c->state[os], i, 2, op, &int_s);
    for (int k = 0; k < 5; k++)
        kb[k].feasible = 0, kb[k].r_fixed = 0;
    t.n = 0;
    *touch(&t, os) = int_s;
    refreshed_primary(c, op, touch(&t, op));
    if (primary_readd(c, op, i, touch(&t, op)) == OK) {
        bound_fixed(c, &s->st, &t, &kb[REPLACE_SECONDARY]);
        kb[REPLACE_SECONDARY].feasible = 1;
    }
    t.n = 0;
    *touch(&t, os) = int_s;
    long r_op = c->state[op].r_mem > sec ? c->state[op].r_mem : sec;
    if (st_add_sec(c, op, &int_p, i, force_s, r_op, 0, touch(&t, op)) == OK) {
        bound_fixed(c, &s->st, &t, &kb[REPLACE_AND_FAILOVER]);
        kb[REPLACE_AND_FAILOVER].feasible = 1;
        kb[REPLACE_AND_FAILOVER].r_fixed = r_op;
    }
    if (st_add_pri(c, os, &int_s, i, force_p, &tmp) == OK) {
        t.n = 0;
        *touch(&t, op) = int_p;
        long r_os = rmem_with(c, os, op, -sec, -1, 0);
        if (st_add_sec(c, os, &int_s, i, force_p, r_os > sec ? r_os : sec, 0, touch(&t, os)) == OK) {
            bound_fixed(c, &s->st, &t, &kb[REPLACE_PRIMARY]);
            kb[REPLACE_PRIMARY].feasible = 1;
            kb[REPLACE_PRIMARY].r_fixed = r_os > sec ? r_os : sec;
        }
        t.n = 0;
        *touch(&t, op) = int_p;
        *touch(&t, os) = tmp;
        bound_fixed(c, &s->st, &t, &kb[FAILOVER_AND_REPLACE]);
        kb[FAILOVER_AND_REPLACE].feasible = 1;
    }
    int n = s->st.n_on;
    double limit = s->best + 1e-8 * (1.0 + fabs(s->best));
    /* A real instance moves each *_forth figure as it moves its plain twin (slots 10-12 as 1, 3, 6). */
    double cpu = (double)(c->vcpus[i] * c->uses_cpu[i]), dsk = -(double)c->dsk[i], sp = (double)c->spindle_use[i];
    double pri_step[SLOTS] = {-(double)(c->mem[i] * c->uses_mem[i]), dsk, 0.0, cpu, c->util_cpu[i], c->util_dsk[i],
                              sp, -(double)c->mem[i], c->util_mem[i], c->util_net[i], dsk, cpu, sp};
    double sec_step[SLOTS] = {0.0, dsk, 0.0, 0.0, 0.0, c->util_dsk[i], sp, 0.0, 0.0, 0.0, dsk, 0.0, sp};
    int need[5] = {0};
    for (int k = REPLACE_SECONDARY; k <= FAILOVER_AND_REPLACE; k++) {
        int as_secondary = k == REPLACE_SECONDARY || k == FAILOVER_AND_REPLACE;
        if (!kb[k].feasible)
            continue;
        if (quick_bound(&kb[k], e, as_secondary ? sec_step : pri_step, as_secondary, n) > limit)
            kb[k].feasible = 0;
        else
            need[k] = 1;
    }
    if (!need[1] && !need[2] && !need[3] && !need[4])
        return;
    double as_pri[SLOTS], as_sec[SLOTS];
    for (int tg = 0; tg < c->n_nodes; tg++) {
        if (c->group[tg] != group || c->offline[tg] || tg == op || tg == os)
            continue;
        for (int j = 0; j < e->lay.n; j++) {
            double sc = slot_scale(c, tg, j);
            as_pri[j] = pri_step[j] * sc;
            as_sec[j] = sec_step[j] * sc;
        }
        if (need[REPLACE_SECONDARY])
            bound_target(c, n, &kb[REPLACE_SECONDARY], tg, as_sec, 1);
        if (need[REPLACE_AND_FAILOVER])
            bound_target(c, n, &kb[REPLACE_AND_FAILOVER], tg, as_pri, 0);
        if (need[REPLACE_PRIMARY])
            bound_target(c, n, &kb[REPLACE_PRIMARY], tg, as_pri, 0);
        if (need[FAILOVER_AND_REPLACE])
            bound_target(c, n, &kb[FAILOVER_AND_REPLACE], tg, as_sec, 1);
    }
}

/* ---- sweeping one (instance, kind) over its targets --------------------------------------------
 *
 * Outside the special targets, a kind's fixed nodes end in the same states whatever the target
 * (instance_bounds computed them into kb); only the target's own state differs. The sweep scores a
 * target from kb's post-fixed means and variances plus the target's change alone, as approx_with
 * would from all touched nodes, and sends only targets within reach of the best to `consider`,
 * which then decides exactly as before.
 */

static int swept_target(cairn_cluster *c, int i, int kind, int t, int flags, cairn_nstate *out)
{
    int op = c->pnode[i], os = c->snode[i], soft = (flags & IGNORE_SOFT) != 0;
    int force_p = soft || c->offline[op], force_s = soft || c->offline[os];
    long sec = c->sec_mem[i];
    const cairn_nstate *in = &c->state[t];
    switch (kind) {
    case REPLACE_SECONDARY: return st_add_sec(c, t, in, i, force_s, rmem_with(c, t, op, sec, -1, 0), 0, out);
    case REPLACE_AND_FAILOVER: return st_add_pri(c, t, in, i, soft, out);
    case REPLACE_PRIMARY: return st_add_pri(c, t, in, i, force_p, out);
    default: return st_add_sec(c, t, in, i, force_p, rmem_with(c, t, os, sec, -1, 0), 0, out);
    }
}

/* Whether target t of a pruned kind may beat the best: feasible and its swept score within reach. */
static int sweep_passes(cairn_cluster *c, const search *s, const kind_bound *kb, int i, int kind, int t, int flags)
{
    cairn_nstate st;
    double nv[CAIRN_METRICS];
    if (!migrations_ok(c, kind, c->pnode[i], c->snode[i], t) || swept_target(c, i, kind, t, flags, &st) != OK)
        return 0;
    const double *ov = c->vals + t * CAIRN_METRICS;
    node_values(c, t, &st, nv);
    int n = s->st.n_on;
    double keep = n > 0 ? 1.0 - 1.0 / n : 0.0, total = kb->sums;
    for (size_t j = 0; j < sizeof ONLINE_SUMS / sizeof ONLINE_SUMS[0]; j++)
        total += WEIGHTS[ONLINE_SUMS[j]] * (nv[ONLINE_SUMS[j]] - ov[ONLINE_SUMS[j]]);
    for (int q = 0; q < kb->lay->n && n > 0; q++) {
        int m = SLOT_METRIC[q];
        double step = nv[m] - ov[m], m2 = kb->m2[q] + step * (2.0 * (ov[m] - kb->mean[q]) + step * keep);
        total += kb->lay->weight[q] * (m2 > 0 ? sqrt(m2 / n) : 0.0);
    }
    return total <= s->best + 1e-8 * (1.0 + fabs(s->best));
}

/* Whether target t of `kind` goes to `consider`: a special target (one whose peer entry changes
 * the fixed part) always, else unless the kind is pruned or, when pruning, its sweep says it
 * cannot beat the best. */
static int wanted(cairn_cluster *c, const search *s, const kind_bound *kb, const int *skip, int prune, int special,
                  int i, int kind, int t, int flags)
{
    if (prune && special)
        return 1;
    if (skip[kind])
        return 0;
    return !prune || sweep_passes(c, s, &kb[kind], i, kind, t, flags);
}

/* Whether a target with peer entry `entry` changes the fixed part (rmem_with: the entry grows by
 * sec, the new maximum is the larger of the old one and it). */
static int special(long entry, long sec, const kind_bound *kb) { return entry > 0 && entry + sec > kb->r_fixed; }

static int pruning_possible(const cairn_cluster *c)
{
    return !any_word(c->loc_mask, c->n_nodes * c->loc_words);
}

static void instance_moves(cairn_cluster *c, int group, search *s, int i, int flags, int prune,
                           const group_extremes *e)
{
    int op = c->pnode[i], os = c->snode[i];
    long sec = c->sec_mem[i];
    if (c->kind[i] == KIND_MIRRORED) {
        int sec_offline = c->offline[os];
        kind_bound kb[5];
        int skip[5] = {0};
        if (!(flags & NO_INSTANCE_MOVES) && !sec_offline)
            consider_failover(c, group, s, i, flags);
        if (flags & NO_DISK_MOVES)
            return;
        prune = prune && !any_word(desired_locs(c, i), c->loc_words) && !c->exact_only;
        if (prune) {
            instance_bounds(c, group, s, i, flags, kb, e);
            double limit = s->best + 1e-8 * (1.0 + fabs(s->best));
            for (int k = REPLACE_SECONDARY; k <= FAILOVER_AND_REPLACE; k++)
                skip[k] = !kb[k].feasible || bound_value(&kb[k], s->st.n_on) > limit;
            peers_of(c, op, c->acc_c, 1);
            peers_of(c, os, c->acc_d, 1);
        }
        for (int t = 0; t < c->n_nodes; t++) {
            if (c->group[t] != group || c->offline[t] || t == op || t == os)
                continue;
            if (wanted(c, s, kb, skip, prune, 0, i, REPLACE_SECONDARY, t, flags))
                consider(c, group, s, i, REPLACE_SECONDARY, t, flags);
            /* Restricted migration keeps only secondary replacements unless the primary is offline. */
            if (flags & NO_INSTANCE_MOVES || ((flags & RESTRICTED_MIGRATION) && !c->offline[op]))
                continue;
            /* A target's peer entry on the old primary (or secondary) grows by the instance's
             * memory; when that tops the fixed reserved memory, the fixed part changes. */
            if (wanted(c, s, kb, skip, prune, prune && special(c->acc_c[t], sec, &kb[REPLACE_AND_FAILOVER]), i,
                       REPLACE_AND_FAILOVER, t, flags))
                consider(c, group, s, i, REPLACE_AND_FAILOVER, t, flags);
            if (sec_offline)
                continue;
            if (!(flags & RESTRICTED_MIGRATION)
                && wanted(c, s, kb, skip, prune, prune && special(c->acc_d[t], sec, &kb[REPLACE_PRIMARY]), i,
                          REPLACE_PRIMARY, t, flags))
                consider(c, group, s, i, REPLACE_PRIMARY, t, flags);
            if (wanted(c, s, kb, skip, prune, 0, i, FAILOVER_AND_REPLACE, t, flags))
                consider(c, group, s, i, FAILOVER_AND_REPLACE, t, flags);
        }
        if (prune) {
            peers_of(c, op, c->acc_c, -1);
            peers_of(c, os, c->acc_d, -1);
        }
    } else if (c->kind[i] == KIND_SHARED && !(flags & NO_INSTANCE_MOVES)) {
        for (int t = 0; t < c->n_nodes; t++)
            if (c->group[t] == group && !c->offline[t] && t != op)
                consider(c, group, s, i, FAILOVER_TO_ANY, t, flags);
    }
}

/* ---- moves of forthcoming instances (hbal moves them too; only their *Forth figures change) ----
 *
 * Mirrors fastpath/forthmove.py `Moves`: the forthcoming-only checks of htools' addPriEx /
 * addSecExEx in applyMoveEx's order (none when forced), each on the node's figures without the
 * instance, and the exact score with the moved use in the nodes' forth_* figures and the
 * instance's exclusion tags on its new primary.
 */

typedef struct {
    long mem, dsk, fsp, sp, cpu;
} forth_figures;

/* What forthcoming instance i takes of node k as primary or secondary (forthmove.contribution):
 * on exclusive storage its disks' spindles whatever its template, as calcNewFreeSpindlesForth
 * counts them (one without a spindle count takes none here; see forth_trial_begin). */
static void forth_contribution(const cairn_cluster *c, int i, int k, int primary, long out[5])
{
    int local = c->kind[i] == KIND_LOCAL || c->kind[i] == KIND_MIRRORED;
    out[0] = primary ? c->mem[i] : 0;                                  /* forth_mem */
    out[1] = local ? c->dsk[i] : 0;                                    /* forth_dsk */
    out[2] = primary ? c->vcpus[i] * c->uses_cpu[i] : 0;               /* forth_cpu */
    out[3] = local && !c->excl[k] ? c->spindle_use[i] : 0;             /* forth_sp */
    out[4] = c->excl[k] && c->disk_sp[i] > 0 ? c->disk_sp[i] : 0;      /* forth_fsp */
}

static forth_figures forth_without(const cairn_cluster *c, int i, int k)
{
    long use[5] = {c->forth_mem[k], c->forth_dsk[k], c->forth_cpu[k], c->forth_sp[k], c->forth_fsp[k]}, own[5];
    for (int role = 1; role >= 0; role--) {
        if ((role ? c->forth_pnode[i] : c->forth_snode[i]) != k)
            continue;
        forth_contribution(c, i, k, role, own);
        for (int f = 0; f < 5; f++)
            use[f] -= own[f];
    }
    const cairn_nstate *st = &c->state[k];
    forth_figures fig = {c->forth_base[k] - st->all_mem - use[0], st->f_dsk - use[1], st->f_sp - use[4],
                         st->inst_sp + use[3], st->u_cpu + use[2]};
    return fig;
}

static int forth_disk_limits(const cairn_cluster *c, int i, int k, const forth_figures *fig)
{
    long own[5];
    forth_contribution(c, i, k, 0, own);
    long dsk = fig->dsk - own[1];
    if (dsk <= 0 || (double)dsk < c->lo_dsk[k])
        return FAIL_DISK;
    if (c->excl[k] && (c->disk_sp[i] < 0 || fig->fsp - own[4] < 0))
        return FAIL_SPINDLES;
    return (double)(fig->sp + own[3]) > c->hi_spindles[k] ? FAIL_DISK : OK;
}

static int forth_add_pri(const cairn_cluster *c, int i, int k, int force)
{
    if (force)
        return OK;
    forth_figures fig = forth_without(c, i, k);
    if (fig.mem - c->mem[i] <= 0)
        return FAIL_MEM;
    if (c->kind[i] == KIND_LOCAL || c->kind[i] == KIND_MIRRORED) {
        int status = forth_disk_limits(c, i, k, &fig);
        if (status != OK)
            return status;
    }
    double cpu = (double)(fig.cpu + c->vcpus[i] * c->uses_cpu[i]);
    return c->vcpu_ratio[k] >= 0 && cpu / c->t_cpu[k] > c->vcpu_ratio[k] ? FAIL_CPU : OK;
}

static int forth_add_sec(const cairn_cluster *c, int i, int k, int force)
{
    if (force)
        return OK;
    if (c->kind[i] != KIND_MIRRORED)
        return FAIL_DISK;
    forth_figures fig = forth_without(c, i, k);
    int status = forth_disk_limits(c, i, k, &fig);
    if (status != OK)
        return status;
    return c->sec_mem[i] >= fig.mem ? FAIL_MEM : OK;
}

/* forthmove.Moves._check and _check_two_step: the status of one move of forthcoming instance i. */
static int forth_check(const cairn_cluster *c, int i, int kind, int target, int force)
{
    int p = c->forth_pnode[i], s = c->forth_snode[i], status;
    if (kind == REPLACE_SECONDARY)
        return forth_add_sec(c, i, target, force || (s >= 0 && c->offline[s]));
    if (kind == FAILOVER_TO_ANY)
        return !migration_ok(c, p, target) ? FAIL_MIG : forth_add_pri(c, i, target, force || c->offline[p]);
    if (s < 0)
        return FAIL_DISK;
    int force_p = force || c->offline[p];
    switch (kind) {
    case FAILOVER:
        if (!migration_ok(c, p, s))
            return FAIL_MIG;
        status = forth_add_pri(c, i, s, force_p);
        return status != OK ? status : forth_add_sec(c, i, p, force_p);
    case REPLACE_AND_FAILOVER:  /* r:np, f */
        if (!migration_ok(c, p, target))
            return FAIL_MIG;
        status = forth_add_pri(c, i, target, force);
        return status != OK ? status : forth_add_sec(c, i, p, force || c->offline[s]);
    case REPLACE_PRIMARY:  /* f, r:np, f: the secondary must hold it during the migration */
        if (!migration_ok(c, p, s) || !migration_ok(c, s, target))
            return FAIL_MIG;
        if ((status = forth_add_pri(c, i, s, force_p)) != OK || (status = forth_add_pri(c, i, target, force_p)) != OK)
            return status;
        return forth_add_sec(c, i, s, force_p);
    case FAILOVER_AND_REPLACE:  /* f, r:ns */
        if (!migration_ok(c, p, s))
            return FAIL_MIG;
        status = forth_add_pri(c, i, s, force_p);
        return status != OK ? status : forth_add_sec(c, i, target, force_p);
    default:
        return FAIL_DISK;
    }
}

/* A trial placement of forthcoming instance i: its use leaves the old nodes' forth_* figures for
 * the new ones', its exclusion tags its old primary for the new one; the nodes' states are copied
 * into `t` and their figures saved, to be put back by forth_trial_end. */
typedef struct {
    touch_set t;
    long saved[MAX_TOUCH][5];
} forth_trial;

static void forth_fields(const cairn_cluster *c, long *fields[5])
{
    fields[0] = c->forth_mem, fields[1] = c->forth_dsk, fields[2] = c->forth_cpu;
    fields[3] = c->forth_sp, fields[4] = c->forth_fsp;
}

static void forth_trial_begin(cairn_cluster *c, forth_trial *tr, int i, int op, int os, int np, int ns)
{
    long *fields[5], own[5];
    forth_fields(c, fields);
    int nodes[4] = {op, os, np, ns}, signs[4] = {-1, -1, 1, 1}, roles[4] = {1, 0, 1, 0};
    tr->t.n = 0;
    for (int j = 0; j < 4; j++) {
        int k = nodes[j];
        if (k < 0)
            continue;
        int before = tr->t.n;
        cairn_nstate *st = touch(&tr->t, k);
        if (tr->t.n > before) {
            *st = c->state[k];
            for (int f = 0; f < 5; f++)
                tr->saved[tr->t.n - 1][f] = fields[f][k];
        }
    }
    for (int j = 0; j < 4; j++) {
        if (nodes[j] < 0)
            continue;
        forth_contribution(c, i, nodes[j], roles[j], own);
        for (int f = 0; f < 5; f++)
            fields[f][nodes[j]] += signs[j] * own[f];
    }
    /* Added without a spindle count, it leaves its new nodes -1 forthcoming free spindles
     * (calcNewFreeSpindlesForth); taken away, it changes nothing. */
    for (int j = 2; j < 4 && c->disk_sp[i] < 0; j++)
        if (nodes[j] >= 0 && c->excl[nodes[j]])
            c->forth_fsp[nodes[j]] = c->state[nodes[j]].f_sp + 1;
    if (np != op) {
        if (op >= 0)
            touch(&tr->t, op)->tags_v -= tag_count_at_least(c, op, i, 2);
        touch(&tr->t, np)->tags_v += tag_count_at_least(c, np, i, 1);
    }
}

static void forth_trial_end(cairn_cluster *c, const forth_trial *tr)
{
    long *fields[5];
    forth_fields(c, fields);
    for (int j = 0; j < tr->t.n; j++)
        for (int f = 0; f < 5; f++)
            fields[f][tr->t.k[j]] = tr->saved[j][f];
}

/* The exact score with forthcoming instance i moved to (np, ns); INFINITY when the approximate
 * score shows that it cannot beat the search's best. */
static double forth_score(cairn_cluster *c, int group, const search *s, int i, int np, int ns)
{
    forth_trial tr;
    forth_trial_begin(c, &tr, i, c->forth_pnode[i], c->forth_snode[i], np, ns);
    double score = INFINITY;
    if (approx_with(c, &s->st, &tr.t, 0) <= s->best + 1e-8 * (1.0 + fabs(s->best)))
        score = exact_with(c, group, &tr.t, 0);
    forth_trial_end(c, &tr);
    return score;
}

static void forth_eval_move(cairn_cluster *c, int group, int i, int kind, int target, int flags,
                            int *status, double *score)
{
    int np, ns;
    forth_trial tr;
    *score = 0.0;
    *status = forth_check(c, i, kind, target, (flags & IGNORE_SOFT) != 0);
    if (*status != OK)
        return;
    new_nodes(kind, c->forth_pnode[i], c->forth_snode[i], target, &np, &ns);
    forth_trial_begin(c, &tr, i, c->forth_pnode[i], c->forth_snode[i], np, ns);
    *score = exact_with(c, group, &tr.t, 0);
    forth_trial_end(c, &tr);
}

static void forth_consider(cairn_cluster *c, int group, search *s, int i, int kind, int target, int flags)
{
    int np, ns;
    if (forth_check(c, i, kind, target, (flags & IGNORE_SOFT) != 0) != OK)
        return;
    new_nodes(kind, c->forth_pnode[i], c->forth_snode[i], target, &np, &ns);
    offer_move(s, i, kind, target, forth_score(c, group, s, i, np, ns));
}

/* hbal's candidate moves of forthcoming instance i, in balance._forthcoming_candidates' order. */
static void forth_moves(cairn_cluster *c, int group, search *s, int i, int flags)
{
    int p = c->forth_pnode[i], sn = c->forth_snode[i];
    if (p < 0 || !c->movable[i] || c->group[p] != group || (sn >= 0 && c->group[sn] != group))
        return;
    if ((flags & EVAC_MODE) && !(c->offline[p] || (sn >= 0 && c->offline[sn])))
        return;
    if (c->kind[i] == KIND_SHARED) {
        if (flags & NO_INSTANCE_MOVES)
            return;
        for (int t = 0; t < c->n_nodes; t++)
            if (c->group[t] == group && !c->offline[t] && t != p && t != sn)
                forth_consider(c, group, s, i, FAILOVER_TO_ANY, t, flags);
        return;
    }
    if (c->kind[i] != KIND_MIRRORED || sn < 0)
        return;
    if (!(flags & NO_INSTANCE_MOVES) && !c->offline[sn])
        forth_consider(c, group, s, i, FAILOVER, -1, flags);
    if (flags & NO_DISK_MOVES)
        return;
    for (int t = 0; t < c->n_nodes; t++) {
        if (c->group[t] != group || c->offline[t] || t == p || t == sn)
            continue;
        forth_consider(c, group, s, i, REPLACE_SECONDARY, t, flags);
        if ((flags & NO_INSTANCE_MOVES) || ((flags & RESTRICTED_MIGRATION) && !c->offline[p]))
            continue;
        forth_consider(c, group, s, i, REPLACE_AND_FAILOVER, t, flags);
        if (c->offline[sn])
            continue;
        if (!(flags & RESTRICTED_MIGRATION))
            forth_consider(c, group, s, i, REPLACE_PRIMARY, t, flags);
        forth_consider(c, group, s, i, FAILOVER_AND_REPLACE, t, flags);
    }
}

int cairn_best_move(cairn_cluster *c, int group, int flags, int only,
                    int *inst, int *kind, int *target, double *score)
{
    search s;
    double metrics[CAIRN_METRICS];
    if (c == NULL || inst == NULL || kind == NULL || target == NULL || score == NULL || only >= c->n_inst)
        return CAIRN_EINVAL;
    stats_init(c, group, &s.st);
    exact_metrics(c, group, 0, metrics);
    s.best = weighted(metrics);
    s.found = 0;
    int prune = pruning_possible(c) && !(flags & NO_PRUNING);
    group_extremes extremes;
    extremes_init(c, group, &extremes);
    /* Instances in index order, forthcoming ones too with FORTH_MOVES: of equal scores the
     * earlier instance wins, as in hbal. */
    for (int i = only < 0 ? 0 : only; i < (only < 0 ? c->n_inst : only + 1); i++) {
        if (movable(c, i, group, flags))
            instance_moves(c, group, &s, i, flags, prune, &extremes);
        else if ((flags & FORTH_MOVES) && c->pnode[i] < 0 && c->forth_pnode[i] >= 0)
            forth_moves(c, group, &s, i, flags);
    }
    if (!s.found)
        return CAIRN_NONE;
    *inst = s.inst;
    *kind = s.kind;
    *target = s.target;
    *score = s.best;
    return CAIRN_OK;
}

/* Record which nodes changed and how their free disk moved, then set the placement and rebuild.
 * htools adds the instance afresh to its new nodes (a secondary replacement re-adds the primary
 * too): on exclusive storage one without a spindle count leaves them -1 free spindles, with and
 * without the forthcoming instances, whatever they had (calcNewFreeSpindles and its Forth twin). */
static int relocate(cairn_cluster *c, int i, int np, int ns)
{
    int op = c->pnode[i], os = c->snode[i];
    int nodes[4] = {op, os, np, ns};
    for (int j = 0; j < 4; j++) {
        int k = nodes[j], dup = 0;
        for (int q = 0; q < j; q++)
            dup |= nodes[q] == k;
        if (k < 0 || dup)
            continue;
        c->touched[k] = 1;
        if (c->epoch != NULL)
            c->epoch[k]++;
        c->dsk_delta[k] += c->dsk[i] * ((k == op || k == os) - (k == np || k == ns));
        if (c->excl[k] && c->disk_sp[i] >= 0)
            c->sp_delta[k] += c->disk_sp[i] * ((k == op || k == os) - (k == np || k == ns));
    }
    for (int j = 0; j < 2; j++) {
        int k = j == 0 ? np : ns;
        if (k >= 0 && c->excl[k] && c->disk_sp[i] < 0) {
            c->sp_delta[k] = -1 - c->f_sp0[k];
            c->forth_fsp[k] = 0; /* the forthcoming figure is -1 too (calcNewFreeSpindlesForth) */
        }
    }
    /* The loads change as hbal changes them: the old nodes lose the instance, then the new ones take it. */
    if (op >= 0)
        load_change(c, c->loads + 4 * op, i, -1.0, 1);
    if (os >= 0)
        load_change(c, c->loads + 4 * os, i, -1.0, 0);
    if (np >= 0)
        load_change(c, c->loads + 4 * np, i, 1.0, 1);
    if (ns >= 0)
        load_change(c, c->loads + 4 * ns, i, 1.0, 0);
    c->pnode[i] = np;
    c->snode[i] = ns;
    return rebuild_states(c);
}

int cairn_apply_move(cairn_cluster *c, int inst, int kind, int target)
{
    int np, ns;
    if (c == NULL || inst < 0 || inst >= c->n_inst || c->pnode[inst] < 0 || kind < 0 || kind > 5)
        return CAIRN_EINVAL;
    new_nodes(kind, c->pnode[inst], c->snode[inst], target, &np, &ns);
    if (np < 0 || np >= c->n_nodes || ns >= c->n_nodes)
        return CAIRN_EINVAL;
    return relocate(c, inst, np, ns);
}

int cairn_place(cairn_cluster *c, int inst, int pnode, int snode)
{
    if (c == NULL || inst < 0 || inst >= c->n_inst || pnode >= c->n_nodes || snode >= c->n_nodes)
        return CAIRN_EINVAL;
    if (pnode < 0 && snode >= 0)
        return CAIRN_EINVAL;
    return relocate(c, inst, pnode, snode);
}

/* ---- allocation ------------------------------------------------------------------------------- */

/* Change of the whole-cluster location-exclusion value when a new instance lands on p. */
static long merged_new_delta(const cairn_cluster *c, int i, int p)
{
    long delta = 0;
    const uint64_t *locs = counted_locs(c, p);
    int l;
    FOR_EACH_LOC(c, locs, (const uint64_t *)NULL, l) {
        int t;
        FOR_EACH_TAG(c, i, t) {
            delta += merged_count(c, l, t) >= 1;
        }
    }
    return delta;
}

/* Whether node k may take the new instance in `role` (ALLOC_PRIMARY or ALLOC_SECONDARY). mask[k]
 * (NULL: 1 everywhere) is 0 (never), 1 (either role if online) or the one role it may take, offline
 * or not (hail's allocate-secondary fixes the primary and tries every other node of its group). */
enum { ALLOC_EITHER = 1, ALLOC_SECONDARY = 2, ALLOC_PRIMARY = 3 };

static int alloc_ok(const cairn_cluster *c, int k, int group, const unsigned char *mask, int role)
{
    int allowed = mask == NULL ? ALLOC_EITHER : mask[k];
    if (c->group[k] != group)
        return 0;
    return allowed == ALLOC_EITHER ? !c->offline[k] : allowed == role;
}

/* Candidates come from `group`; scores are over `scope` (hail scores over the whole cluster: -1).
 * Of equal scores the last candidate wins, as in hail. `after` (primary, secondary, score; NULL:
 * none) asks for the best candidate ranking below that one: hail's next candidate when the global
 * N+1 check rejects it. */
/* Whether candidate (p, q) with `score` ranks below the candidate `after` (hail's order: lower
 * score first, of equal scores the later candidate first); after[0] < 0 admits every candidate. */
static int ranks_after(const cairn_cluster *c, const double *after, int p, int q, double score)
{
    if (after == NULL || after[0] < 0)
        return 1;
    long order = (long)p * (c->n_nodes + 1) + q + 1;
    long after_order = (long)after[0] * (c->n_nodes + 1) + (long)after[1] + 1;
    return score > after[2] || (score == after[2] && order < after_order);
}

/* Every valid candidate of an allocation scan, in scan order (primary, then secondary). */
typedef struct {
    long n, cap;
    int *pnode, *snode;
    double *score;
} alloc_list;

/* Record a candidate: into the list when collecting all, else keep it if it is the best ranking after `after`. */
static void alloc_offer(const cairn_cluster *c, search *s, alloc_list *all, const double *after, int p, int q,
                        double exact)
{
    if (all != NULL) {
        if (all->n < all->cap)
            all->pnode[all->n] = p, all->snode[all->n] = q, all->score[all->n] = exact;
        all->n++;
        return;
    }
    if ((!s->found || exact <= s->best) && ranks_after(c, after, p, q, exact))
        s->best = exact, s->found = 1, s->inst = p, s->target = q;
}

/* hail's score of a two-node allocation (allocateOnPair): not recomputed, but the cluster
 * statistics of the scope updated for the primary, then the secondary (Ganeti.Utils.Statistics:
 * a deviation's variance moves by ((n dss - 2 s ds) - ds^2) / n^2, a sum by the difference), so
 * that candidates whose scores differ only in the last bits are ordered as hail orders them. */
static void hail_stats_init(const cairn_cluster *c, int scope, hail_stats *h)
{
    for (int m = 0; m < CAIRN_METRICS; m++) {
        double n = 0.0, total = 0.0;
        h->n[m] = h->sum[m] = h->var[m] = 0.0;
        if (AGG[m] == 3)
            continue;
        for (int k = 0; k < c->n_nodes; k++) {
            if (!in_scope(c, k, scope) || (c->offline[k] != 0) != (AGG[m] == 2))
                continue;
            n += 1.0;
            total += c->vals[k * CAIRN_METRICS + m];
        }
        h->n[m] = n;
        h->sum[m] = total;
        if (AGG[m] != 0 || n == 0.0)
            continue;
        double mean = total / n, acc = 0.0;
        for (int k = 0; k < c->n_nodes; k++) {
            if (!in_scope(c, k, scope) || c->offline[k])
                continue;
            double d = c->vals[k * CAIRN_METRICS + m] - mean;
            acc += d * d;
        }
        h->var[m] = acc / n;
    }
}

static double hail_pair_score(const cairn_cluster *c, int scope, const hail_stats *base, const touch_set *t,
                              long loc_delta)
{
    hail_stats h = *base;
    double v[CAIRN_METRICS], metrics[CAIRN_METRICS];
    for (int j = 0; j < t->n; j++) {
        int k = t->k[j];
        const double *old = c->vals + k * CAIRN_METRICS;
        node_values(c, k, &t->st[j], v);
        for (int m = 0; m < CAIRN_METRICS; m++) {
            if (AGG[m] == 3 || (c->offline[k] != 0) != (AGG[m] == 2))
                continue;
            double ds = v[m] - old[m];
            if (AGG[m] == 0) {
                double n = h.n[m], dss = v[m] * v[m] - old[m] * old[m];
                double dnnvar = (n * dss - 2 * h.sum[m] * ds) - ds * ds;
                double var = h.var[m] + dnnvar / (n * n);
                h.var[m] = var > 0.0 ? var : 0.0;
            }
            h.sum[m] = h.sum[m] + ds;
        }
    }
    for (int m = 0; m < CAIRN_METRICS; m++)
        metrics[m] = AGG[m] == 3 ? (double)(loc_total(c, scope) + loc_delta)
                     : AGG[m] == 0 ? (h.n[m] > 0.0 ? sqrt(h.var[m]) : 0.0) : h.sum[m];
    return weighted(metrics);
}

static int alloc_scan(cairn_cluster *c, int group, int scope, int inst, int required, const unsigned char *mask,
                      int flags, const double *after, alloc_list *all, search *sp, long *fail_counts)
{
    search s;
    double metrics[CAIRN_METRICS];
    int force = (flags & IGNORE_SOFT) != 0;
    if (c == NULL || inst < 0 || inst >= c->n_inst || c->pnode[inst] >= 0 || required < 1 || required > 2)
        return CAIRN_EINVAL;
    hail_stats hs;
    stats_init(c, scope, &s.st);
    hail_stats_init(c, scope, &hs);
    exact_metrics(c, scope, 0, metrics);
    s.best = INFINITY;
    s.found = 0;
    long sec = c->sec_mem[inst];
    for (int p = 0; p < c->n_nodes; p++) {
        touch_set t;
        if (!alloc_ok(c, p, group, mask, ALLOC_PRIMARY))
            continue;
        t.n = 0;
        int status = st_add_pri(c, p, &c->state[p], inst, force, touch(&t, p));
        t.st[0].loc_v += loc_contrib(c, inst, p, -1);
        long ld = scope >= 0 || c->n_groups == 1 ? loc_delta(c, inst, -1, p) : merged_new_delta(c, inst, p);
        if (required == 1) {
            if (status != OK) {
                fail_counts[status]++;
                continue;
            }
            double approx = all == NULL ? approx_with(c, &s.st, &t, ld) : 0.0;
            if (s.found && approx > s.best + 1e-8 * (1.0 + fabs(s.best)))
                continue;
            alloc_offer(c, &s, all, after, p, -1, exact_with(c, scope, &t, ld));
            continue;
        }
        /* Peer entries for primary p on every node, from p's primaries. */
        for (int j = c->pri_head[p]; j >= 0; j = c->pri_next[j])
            if (c->snode[j] >= 0)
                c->acc_b[c->snode[j]] += c->sec_mem[j];
        for (int q = 0; q < c->n_nodes; q++) {
            if (q == p || !alloc_ok(c, q, group, mask, ALLOC_SECONDARY))
                continue;
            if (status != OK) {
                fail_counts[status]++;
                continue;
            }
            long r = c->acc_b[q] + sec > c->state[q].r_mem ? c->acc_b[q] + sec : c->state[q].r_mem;
            t.n = 1;
            int st2 = st_add_sec(c, q, &c->state[q], inst, force, r, 0, touch(&t, q));
            if (st2 != OK) {
                fail_counts[st2]++;
                continue;
            }
            t.st[0].loc_v = c->state[p].loc_v + loc_contrib(c, inst, p, q);
            double approx = all == NULL ? approx_with(c, &s.st, &t, ld) : 0.0;
            if (s.found && approx > s.best + 1e-8 * (1.0 + fabs(s.best)))
                continue;
            alloc_offer(c, &s, all, after, p, q, hail_pair_score(c, scope, &hs, &t, ld));
        }
        for (int j = c->pri_head[p]; j >= 0; j = c->pri_next[j])
            if (c->snode[j] >= 0)
                c->acc_b[c->snode[j]] = 0;
    }
    *sp = s;
    return CAIRN_OK;
}

int cairn_best_alloc(cairn_cluster *c, int group, int scope, int inst, int required, const unsigned char *mask,
                     int flags, const double *after, int *pnode, int *snode, double *score, long *fail_counts)
{
    search s;
    int code = alloc_scan(c, group, scope, inst, required, mask, flags, after, NULL, &s, fail_counts);
    if (code != CAIRN_OK)
        return code;
    if (!s.found)
        return CAIRN_NONE;
    *pnode = s.inst;
    *snode = s.target;
    *score = s.best;
    return CAIRN_OK;
}

int cairn_alloc_all(cairn_cluster *c, int group, int scope, int inst, int required, const unsigned char *mask,
                    int flags, long cap, int *pnodes, int *snodes, double *scores, long *count, long *fail_counts)
{
    search s;
    alloc_list all = {0, cap, pnodes, snodes, scores};
    int code = alloc_scan(c, group, scope, inst, required, mask, flags, NULL, &all, &s, fail_counts);
    *count = all.n;
    if (code == CAIRN_OK && all.n > cap)
        return CAIRN_EINVAL;
    return code;
}

/* hail's search for a forthcoming copy of instance `inst` (unplaced, on no forthcoming nodes) in
 * `group` (forthmove.ForthcomingSearch, change-group's choice of group and allocate-secondary of a
 * forthcoming instance): each candidate takes only the forthcoming checks of addPriEx /
 * addSecExEx, never forced, and is scored over `scope` with the copy in its nodes' forthcoming
 * figures and its exclusion tags on the primary, as an allocation is scored (a pair by hail's
 * updated statistics). Gives the best candidate (of equal scores the last, as hail), how many
 * candidates passed the checks and the failure counts by reason. */
int cairn_best_forth_alloc(cairn_cluster *c, int group, int scope, int inst, int required, const unsigned char *mask,
                           int *pnode, int *snode, double *score, long *passed, long *fail_counts)
{
    search s;
    hail_stats hs;
    if (c == NULL || inst < 0 || inst >= c->n_inst || c->pnode[inst] >= 0 || c->forth_pnode[inst] >= 0
        || c->forth_snode[inst] >= 0 || required < 1 || required > 2)
        return CAIRN_EINVAL;
    stats_init(c, scope, &s.st);
    s.st.lay.n = SLOTS, s.st.lay.weight = FULL_WEIGHT;  /* the copy brings forthcoming use, perhaps the first */
    hail_stats_init(c, scope, &hs);
    s.best = INFINITY;
    s.found = 0;
    *passed = 0;
    long *sec_status = c->acc_d;  /* per allowed secondary its status + 1 (zeroed scratch, zeroed again) */
    for (int q = 0; q < c->n_nodes && required == 2; q++)
        if (alloc_ok(c, q, group, mask, ALLOC_SECONDARY))
            sec_status[q] = 1 + forth_add_sec(c, inst, q, 0);
    for (int p = 0; p < c->n_nodes; p++) {
        if (!alloc_ok(c, p, group, mask, ALLOC_PRIMARY))
            continue;
        int status = forth_add_pri(c, inst, p, 0);
        for (int q = required == 2 ? 0 : -1; q < (required == 2 ? c->n_nodes : 0); q++) {
            if (q == p || (q >= 0 && !sec_status[q]))
                continue;
            int st = status != OK ? status : q >= 0 ? (int)sec_status[q] - 1 : OK;
            if (st != OK) {
                fail_counts[st]++;
                continue;
            }
            (*passed)++;
            forth_trial tr;
            forth_trial_begin(c, &tr, inst, -1, -1, p, q);
            if (!s.found || approx_with(c, &s.st, &tr.t, 0) <= s.best + 1e-8 * (1.0 + fabs(s.best)))
                alloc_offer(c, &s, NULL, NULL, p, q, q < 0 ? exact_with(c, scope, &tr.t, 0)
                                                           : hail_pair_score(c, scope, &hs, &tr.t, 0));
            forth_trial_end(c, &tr);
        }
    }
    for (int q = 0; q < c->n_nodes; q++)
        sec_status[q] = 0;
    if (!s.found)
        return CAIRN_NONE;
    *pnode = s.inst;
    *snode = s.target;
    *score = s.best;
    return CAIRN_OK;
}

/* hail's order of two listed candidates: the lower score first, of equal scores the later one in
 * scan order (allocate.hail_order). */
static int ranks_before(const alloc_list *l, int n_nodes, long a, long b)
{
    if (l->score[a] != l->score[b])
        return l->score[a] < l->score[b];
    long order_a = (long)l->pnode[a] * (n_nodes + 1) + l->snode[a] + 1;
    long order_b = (long)l->pnode[b] * (n_nodes + 1) + l->snode[b] + 1;
    return order_a > order_b;
}

static void swap_candidates(alloc_list *l, long a, long b)
{
    int p = l->pnode[a], q = l->snode[a];
    double score = l->score[a];
    l->pnode[a] = l->pnode[b], l->snode[a] = l->snode[b], l->score[a] = l->score[b];
    l->pnode[b] = p, l->snode[b] = q, l->score[b] = score;
}

/* Sift candidate `at` down the heap [start, start + size), the worst-ranking candidate on top. */
static void sift_down(alloc_list *l, int n_nodes, long start, long size, long at)
{
    for (;;) {
        long child = 2 * at + 1, worst = at;
        if (child < size && ranks_before(l, n_nodes, start + worst, start + child))
            worst = child;
        if (child + 1 < size && ranks_before(l, n_nodes, start + worst, start + child + 1))
            worst = child + 1;
        if (worst == at)
            return;
        swap_candidates(l, start + at, start + worst);
        at = worst;
    }
}

/* Heap sort of candidates [start, end) into hail's order, in place (the order is total: no two
 * candidates share a scan position, so stability does not matter). */
static void sort_run(alloc_list *l, int n_nodes, long start, long end)
{
    long n = end - start;
    for (long at = n / 2 - 1; at >= 0; at--)
        sift_down(l, n_nodes, start, n, at);
    for (long size = n - 1; size > 0; size--) {
        swap_candidates(l, start, start + size);
        sift_down(l, n_nodes, start, size, 0);
    }
}

int cairn_rank_allocs(int n_nodes, int by_primary, long n, int *pnodes, int *snodes, double *scores,
                      long cap_runs, long *run_ends, long *n_runs)
{
    alloc_list l = {n, n, pnodes, snodes, scores};
    if (n < 0 || n_nodes < 0 || cap_runs < 1)
        return CAIRN_EINVAL;
    *n_runs = 0;
    for (long start = 0; start < n;) {
        long end = start + 1;
        while (end < n && (!by_primary || pnodes[end] == pnodes[start]))
            end++;
        if (*n_runs == cap_runs)
            return CAIRN_EINVAL;
        sort_run(&l, n_nodes, start, end);
        run_ends[(*n_runs)++] = end;
        start = end;
    }
    return CAIRN_OK;
}
