/* mcuforge instruction counter: a QEMU TCG plugin (public plugin API v1, QEMU 7.2).
 *
 * Counts executed guest instructions exactly and records the running count
 * each time the first instruction of a marker function executes.
 *
 *   qemu-system-arm ... -plugin mf_icount.so,out=FILE,mark=0xADDR,mark=0xADDR...
 *
 * FILE gets one line per marker execution, "<marker index> <count>", in
 * execution order, and a last line "total <count>". The count is kept inline
 * (a 64-bit add per translation block, no callback), the markers use a
 * callback on their one instruction. A translation block runs to its end here
 * (bare-metal code without faults, interrupts or MMIO inside a block), so
 * the count at a marker is exact up to a constant that cancels in differences.
 *
 * Debian ships no qemu-plugin.h: the few declarations needed are below,
 * copied from the public header of QEMU 7.2 (a stable C ABI). */
#define _POSIX_C_SOURCE 200809L /* strdup */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* not used: opaque here */
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

#define MAX_MARKS 16

static uint64_t count;                 /* executed instructions (one vCPU) */
static uint64_t marks[MAX_MARKS];      /* marker addresses (Thumb bit cleared) */
static int n_marks;
static uint64_t *log_idx, *log_count;  /* one entry per marker execution */
static size_t log_len, log_cap;
static char *out_path;

static void on_mark(unsigned int vcpu, void *udata) {
    (void)vcpu;
    if (log_len == log_cap) {
        log_cap = log_cap ? 2 * log_cap : 4096;
        log_idx = realloc(log_idx, log_cap * sizeof *log_idx);
        log_count = realloc(log_count, log_cap * sizeof *log_count);
        if (!log_idx || !log_count) abort();
    }
    log_idx[log_len] = (uint64_t)(uintptr_t)udata;
    log_count[log_len++] = count;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    size_t i, n = qemu_plugin_tb_n_insns(tb);
    int m;
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &count, n);
    for (i = 0; i < n; ++i) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn);
        for (m = 0; m < n_marks; ++m)
            if (pc == marks[m])
                qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark, QEMU_PLUGIN_CB_NO_REGS,
                                                       (void *)(uintptr_t)m);
    }
}

static void write_log(qemu_plugin_id_t id, void *udata) {
    FILE *f = fopen(out_path, "w");
    size_t i;
    (void)id; (void)udata;
    if (!f) { fprintf(stderr, "mf_icount: cannot write %s\n", out_path); return; }
    for (i = 0; i < log_len; ++i) fprintf(f, "%" PRIu64 " %" PRIu64 "\n", log_idx[i], log_count[i]);
    fprintf(f, "total %" PRIu64 "\n", count);
    fclose(f);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    int i;
    (void)info;
    for (i = 0; i < argc; ++i) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            out_path = strdup(argv[i] + 4);
        } else if (strncmp(argv[i], "mark=", 5) == 0 && n_marks < MAX_MARKS) {
            marks[n_marks++] = strtoull(argv[i] + 5, NULL, 0) & ~(uint64_t)1;
        } else {
            fprintf(stderr, "mf_icount: unknown argument '%s' (out=FILE, mark=ADDR)\n", argv[i]);
            return -1;
        }
    }
    if (!out_path) { fprintf(stderr, "mf_icount: out=FILE is required\n"); return -1; }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, write_log, NULL);
    return 0;
}
