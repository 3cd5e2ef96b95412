/* mcuforge bare-metal start-up for Cortex-M (ARMv6-M, v7-M, v8-M mainline).
 *
 * Vector table, reset handler (copies .data, zeroes .bss, paints the stack,
 * enables the FPU when the build uses one, runs main, exits through
 * semihosting) and fault handlers that report the fault over semihosting and
 * stop the emulator instead of hanging it. The memory layout comes from the
 * linker script mcuforge generates for the target (symbols below). */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end;
extern uint32_t __stack_limit, __stack_top;
extern void __libc_init_array(void);
extern void initialise_monitor_handles(void);
extern int main(void);

#define MF_STACK_PAINT 0xC5C5C5C5u

void Reset_Handler(void);
void mf_fault_handler(void);

/* Semihosting call (BKPT 0xAB on M-profile). */
static inline int mf_semihost(int op, const void *arg) {
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

/* Paint [__stack_limit, sp - margin) so that the stack high-water mark can be measured. */
__attribute__((noinline)) void mf_stack_paint(void) {
    volatile uint32_t *p = &__stack_limit; /* volatile: no memset call, whose frame would be painted over */
    uint32_t *end;
    __asm__ volatile("mov %0, sp" : "=r"(end));
    end -= 16;
    while (p < end) *p++ = MF_STACK_PAINT;
}

/* Bytes of stack ever used since the last paint, measured from the top. */
uint32_t mf_stack_used(void) {
    const uint32_t *p = &__stack_limit;
    while (p < &__stack_top && *p == MF_STACK_PAINT) ++p;
    return (uint32_t)((const char *)&__stack_top - (const char *)p);
}

uint32_t mf_stack_size(void) {
    return (uint32_t)((const char *)&__stack_top - (const char *)&__stack_limit);
}

/* Any fault or unexpected exception: say which (IPSR: 3 HardFault, 4 MemManage, 5 BusFault,
 * 6 UsageFault, 7 SecureFault) and where (stacked PC), and stop the emulator. */
__attribute__((noreturn, used)) static void mf_fault_report(const uint32_t *frame) {
    static char msg[] = "mcuforge firmware: processor fault, exception ## at pc 0x######## \n";
    static const char hex[] = "0123456789abcdef";
    uint32_t ipsr, pc = frame[6];
    int i;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    ipsr &= 0x1FF;
    msg[46] = (char)('0' + (ipsr / 10) % 10);
    msg[47] = (char)('0' + ipsr % 10);
    for (i = 0; i < 8; ++i) msg[57 + i] = hex[(pc >> (28 - 4 * i)) & 0xF];
    mf_semihost(0x04 /* SYS_WRITE0 */, msg);
    mf_semihost(0x18 /* SYS_EXIT */, (const void *)(uintptr_t)0x20023u /* ADP_Stopped_RunTimeError */);
    for (;;) {}
}

/* Entry: the exception frame is on the main stack (thread mode never switches to PSP here). */
__attribute__((naked)) void mf_fault_handler(void) {
    __asm__ volatile("mrs r0, msp\n\tb mf_fault_report");
}

/* The C library's constructor/destructor hooks (no crti/crtn: -nostartfiles). */
void _init(void) {}
void _fini(void) {}

__attribute__((section(".vectors"), used)) void (*const mf_vectors[16])(void) = {
    (void (*)(void))(uintptr_t)&__stack_top,
    Reset_Handler,
    mf_fault_handler, /* NMI */
    mf_fault_handler, /* HardFault */
    mf_fault_handler, /* MemManage */
    mf_fault_handler, /* BusFault */
    mf_fault_handler, /* UsageFault */
    mf_fault_handler, /* SecureFault (v8-M) */
    0, 0, 0,
    mf_fault_handler, /* SVCall */
    mf_fault_handler, /* DebugMonitor */
    0,
    mf_fault_handler, /* PendSV */
    mf_fault_handler, /* SysTick */
};

__attribute__((noreturn)) void Reset_Handler(void) {
    uint32_t *src = &__data_load, *dst = &__data_start;
    while (dst < &__data_end) *dst++ = *src++;
    for (dst = &__bss_start; dst < &__bss_end; ++dst) *dst = 0;
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    /* CPACR: full access to CP10 and CP11 (FPU, MVE). */
    *(volatile uint32_t *)0xE000ED88u |= (0xFu << 20);
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
#if defined(__ARM_ARCH_8M_MAIN__) || defined(__ARM_ARCH_8_1M_MAIN__)
    /* v8-M: a stack overflow faults instead of silently overwriting .bss (the arena). */
    __asm__ volatile("msr msplim, %0" : : "r"(&__stack_limit));
#endif
    mf_stack_paint();
    initialise_monitor_handles();
    __libc_init_array();
    exit(main());
}
