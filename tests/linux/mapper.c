/*
 * A process for the Linux fixture: maps 64 KiB anonymous read-write,
 * writes a marker into it, makes its second half read-only (the first
 * dump shows a VMA with two sets of rights), then waits for a line on
 * /dev/ttyS2 (the fixture script's trigger), maps 16 KiB more at REGION2
 * (every page written) and makes the first page of REGION read-only, says
 * MAPPED2 and sleeps forever: the second dump differs by exactly that.
 * Freestanding (raw system calls), linked static.
 */
#include "syscall.h"

/* Where the regions go: fixed, so the tests know them. */
#define REGION 0x7e0000000000UL
#define REGION2 0x7e0000100000UL

static const char marker[] = "vmem-gdbstub mapper";

/* The entry point: the stack is 16-byte aligned here, not as after a
 * call, so no SSE code (see the build flags) and nothing on the stack
 * that assumes otherwise. */
__attribute__((force_align_arg_pointer)) void _start(void)
{
    char *region = (char *)syscall6(SYS_mmap, REGION, 0x10000, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    for (int i = 0; i < (int)sizeof(marker); i++) {
        region[i] = marker[i];
        region[0x8000 + i] = marker[i];
    }
    syscall6(SYS_mprotect, REGION + 0x8000, 0x8000, PROT_READ, 0, 0, 0);

    char line[16];
    long trigger = syscall6(SYS_open, (long)"/dev/ttyS2", 0, 0, 0, 0, 0);
    if (trigger >= 0 && syscall6(SYS_read, trigger, (long)line, sizeof(line), 0, 0, 0) > 0) {
        char *more = (char *)syscall6(SYS_mmap, REGION2, 0x4000, PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        for (int page = 0; page < 4; page++)
            for (int i = 0; i < (int)sizeof(marker); i++)
                more[page * 0x1000 + i] = marker[i];
        syscall6(SYS_mprotect, REGION, 0x1000, PROT_READ, 0, 0, 0);
        syscall6(SYS_write, 1, (long)"MAPPED2\n", 8, 0, 0, 0);
    }
    for (;;)
        syscall6(SYS_pause, 0, 0, 0, 0, 0, 0);
}
