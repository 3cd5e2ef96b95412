/* mcuforge firmware runner: feeds a batch of samples through the generated
 * library inside one emulator run, using semihosting for host file I/O.
 *
 * Reads mf_in.bin (the int8 inputs of each sample, one sample after another)
 * from the emulator's working directory, invokes the model once per sample,
 * writes the int8 outputs to mf_out.bin and prints one statistics line:
 *   MF_STATS samples=N stack_invoke=B stack_peak=B stack_size=B
 * (stack_invoke: the deepest stack use of one model invocation, measured by
 * painting the stack before each invocation; stack_peak: the whole program's).
 *
 * The instruction-counting plugin (mf_icount.c) records the running
 * instruction count at every execution of the first instruction of the
 * mf_mark_* functions and of mf_layer_mark (called after every layer when
 * the model is built with -DMF_PROFILE). They are out of line, never folded,
 * and do nothing: two calls of mf_mark_calibrate back to back measure the
 * cost of one mark, which is subtracted from every measured interval. */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "mf_fw_model.h" /* generated: the model header and MF_* aliases of its API */

#define MF_RUNNER_NAME "mcuforge firmware"
#include "mf_runner.h"

int main(void) {
    int fin = open("mf_in.bin", O_RDONLY), fout = open("mf_out.bin", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    uint32_t samples = 0, stack_invoke = 0, stack_peak = 0;
    if (fin < 0) fail("cannot open mf_in.bin (semihosting)");
    if (fout < 0) fail("cannot open mf_out.bin (semihosting)");
    MF_INIT();
    mf_mark_calibrate(); /* two marks back to back: the cost of one mark, to subtract */
    mf_mark_calibrate();
    for (;;) {
        int j;
        uint32_t base, used;
        for (j = 0; j < MF_NUM_INPUTS; ++j) {
            const int32_t size = MF_INPUT_INFO(j)->size;
            const int32_t got = read_full(fin, MF_INPUT(j), size);
            if (got == 0 && j == 0) goto done;
            if (got != size) fail("mf_in.bin ends inside a sample");
        }
        used = mf_stack_used();
        if (used > stack_peak) stack_peak = used;
        paint_free_stack();
        base = (uint32_t)(uintptr_t)&__stack_top - current_sp();
        mf_mark_begin();
        MF_INVOKE();
        mf_mark_end();
        used = mf_stack_used();
        if (used > stack_peak) stack_peak = used;
        if (used - base > stack_invoke) stack_invoke = used - base;
        for (j = 0; j < MF_NUM_OUTPUTS; ++j) {
            const int32_t size = MF_OUTPUT_INFO(j)->size;
            if (write(fout, MF_OUTPUT(j), (size_t)size) != size) fail("cannot write mf_out.bin");
        }
        ++samples;
    }
done:
    close(fin);
    close(fout);
    if (stack_peak >= mf_stack_size()) fail("stack overflow: the program used all of its stack");
    put_stats(samples, "stack_invoke", stack_invoke, stack_peak, mf_stack_size());
    return 0;
}
