/*
 * A load for the Linux scale fixture: fills a 256 MiB file on the
 * initramfs (page cache, written in a scattered order so neighbouring
 * pages of the file sit at unrelated physical addresses), then forks
 * CHILDREN processes that each map the whole file shared and read every
 * page: CHILDREN address spaces of 65,536 4 KiB mappings that coalesce
 * into nothing, which then keep reading them (the CPUs are in one of them
 * when the guest is stopped). Says SPRAYED when all are in place.
 * Freestanding (raw system calls), linked static.
 */
#include "syscall.h"

#define PAGES 65536UL
#define CHILDREN 13

static void say(const char *s, long n)
{
    syscall6(SYS_write, 1, (long)s, n, 0, 0, 0);
}

__attribute__((force_align_arg_pointer)) void _start(void)
{
    static char page[4096];
    long fd = syscall6(SYS_open, (long)"/spray", O_RDWR | O_CREAT, 0600, 0, 0, 0);
    syscall6(SYS_ftruncate, fd, PAGES * 4096, 0, 0, 0, 0);
    /* An odd stride is a permutation of the pages (PAGES is a power of 2). */
    for (u64 i = 0; i < PAGES; i++) {
        u64 n = (i * 40503UL) & (PAGES - 1);
        page[0] = (char)n;
        syscall6(SYS_pwrite64, fd, (long)page, 4096, n * 4096, 0, 0);
    }
    int done[2];
    syscall6(SYS_pipe, (long)done, 0, 0, 0, 0, 0);
    for (int c = 0; c < CHILDREN; c++) {
        if (syscall6(SYS_fork, 0, 0, 0, 0, 0, 0) == 0) {
            volatile char *map = (volatile char *)syscall6(SYS_mmap, 0, PAGES * 4096,
                                                           PROT_READ | PROT_WRITE, MAP_SHARED,
                                                           fd, 0);
            long sum = 0;
            for (u64 p = 0; p < PAGES; p++)
                sum += map[p * 4096];
            char one = (char)sum;
            syscall6(SYS_write, done[1], (long)&one, 1, 0, 0, 0);
            /* Keep running over the pages, so that whenever the guest is
             * stopped its CPUs are most likely in one of these spaces. */
            for (u64 p = 0;; p = (p + 1) & (PAGES - 1))
                sum += map[p * 4096];
        }
    }
    for (int c = 0; c < CHILDREN; c++) {
        char one;
        syscall6(SYS_read, done[0], (long)&one, 1, 0, 0, 0);
    }
    say("SPRAYED\n", 8);
    for (;;)
        syscall6(SYS_pause, 0, 0, 0, 0, 0, 0);
}
