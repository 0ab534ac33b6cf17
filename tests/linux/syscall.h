/*
 * What the fixture's freestanding programs share: a raw system call
 * (x86-64 Linux ABI) and the numbers they use. No libc: linked static
 * with -nostdlib.
 */
typedef unsigned long u64;

static long syscall6(long n, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_mmap 9
#define SYS_mprotect 10
#define SYS_pwrite64 18
#define SYS_pipe 22
#define SYS_pause 34
#define SYS_fork 57
#define SYS_ftruncate 77
#define PROT_READ 1
#define PROT_WRITE 2
#define MAP_SHARED 1
#define MAP_PRIVATE 2
#define MAP_FIXED 0x10
#define MAP_ANONYMOUS 0x20
#define O_RDWR 2
#define O_CREAT 0100
