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

extern uint32_t __stack_limit, __stack_top;
uint32_t mf_stack_used(void);
uint32_t mf_stack_size(void);

/* noipa: never inlined, cloned or folded together (identical bodies keep identical costs). */
#define MF_MARKER __attribute__((noipa, used))
MF_MARKER void mf_mark_calibrate(void) { __asm__ volatile("" ::: "memory"); }
MF_MARKER void mf_mark_begin(void) { __asm__ volatile("" ::: "memory"); }
MF_MARKER void mf_mark_end(void) { __asm__ volatile("" ::: "memory"); }
MF_MARKER void mf_layer_mark(void) { __asm__ volatile("" ::: "memory"); }

#define MF_PAINT 0xC5C5C5C5u

/* Paint the free stack below the caller's frame (inlined: no frame of its own). */
static inline __attribute__((always_inline)) void paint_free_stack(void) {
    volatile uint32_t *p = &__stack_limit; /* volatile: no memset call, whose frame would be painted over */
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    sp -= 2;
    while (p < sp) *p++ = MF_PAINT;
}

static uint32_t current_sp(void) {
    uint32_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    return sp;
}

static void put(int fd, const char *s) { write(fd, s, strlen(s)); }

static void put_u32(char **at, uint32_t v) {
    char tmp[11];
    int n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) *(*at)++ = tmp[--n];
}

static __attribute__((noreturn)) void fail(const char *what) {
    put(2, "mcuforge firmware: ");
    put(2, what);
    put(2, "\n");
    _exit(3);
}

/* Read exactly `size` bytes; returns the number read (less only at end of file). */
static int32_t read_full(int fd, int8_t *dst, int32_t size) {
    int32_t got = 0;
    while (got < size) {
        int r = read(fd, dst + got, (size_t)(size - got));
        if (r <= 0) break;
        got += r;
    }
    return got;
}

int main(void) {
    int fin = open("mf_in.bin", O_RDONLY), fout = open("mf_out.bin", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    uint32_t samples = 0, stack_invoke = 0, stack_peak = 0;
    char line[96], *at = line;
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
    memcpy(at, "MF_STATS samples=", 17); at += 17;
    put_u32(&at, samples);
    memcpy(at, " stack_invoke=", 14); at += 14;
    put_u32(&at, stack_invoke);
    memcpy(at, " stack_peak=", 12); at += 12;
    put_u32(&at, stack_peak);
    memcpy(at, " stack_size=", 12); at += 12;
    put_u32(&at, mf_stack_size());
    *at++ = '\n';
    *at = 0;
    put(1, line);
    return 0;
}
