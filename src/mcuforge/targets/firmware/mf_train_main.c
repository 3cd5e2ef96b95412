/* mcuforge training runner: streams samples through <prefix>_train_step() in one process, on the
 * host (-DMF_HOST) or as Cortex-M firmware under QEMU (semihosting file I/O).
 *
 * Reads mf_train_cfg.bin (int32 little-endian: dump_every, the number of steps between state dumps,
 * 0 for only the final one) and mf_train_in.bin (per sample: the int8 input, then the label: an int32
 * class index for cross-entropy, the int8 target for MSE). Writes mf_train_out.bin (per sample the
 * int32 prediction before the step) and mf_train_state.bin (per dump, per layer: int8 weights, int32
 * biases if any, int32 scale doublings) and prints
 *   MF_STATS samples=N stack_step=B stack_peak=B stack_size=B
 * The firmware marks every step for the instruction-counting plugin (mf_mark_begin / mf_mark_end,
 * as mf_fw_main.c). */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "mf_train_api.h" /* generated with the library: MF_TRAIN_* aliases of its training API */

#define MF_RUNNER_NAME "mcuforge training runner"
#include "mf_runner.h"

static int8_t mf_input[MF_TRAIN_INPUT_SIZE];
#if MF_TRAIN_LOSS_CE
static int32_t mf_label;
#else
static int8_t mf_target[MF_TRAIN_LABEL_SIZE];
#endif

static void write_full(int fd, const void *src, int32_t size) {
    if (size > 0 && write(fd, src, (size_t)size) != size) fail("cannot write an output file");
}

static void dump_state(int fd) {
    int j;
    for (j = 0; j < MF_TRAIN_LAYERS; ++j) {
        int8_t *w;
        int32_t *b, *a, o, k;
        if (MF_TRAIN_LAYER(j, &w, &b, &a, &o, &k) != 0) fail("bad layer index");
        write_full(fd, w, o * k);
        if (b) write_full(fd, b, o * 4);
        write_full(fd, a, o * 4);
    }
}

int main(void) {
    int fcfg = open("mf_train_cfg.bin", O_RDONLY), fin = open("mf_train_in.bin", O_RDONLY);
    int fout = open("mf_train_out.bin", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int fstate = open("mf_train_state.bin", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int32_t dump_every = 0;
    uint32_t samples = 0, stack_step = 0, stack_peak = 0, size = 0;
    if (fcfg < 0 || fin < 0 || fout < 0 || fstate < 0) fail("cannot open the runner's files");
    if (read_full(fcfg, &dump_every, 4) != 4) fail("mf_train_cfg.bin is too short");
    close(fcfg);
    MF_TRAIN_INIT();
#ifndef MF_HOST
    mf_mark_calibrate(); /* two marks back to back: the cost of one mark, to subtract */
    mf_mark_calibrate();
#endif
    for (;;) {
        int32_t got = read_full(fin, mf_input, MF_TRAIN_INPUT_SIZE), pred;
        if (got == 0) break;
        if (got != MF_TRAIN_INPUT_SIZE) fail("mf_train_in.bin ends inside a sample");
#if MF_TRAIN_LOSS_CE
        if (read_full(fin, &mf_label, 4) != 4) fail("mf_train_in.bin ends inside a label");
#else
        if (read_full(fin, mf_target, MF_TRAIN_LABEL_SIZE) != MF_TRAIN_LABEL_SIZE) fail("mf_train_in.bin ends inside a target");
#endif
#ifndef MF_HOST
        {
            uint32_t base, used = mf_stack_used();
            if (used > stack_peak) stack_peak = used;
            paint_free_stack();
            base = (uint32_t)(uintptr_t)&__stack_top - current_sp();
            mf_mark_begin();
#endif
#if MF_TRAIN_LOSS_CE
            pred = MF_TRAIN_STEP(mf_input, mf_label);
#else
            pred = MF_TRAIN_STEP(mf_input, mf_target);
#endif
#ifndef MF_HOST
            mf_mark_end();
            used = mf_stack_used();
            if (used > stack_peak) stack_peak = used;
            if (used - base > stack_step) stack_step = used - base;
        }
#endif
        write_full(fout, &pred, 4);
        ++samples;
        if (dump_every > 0 && samples % (uint32_t)dump_every == 0) dump_state(fstate);
    }
    if (dump_every <= 0 || samples % (uint32_t)dump_every != 0) dump_state(fstate);
    close(fin);
    close(fout);
    close(fstate);
#ifndef MF_HOST
    size = mf_stack_size();
    if (stack_peak >= size) fail("stack overflow: the program used all of its stack");
#endif
    put_stats(samples, "stack_step", stack_step, stack_peak, size);
    return 0;
}
