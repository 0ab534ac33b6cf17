/*
 * The 32-bit demo guest: runs in protected mode with 32-bit paging (PSE or
 * PAE, chosen by the VMM), counts, and halts between counts.
 */
typedef unsigned int u32;

volatile u32 ticks32;
__attribute__((section(".message"))) const char message32[] = "Hello from 32-bit paging!";
static char stack32[4096] __attribute__((aligned(16)));

void main32(void)
{
    for (;;) {
        ticks32++;
        __asm__ volatile("sti; hlt; cli");
    }
}

__asm__(".section .text.entry, \"ax\"\n"
        ".globl _start\n"
        "_start:\n"
        "    mov $stack32 + 4096, %esp\n"
        "    call main32\n"
        "1:  hlt\n"
        "    jmp 1b\n"
        ".text\n");
