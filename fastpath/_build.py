"""The one cffi FFI of fastpath: declares the public C functions and compiles them in place."""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

CDEF = """
#define CAIRN_OK ...
#define CAIRN_EINVAL ...
#define CAIRN_NONE ...
#define CAIRN_FO_TAG ...
typedef struct {
    long i_mem, all_mem, f_dsk, u_cpu, pcnt, scnt, inst_sp, r_mem, tags_v, loc_v;
    long fail;
    long f_sp;
    long fsp_reset;
    double load[4];
} cairn_nstate;
typedef struct {
    int n_nodes, n_inst, cap_inst, n_tags, n_locs, n_groups;
    int tag_words;
    int loc_words;
    double *t_mem, *t_dsk, *t_cpu, *cpu_speed, *hi_spindles, *vcpu_ratio, *lo_dsk;
    long *mem_base, *f_mem, *f_dsk0, *node_cpus;
    long *forth_mem, *forth_dsk, *forth_cpu, *forth_sp;
    int *offline, *group;
    uint64_t *loc_mask, *mig_mask, *rmig_mask;
    int *excl;
    double *t_sp;
    long *f_sp0, *forth_fsp;
    long *mem, *dsk, *vcpus, *spindle_use, *sec_mem;
    int *kind, *uses_mem, *uses_cpu, *movable;
    uint64_t *excl_mask, *desired_mask;
    long *disk_sp;
    double *util_cpu, *util_mem, *util_dsk, *util_net;
    int *pnode, *snode;
    int *forth_pnode;
    int *forth_snode;
    cairn_nstate *state;
    double *loads;
    long *dsk_delta, *forth_base, *sp_delta;
    int *touched;
    int *tagcnt;
    int *loccnt;
    int *sec_head, *pri_head;
    int *sec_next, *pri_next;
    long *acc_a, *acc_b, *acc_c, *acc_d;
    double *vals;
    long *loc_totals;         /* n_groups */
    long *top_val;            /* n_nodes * 2: the two largest peer entries */
    int *top_peer;            /* n_nodes * 2: their peers (-1: none) */
    int exact_only;
    int initialised;
    int *epoch;
    int *fo_tag;
    double *fo_nv;
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
int cairn_best_forth_alloc(cairn_cluster *c, int group, int scope, int inst, int required, const unsigned char *mask,
                           int *pnode, int *snode, double *score, long *passed, long *fail_counts);
int cairn_rank_allocs(int n_nodes, int by_primary, long n, int *pnodes, int *snodes, double *scores,
                      long cap_runs, long *run_ends, long *n_runs);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "fastpath._cairn_fastpath",
    '#include "cairn_fastpath.h"',
    sources=[str(HERE / "cairn_fastpath.c")],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra"],
    libraries=["m"],
)


def build() -> None:
    """Compile the extension next to this file, where `import fastpath` finds it."""
    ffibuilder.compile(tmpdir=str(HERE.parent), verbose=False)


if __name__ == "__main__":
    build()
