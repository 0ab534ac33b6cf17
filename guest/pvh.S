/*
 * PVH entry, for booting the same guest under QEMU (-kernel) to compare
 * gdb stubs. QEMU enters here in 32-bit protected mode, paging off; we
 * map the first 1 GiB at 0 (for this code), at 0xffffffff80000000 (the
 * kernel) and at 0xffff888000000000 (the direct map) with 2 MiB pages,
 * enter long mode and jump to _start. Our own VMM enters at _start in
 * long mode directly and never runs this.
 */
#define KERNEL_VMA 0xffffffff80000000
#define PHYS(sym) ((sym) - KERNEL_VMA)

    .section .note.pvh, "a", @note
    .balign 4
    .long 4, 4, 18              /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long PHYS(pvh_start)

    .text
    .code32
pvh_start:
    /* pd[i] = i * 2 MiB | PS | RW | P, for the first 1 GiB. */
    mov $PHYS(pvh_pd), %edi
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, (%edi,%ecx,8)
    movl $0, 4(%edi,%ecx,8)
    inc %ecx
    cmp $512, %ecx
    jne 1b
    /* pdpt_low[0] = pd; pdpt_high[510] = pd. */
    movl $PHYS(pvh_pd) + 3, PHYS(pvh_pdpt_low)
    movl $PHYS(pvh_pd) + 3, PHYS(pvh_pdpt_high) + 510 * 8
    /* pml4[0] and pml4[273] (direct map) = pdpt_low; pml4[511] = pdpt_high. */
    movl $PHYS(pvh_pdpt_low) + 3, PHYS(pvh_pml4)
    movl $PHYS(pvh_pdpt_low) + 3, PHYS(pvh_pml4) + 273 * 8
    movl $PHYS(pvh_pdpt_high) + 3, PHYS(pvh_pml4) + 511 * 8
    mov $PHYS(pvh_pml4), %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x620, %eax             /* PAE, OSFXSR, OSXMMEXCPT */
    mov %eax, %cr4
    mov $0xc0000080, %ecx       /* EFER: LME | NXE */
    rdmsr
    or $0x900, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax        /* PG, WP, PE */
    mov %eax, %cr0
    lgdt PHYS(pvh_gdt_pointer)
    ljmp $0x08, $PHYS(pvh_long)

    .code64
pvh_long:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    lgdt pvh_gdt_pointer_high(%rip)
    movabs $_start, %rax
    xor %edi, %edi
    jmp *%rax

    .section .rodata
    .balign 8
pvh_gdt:
    .quad 0, 0x00af9b000000ffff, 0x00cf93000000ffff
pvh_gdt_pointer:
    .word 23
    .long PHYS(pvh_gdt)
    .balign 8
pvh_gdt_pointer_high:
    .word 23
    .quad pvh_gdt

    .bss
    .balign 4096
pvh_pml4: .skip 4096
pvh_pdpt_low: .skip 4096
pvh_pdpt_high: .skip 4096
pvh_pd: .skip 4096
