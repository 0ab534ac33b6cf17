/*
 * The QEMU TCG probe for x86 paging modes this KVM host cannot run
 * (tests/mmu_qemu.rs): 32-bit paging with and without PSE (and PSE-36),
 * PAE, and 5-level IA-32e paging (LA57). Booted by QEMU's multiboot
 * loader in 32-bit protected mode; the test's RAM image (at IMG) holds
 * the GDT, IDTs, the tables, the configuration and the probe list.
 *
 * For each VA, at CPL 0: a load, a store of the loaded value (lock add
 * $0) and a call (the VA holds int3), first with CR4.SMAP = 0, then with
 * SMAP = 1 (a supervisor load from a user page faults: that shows U/S).
 * CR0.WP = 1, so stores show R/W; calls show XD. Results go out through
 * the debugcon port 0xe9 (CPUID words first), then isa-debug-exit.
 *
 * Status: 0 completed (value: what a load read), 1 #PF (value: error
 * code), 2 #BP after the call (value: return address), 16 + vector other.
 */
    .set IMG,      0x200000
    .set GDT,      IMG + 0x0000
    .set IDT32,    IMG + 0x1000
    .set IDT64,    IMG + 0x2000
    .set STACK,    IMG + 0xf000
    .set CONFIG,   IMG + 0x10000
    .set MODE,     CONFIG + 0
    .set ROOT,     CONFIG + 4
    .set COUNT,    CONFIG + 8
    .set NXE,      CONFIG + 12
    .set CR4BASE,  CONFIG + 16
    .set CPUIDS,   CONFIG + 0x40
    .set PROBES,   IMG + 0x11000
    .set RESULTS,  IMG + 0x20000

    .section .multiboot, "a"
    .balign 4
    .long 0x1badb002, 0, -0x1badb002

    .text
    .code32
    .globl _start
_start:
    cli
    lgdt gdt_ptr
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $STACK, %esp
    /* What the CPU offers, for the test's CPU model. */
    mov $0x80000008, %eax
    cpuid
    mov %eax, CPUIDS
    mov $1, %eax
    cpuid
    mov %edx, CPUIDS + 4
    mov $0x80000001, %eax
    cpuid
    mov %edx, CPUIDS + 8
    mov $7, %eax
    xor %ecx, %ecx
    cpuid
    mov %ebx, CPUIDS + 12
    mov %ecx, CPUIDS + 16
    /* EFER.NXE as configured (PAE and IA-32e only). */
    cmpl $0, NXE
    je 1f
    mov $0xc0000080, %ecx
    rdmsr
    or $0x800, %eax
    wrmsr
1:  mov ROOT, %eax
    mov %eax, %cr3
    mov CR4BASE, %eax
    mov %eax, %cr4
    cmpl $3, MODE
    je long_mode
    lidt idt32_ptr
    mov %cr0, %eax
    or $0x80010000, %eax
    mov %eax, %cr0

    xor %ebp, %ebp                 /* pass: 0 SMAP off, 1 SMAP on */
    mov $RESULTS, %ebx
pass32:
    xor %esi, %esi
next32:
    cmp COUNT, %esi
    jae passed32
    mov PROBES(,%esi,8), %edi
    lea 1f, %eax
    call arm32
    mov (%edi), %eax
    mov %eax, value
1:  call record32
    lea 1f, %eax
    call arm32
    lock addl $0, (%edi)
1:  call record32
    lea 1f, %eax
    call arm32
    call *%edi
1:  call record32
    inc %esi
    jmp next32
passed32:
    inc %ebp
    cmp $2, %ebp
    jae report
    mov %cr4, %eax
    or $0x200000, %eax
    mov %eax, %cr4
    jmp pass32

arm32:
    mov %eax, recover_ip
    lea 4(%esp), %eax
    mov %eax, recover_sp
    movl $0, status
    movl $0, value
    movl $0, value + 4
    ret

record32:
    mov status, %eax
    mov %eax, (%ebx)
    movl $0, 4(%ebx)
    mov value, %eax
    mov %eax, 8(%ebx)
    mov value + 4, %eax
    mov %eax, 12(%ebx)
    add $16, %ebx
    ret

recover32:
    mov recover_sp, %esp
    jmp *recover_ip

    .globl pf32
pf32:
    popl value
    movl $1, status
    jmp recover32
    .globl bp32
bp32:
    mov (%esp), %eax
    mov %eax, value
    movl $2, status
    jmp recover32
    .macro other32 vec, errcode
    .globl v32_\vec
v32_\vec:
    .if \errcode
    add $4, %esp
    .endif
    mov (%esp), %eax
    mov %eax, value
    movl $(16 + \vec), status
    jmp recover32
    .endm

/* Send the CPUID words and every result, then leave QEMU. */
report:
    mov $0xe9, %dx
    mov $CPUIDS, %esi
    mov $20, %ecx
    rep outsb
    mov $RESULTS, %esi
    mov %ebx, %ecx
    sub $RESULTS, %ecx
    rep outsb
    mov $0xf4, %dx
    xor %eax, %eax
    out %eax, %dx
2:  hlt
    jmp 2b

long_mode:
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80010000, %eax
    mov %eax, %cr0
    ljmp $0x18, $probe64

    .code64
probe64:
    lidt idt64_ptr(%rip)
    xor %ebp, %ebp
    mov $RESULTS, %ebx
pass64:
    xor %esi, %esi
next64:
    cmpl COUNT, %esi
    jae passed64
    mov PROBES(,%rsi,8), %rdi
    lea 1f(%rip), %rax
    call arm64
    mov (%rdi), %rax
    mov %rax, value(%rip)
1:  call record64
    lea 1f(%rip), %rax
    call arm64
    lock addq $0, (%rdi)
1:  call record64
    lea 1f(%rip), %rax
    call arm64
    call *%rdi
1:  call record64
    inc %esi
    jmp next64
passed64:
    inc %ebp
    cmp $2, %ebp
    jae report64
    mov %cr4, %rax
    or $0x200000, %rax
    mov %rax, %cr4
    jmp pass64

arm64:
    mov %rax, recover_ip(%rip)
    lea 8(%rsp), %rax
    mov %rax, recover_sp(%rip)
    movq $0, status(%rip)
    movq $0, value(%rip)
    ret

record64:
    mov status(%rip), %rax
    mov %rax, (%rbx)
    mov value(%rip), %rax
    mov %rax, 8(%rbx)
    add $16, %rbx
    ret

recover64:
    mov recover_sp(%rip), %rsp
    jmp *recover_ip(%rip)

    .globl pf64
pf64:
    popq value(%rip)
    movq $1, status(%rip)
    jmp recover64
    .globl bp64
bp64:
    mov (%rsp), %rax
    mov %rax, value(%rip)
    movq $2, status(%rip)
    jmp recover64
    .macro other64 vec, errcode
    .globl v64_\vec
v64_\vec:
    .if \errcode
    add $8, %rsp
    .endif
    mov (%rsp), %rax
    mov %rax, value(%rip)
    movq $(16 + \vec), status(%rip)
    jmp recover64
    .endm

report64:
    mov $0xe9, %dx
    mov $CPUIDS, %esi
    mov $20, %ecx
    rep outsb
    mov $RESULTS, %esi
    mov %ebx, %ecx
    sub $RESULTS, %ecx
    rep outsb
    mov $0xf4, %dx
    xor %eax, %eax
    out %eax, %dx
3:  hlt
    jmp 3b

    .code32
    .irp v, 0, 1, 2, 4, 5, 6, 7, 16, 18, 19
    other32 \v, 0
    .endr
    .irp v, 8, 10, 11, 12, 13, 17
    other32 \v, 1
    .endr
    .code64
    .irp v, 0, 1, 2, 4, 5, 6, 7, 16, 18, 19
    other64 \v, 0
    .endr
    .irp v, 8, 10, 11, 12, 13, 17
    other64 \v, 1
    .endr

    .data
    .balign 8
gdt_ptr:   .word 0x1f
           .long GDT
idt32_ptr: .word 0x7ff
           .long IDT32
           .balign 8
idt64_ptr: .word 0xfff
           .quad IDT64
recover_ip: .quad 0
recover_sp: .quad 0
status:     .quad 0
value:      .quad 0
