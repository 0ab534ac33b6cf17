/* Entry, interrupt stubs and the few instructions C cannot express. */
    .section .text.entry, "ax"
    .globl _start
_start:
    /* rdi = vCPU index (set by the VMM); 16 KiB stack per vCPU. */
    lea stacks(%rip), %rsp
    mov %rdi, %rax
    inc %rax
    shl $14, %rax
    add %rax, %rsp
    xor %ebp, %ebp
    call kmain
1:  hlt
    jmp 1b

    .text
    /* #BP: the guest's own int3 lands here; count it and return. */
    .globl bp_stub
bp_stub:
    lock incq bp_hits(%rip)
    iretq

    /* The LAPIC timer: count the tick, end the interrupt (x2APIC EOI). */
    .globl timer_stub
timer_stub:
    lock incq timer_ticks(%rip)
    push %rax
    push %rcx
    push %rdx
    mov $0x80b, %ecx
    xor %eax, %eax
    xor %edx, %edx
    wrmsr
    pop %rdx
    pop %rcx
    pop %rax
    iretq

    /* A spurious interrupt needs no EOI. */
    .globl spurious_stub
spurious_stub:
    iretq

    /* #PF: remember the address and vector, then halt this vCPU. */
    .globl pf_stub
pf_stub:
    push %rax
    mov %cr2, %rax
    mov %rax, last_fault_addr(%rip)
    movq $14, last_fault_vector(%rip)
    pop %rax
2:  hlt
    jmp 2b

    /* Any other exception: record it and halt this vCPU. */
    .globl fault_stub
fault_stub:
    movq $255, last_fault_vector(%rip)
3:  hlt
    jmp 3b

    .bss
    .balign 16
stacks:
    .skip 16384 * 8
