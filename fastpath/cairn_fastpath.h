/* Cairn's placement core: flat arrays in, status codes out; nothing allocated behind the caller. */
#ifndef CAIRN_FASTPATH_H
#define CAIRN_FASTPATH_H
#include <stddef.h>
#include <stdint.h>

#define CAIRN_OK 0
#define CAIRN_EINVAL 1
#define CAIRN_NONE 2

#define CAIRN_METRICS 20
#define CAIRN_FO_TAG 10 /* ints kept per instance by the failover cache */

/* Derived per-node state; the engine recomputes it from the instance placement. */
typedef struct {
    long i_mem, all_mem, f_dsk, u_cpu, pcnt, scnt, inst_sp, r_mem, tags_v, loc_v;
    long fail;
    long f_sp;                /* free spindles (counted on exclusive-storage nodes only) */
    long fsp_reset;           /* an instance without a spindle count was added: forthcoming free spindles -1 */
    double load[4];           /* dynamic load (cpu, mem, disk, net): primaries, and secondaries for disk */
} cairn_nstate;

/* One cluster: inputs (node and instance arrays) and caller-allocated state and scratch. */
typedef struct {
    int n_nodes, n_inst, cap_inst, n_tags, n_locs, n_groups;
    int tag_words;            /* 64-bit words of exclusion tags per instance; n_tags <= 64 * tag_words */
    int loc_words;            /* 64-bit words of location tags per node and instance; n_locs = 64 * loc_words */
    /* nodes */
    double *t_mem, *t_dsk, *t_cpu, *cpu_speed, *hi_spindles, *vcpu_ratio, *lo_dsk;
    long *mem_base, *f_mem, *f_dsk0, *node_cpus;
    long *forth_mem, *forth_dsk, *forth_cpu, *forth_sp;  /* what forthcoming instances take (htools *_forth) */
    int *offline, *group;
    uint64_t *loc_mask;       /* n_nodes * loc_words: location tag bits (location l: word l / 64, bit l % 64) */
    uint64_t *mig_mask, *rmig_mask;
    int *excl;                /* exclusive storage: free spindles are a resource, free_disk_cv counts them */
    double *t_sp;             /* total spindles */
    long *f_sp0, *forth_fsp;  /* free spindles as reported; what forthcoming instances take of them */
    /* instances, cap_inst long */
    long *mem, *dsk, *vcpus, *spindle_use, *sec_mem;
    int *kind, *uses_mem, *uses_cpu, *movable;
    uint64_t *excl_mask;      /* cap_inst * tag_words: exclusion tag bits (tag t: word t / 64, bit t % 64) */
    uint64_t *desired_mask;   /* cap_inst * loc_words: desired location bits, as loc_mask */
    long *disk_sp;            /* the disks' total spindles, -1 when some disk gives none */
    double *util_cpu, *util_mem, *util_dsk, *util_net; /* dynamic utilisation (hbal -U; 1 each by default) */
    int *pnode, *snode;
    int *forth_pnode;         /* a forthcoming instance's primary (its pnode is -1), else -1 */
    int *forth_snode;         /* and its secondary, else -1 */
    /* state and scratch: n_nodes long unless noted */
    cairn_nstate *state;
    double *loads;            /* n_nodes * 4: node loads, summed at load in instance order, then changed
                               * move by move in htools' order (removals, then additions), as hbal does */
    long *dsk_delta, *forth_base, *sp_delta;
    int *touched;
    int *tagcnt;              /* n_nodes * max(1, n_tags) */
    int *loccnt;              /* n_groups * n_locs * max(1, n_tags) */
    int *sec_head, *pri_head; /* per node, -1 terminated lists through: */
    int *sec_next, *pri_next; /* cap_inst */
    long *acc_a, *acc_b, *acc_c, *acc_d; /* zeroed scratch */
    double *vals;             /* n_nodes * 20 */
    long *loc_totals;         /* n_groups */
    long *top_val;            /* n_nodes * 2: the two largest peer entries */
    int *top_peer;            /* n_nodes * 2: their peers (-1: none) */
    int exact_only;           /* exclusive storage somewhere: every candidate scored exactly */
    int initialised;
    /* The failover cache (NULL arrays: none). Each instance's failover touches only its two nodes,
     * so their new values are kept from step to step while neither node changed: relocate bumps
     * its nodes' epochs, any other rebuild the generation. */
    int *epoch;               /* n_nodes */
    int *fo_tag;              /* cap_inst * CAIRN_FO_TAG: generation, flags, nodes, epochs, status, count */
    double *fo_nv;            /* cap_inst * 2 * 20: the touched nodes' new values */
    int fo_gen;
} cairn_cluster;

int cairn_stddev(const double *values, size_t n, double *out);
int cairn_rebuild(cairn_cluster *c);
int cairn_metrics(cairn_cluster *c, int group, double *metrics, double *score);
int cairn_eval_move(cairn_cluster *c, int group, int inst, int kind, int target, int flags,
                    int *status, double *score);
int cairn_best_move(cairn_cluster *c, int group, int flags, int only,
                    int *inst, int *kind, int *target, double *score);
int cairn_apply_move(cairn_cluster *c, int inst, int kind, int target);
int cairn_place(cairn_cluster *c, int inst, int pnode, int snode);
int cairn_best_alloc(cairn_cluster *c, int group, int scope, int inst, int required, const unsigned char *mask,
                     int flags, const double *after, int *pnode, int *snode, double *score,
                     long *fail_counts);
int cairn_alloc_all(cairn_cluster *c, int group, int scope, int inst, int required, const unsigned char *mask,
                    int flags, long cap, int *pnodes, int *snodes, double *scores, long *count, long *fail_counts);
/* The best candidate for a forthcoming copy of an unplaced instance (forthcoming checks and figures
 * only), how many candidates passed, failure counts by reason. */
int cairn_best_forth_alloc(cairn_cluster *c, int group, int scope, int inst, int required, const unsigned char *mask,
                           int *pnode, int *snode, double *score, long *passed, long *fail_counts);
/* Sort listed candidates into hail's order (lower score first, of equal scores the later in scan
 * order) within runs: one per primary (a scan lists a primary's candidates together) when
 * by_primary, else one; run_ends gets each run's end. */
int cairn_rank_allocs(int n_nodes, int by_primary, long n, int *pnodes, int *snodes, double *scores,
                      long cap_runs, long *run_ends, long *n_runs);

#endif
