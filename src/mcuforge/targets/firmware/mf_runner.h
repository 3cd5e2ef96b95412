/* mcuforge batch runners (mf_fw_main.c, mf_train_main.c, mf_eenn_main.c): what they share.
 *
 * Firmware builds (no MF_HOST): the markers the instruction-counting plugin (mf_icount.c) watches —
 * out of line, never folded, doing nothing; two mf_mark_calibrate calls back to back measure the cost
 * of one mark, subtracted from every interval — and stack painting for the measured high-water.
 * Both builds: small semihosting-safe I/O helpers (no stdio). Include once, from the runner's main. */
#ifndef MF_RUNNER_H
#define MF_RUNNER_H

#include <stdint.h>
#include <string.h>
#include <unistd.h>

#ifndef MF_RUNNER_NAME
#define MF_RUNNER_NAME "mcuforge runner"
#endif

#ifndef MF_HOST
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
static inline __attribute__((always_inline, unused)) void paint_free_stack(void) {
    volatile uint32_t *p = &__stack_limit; /* volatile: no memset call, whose frame would be painted over */
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

static void put(int fd, const char *s) { (void)!write(fd, s, strlen(s)); }

static void put_u32(char **at, uint32_t v) {
    char tmp[11];
    int n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) *(*at)++ = tmp[--n];
}

static __attribute__((noreturn)) void fail(const char *what) {
    put(2, MF_RUNNER_NAME ": ");
    put(2, what);
    put(2, "\n");
    _exit(3);
}

/* The statistics line the Python runners parse:
 *   MF_STATS samples=N <call>=B stack_peak=B stack_size=B
 * (call: the deepest stack of one model call, e.g. stack_invoke or stack_step). */
static void put_stats(uint32_t samples, const char *call, uint32_t stack_call, uint32_t stack_peak,
                      uint32_t stack_size) {
    char line[128], *at = line;
    const char *keys[4] = {"MF_STATS samples=", call, " stack_peak=", " stack_size="};
    const uint32_t values[4] = {samples, stack_call, stack_peak, stack_size};
    int i;
    for (i = 0; i < 4; ++i) {
        const size_t n = strlen(keys[i]);
        if (i == 1) *at++ = ' ';
        memcpy(at, keys[i], n);
        at += n;
        if (i == 1) *at++ = '=';
        put_u32(&at, values[i]);
    }
    *at++ = '\n';
    *at = 0;
    put(1, line);
}

/* Read exactly `size` bytes; returns the number read (less only at end of file). */
static __attribute__((unused)) int32_t read_full(int fd, void *dst, int32_t size) {
    int32_t got = 0;
    while (got < size) {
        int r = (int)read(fd, (char *)dst + got, (size_t)(size - got));
        if (r <= 0) break;
        got += r;
    }
    return got;
}

#endif
