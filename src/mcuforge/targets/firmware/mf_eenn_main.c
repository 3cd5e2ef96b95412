/* mcuforge early-exit runner: streams samples through an early-exit library (mcuforge.eenn.codegen) in
 * one process, on the host (-DMF_HOST) or as Cortex-M firmware under QEMU (semihosting file I/O).
 *
 * Reads mf_eenn_cfg.bin (int32 little-endian: mode, kind, n, then n thresholds; mode bit 0: decide,
 * i.e. <name>_invoke once per sample on one stream state (single-device libraries); bit 1: parts,
 * i.e. load the sample and run every segment and head of the library once, each between its own
 * marks) and mf_in.bin (the int8 inputs of each sample, one after another). Writes mf_eenn_out.bin:
 * per sample and mode, int32 class, int32 exit taken (-1, -1 in parts mode), uint32 mask of the
 * evaluated exits, then the u vectors of all exits (uint8, NUM_EXITS x NUM_CLASSES, 0 where not
 * evaluated). Prints
 *   MF_STATS samples=N stack_invoke=B stack_peak=B stack_size=B
 * The firmware marks every invoke and every part for the instruction-counting plugin
 * (mf_mark_begin / mf_mark_end, as mf_fw_main.c). */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "mf_eenn_api.h" /* generated with the library: MF_EENN_* aliases of its API */

#define MF_RUNNER_NAME "mcuforge early-exit runner"
#include "mf_runner.h"

static int8_t mf_input[MF_EENN_INPUT_SIZE];
static uint8_t mf_record[12 + MF_EENN_NUM_EXITS * MF_EENN_NUM_CLASSES];
static int32_t mf_thresholds[MF_EENN_NUM_THRESHOLDS];

static void write_record(int fd, int32_t cls, int32_t exit_taken) {
    uint32_t mask = MF_EENN_EVALUATED();
    int k;
    memcpy(mf_record, &cls, 4);
    memcpy(mf_record + 4, &exit_taken, 4);
    memcpy(mf_record + 8, &mask, 4);
    for (k = 0; k < MF_EENN_NUM_EXITS; ++k) {
        const uint8_t *u = MF_EENN_EXIT_U(k);
        uint8_t *dst = mf_record + 12 + k * MF_EENN_NUM_CLASSES;
        if (u) memcpy(dst, u, MF_EENN_NUM_CLASSES);
        else memset(dst, 0, MF_EENN_NUM_CLASSES);
    }
    if (write(fd, mf_record, sizeof mf_record) != (int)sizeof mf_record) fail("cannot write mf_eenn_out.bin");
}

int main(void) {
    int fcfg = open("mf_eenn_cfg.bin", O_RDONLY), fin = open("mf_in.bin", O_RDONLY);
    int fout = open("mf_eenn_out.bin", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int32_t mode = 0, kind = 0, n_thresholds = 0;
    uint32_t samples = 0, stack_invoke = 0, stack_peak = 0, size = 0;
#ifdef MF_EENN_SINGLE
    MF_EENN_STATE state;
#endif
    if (fcfg < 0 || fin < 0 || fout < 0) fail("cannot open the runner's files");
    if (read_full(fcfg, &mode, 4) != 4 || read_full(fcfg, &kind, 4) != 4 || read_full(fcfg, &n_thresholds, 4) != 4)
        fail("mf_eenn_cfg.bin is too short");
    if (n_thresholds != MF_EENN_NUM_THRESHOLDS) fail("mf_eenn_cfg.bin: wrong number of thresholds");
    if (read_full(fcfg, mf_thresholds, 4 * n_thresholds) != 4 * n_thresholds) fail("mf_eenn_cfg.bin is too short");
    close(fcfg);
    MF_EENN_INIT();
    if (MF_EENN_SET_DECISION(kind, mf_thresholds) != 0) fail("the library refuses this decision mechanism");
#ifdef MF_EENN_SINGLE
    MF_EENN_RESET(&state);
#else
    if (mode & 1) fail("decide mode needs a single-device library");
#endif
#ifndef MF_HOST
    mf_mark_calibrate(); /* two marks back to back: the cost of one mark, to subtract */
    mf_mark_calibrate();
#endif
    for (;;) {
        int32_t got = read_full(fin, mf_input, MF_EENN_INPUT_SIZE), k;
        if (got == 0) break;
        if (got != MF_EENN_INPUT_SIZE) fail("mf_in.bin ends inside a sample");
#ifdef MF_EENN_SINGLE
        if (mode & 1) {
            int exit_taken = -1, cls;
#ifndef MF_HOST
            uint32_t base, used = mf_stack_used();
            if (used > stack_peak) stack_peak = used;
            paint_free_stack();
            base = (uint32_t)(uintptr_t)&__stack_top - current_sp();
#endif
            MARK_BEGIN();
            cls = MF_EENN_INVOKE(&state, mf_input, &exit_taken);
            MARK_END();
#ifndef MF_HOST
            used = mf_stack_used();
            if (used > stack_peak) stack_peak = used;
            if (used - base > stack_invoke) stack_invoke = used - base;
#endif
            write_record(fout, cls, exit_taken);
        }
#endif
        if (mode & 2) {
            MARK_BEGIN();
            MF_EENN_LOAD(mf_input);
            MF_EENN_RUN_SEGMENT(MF_EENN_FIRST_SEGMENT);
            MARK_END();
            for (k = MF_EENN_FIRST_SEGMENT; k <= MF_EENN_LAST_SEGMENT; ++k) {
                if (k > MF_EENN_FIRST_SEGMENT) {
                    MARK_BEGIN();
                    MF_EENN_RUN_SEGMENT(k);
                    MARK_END();
                }
                if (k < MF_EENN_NUM_EXITS - 1) {
                    MARK_BEGIN();
                    MF_EENN_RUN_HEAD(k);
                    MARK_END();
                }
            }
            write_record(fout, -1, -1);
        }
        ++samples;
    }
    close(fin);
    close(fout);
#ifndef MF_HOST
    size = mf_stack_size();
    if (stack_peak >= size) fail("stack overflow: the program used all of its stack");
#endif
    put_stats(samples, "stack_invoke", stack_invoke, stack_peak, size);
    return 0;
}
