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

#ifndef MF_HOST
extern uint32_t __stack_limit, __stack_top;
uint32_t mf_stack_used(void);
uint32_t mf_stack_size(void);

#define MF_MARKER __attribute__((noipa, used))
MF_MARKER void mf_mark_calibrate(void) { __asm__ volatile("" ::: "memory"); }
MF_MARKER void mf_mark_begin(void) { __asm__ volatile("" ::: "memory"); }
MF_MARKER void mf_mark_end(void) { __asm__ volatile("" ::: "memory"); }
MF_MARKER void mf_layer_mark(void) { __asm__ volatile("" ::: "memory"); }

#define MF_PAINT 0xC5C5C5C5u

static inline __attribute__((always_inline, unused)) void paint_free_stack(void) {
    volatile uint32_t *p = &__stack_limit;
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    sp -= 2;
    while (p < sp) *p++ = MF_PAINT;
}

static __attribute__((unused)) uint32_t current_sp(void) {
    uint32_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    return sp;
}
#define MARK_BEGIN() mf_mark_begin()
#define MARK_END() mf_mark_end()
#else
#define MARK_BEGIN() ((void)0)
#define MARK_END() ((void)0)
#endif

static int8_t mf_input[MF_EENN_INPUT_SIZE];
static uint8_t mf_record[12 + MF_EENN_NUM_EXITS * MF_EENN_NUM_CLASSES];
static int32_t mf_thresholds[MF_EENN_NUM_THRESHOLDS];

static void put(int fd, const char *s) { (void)!write(fd, s, strlen(s)); }

static void put_u32(char **at, uint32_t v) {
    char tmp[11];
    int n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) *(*at)++ = tmp[--n];
}

static __attribute__((noreturn)) void fail(const char *what) {
    put(2, "mcuforge early-exit runner: ");
    put(2, what);
    put(2, "\n");
    _exit(3);
}

static int32_t read_full(int fd, void *dst, int32_t size) {
    int32_t got = 0;
    while (got < size) {
        int r = (int)read(fd, (char *)dst + got, (size_t)(size - got));
        if (r <= 0) break;
        got += r;
    }
    return got;
}

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
    char line[112], *at = line;
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
    memcpy(at, "MF_STATS samples=", 17); at += 17;
    put_u32(&at, samples);
    memcpy(at, " stack_invoke=", 14); at += 14;
    put_u32(&at, stack_invoke);
    memcpy(at, " stack_peak=", 12); at += 12;
    put_u32(&at, stack_peak);
    memcpy(at, " stack_size=", 12); at += 12;
    put_u32(&at, size);
    *at++ = '\n';
    *at = 0;
    put(1, line);
    return 0;
}
