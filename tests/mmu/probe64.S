/*
 * The real-MMU probe (tests/mmu_kvm.rs): for each virtual address in the
 * probe list, a load, a store of the loaded value (lock add $0) and an
 * instruction fetch, at CPL 0 and at CPL 3, through the random tables the
 * test built. Each outcome (status, value) goes to the result array;
 * "done" is reported by port I/O, then the vCPU halts with IF = 0.
 *
 * Status: 0 = the access completed (value: what a load read), 1 = #PF
 * (value: the error code), 2 = #BP after fetching the int3 at the VA
 * (value: the return rip), 16 + vector = any other exception (value: rip).
 * A user-level load or store ends with ud2: #UD there means it completed.
 *
 * Addresses: the harness lives at HV + physical address (PML4 slot 510).
 */
    .set HV,        0xffffff0000000000
    .set N_PROBES,  HV + 0x20000
    .set PROBES,    HV + 0x21000
    .set RESULTS,   HV + 0x30000
    .set USER_LOAD, HV + 0xf000
    .set USER_STORE, HV + 0xf010
    .set USER_CS,   0x1b
    .set USER_SS,   0x23

    .text
    .globl _start
_start:
    xor %r12, %r12
    movabs $RESULTS, %rbx
next:
    movabs $N_PROBES, %rax
    cmp (%rax), %r12
    jae done
    movabs $PROBES, %rax
    mov (%rax,%r12,8), %rdi

    /* CPL 0 load. */
    lea 1f(%rip), %rax
    call arm
    mov (%rdi), %rax
    mov %rax, value(%rip)
1:  call record
    /* CPL 0 store of the loaded value. */
    lea 1f(%rip), %rax
    call arm
    lock addq $0, (%rdi)
1:  call record
    /* CPL 0 fetch: the int3 at the VA traps as #BP. */
    lea 1f(%rip), %rax
    call arm
    call *%rdi
1:  call record
    /* CPL 3 load, store, fetch. */
    lea 1f(%rip), %rax
    call arm
    movabs $USER_LOAD, %rsi
    jmp to_user
1:  call record
    lea 1f(%rip), %rax
    call arm
    movabs $USER_STORE, %rsi
    jmp to_user
1:  call record
    lea 1f(%rip), %rax
    call arm
    mov %rdi, %rsi
    jmp to_user
1:  call record
    inc %r12
    jmp next

done:
    mov $0xf4, %dx
    out %al, %dx
2:  hlt
    jmp 2b

/* Recover at %rax with the caller's stack; the access completes unless a
 * handler says otherwise. */
arm:
    mov %rax, recover_rip(%rip)
    lea 8(%rsp), %rax
    mov %rax, recover_rsp(%rip)
    movq $0, status(%rip)
    movq $0, value(%rip)
    ret

/* Append (status, value) to the result array. */
record:
    mov status(%rip), %rax
    mov %rax, (%rbx)
    mov value(%rip), %rax
    mov %rax, 8(%rbx)
    add $16, %rbx
    ret

/* iretq to CPL 3 at %rsi (rdi: the VA). */
to_user:
    pushq $USER_SS
    pushq $0
    pushq $2
    pushq $USER_CS
    push %rsi
    iretq

/* Back to the probe's recovery point at CPL 0. */
recover:
    mov recover_rsp(%rip), %rsp
    jmp *recover_rip(%rip)

    .globl pf_handler
pf_handler:
    popq value(%rip)
    movq $1, status(%rip)
    jmp recover

    .globl bp_handler
bp_handler:
    mov (%rsp), %rax
    mov %rax, value(%rip)
    movq $2, status(%rip)
    jmp recover

    /* #UD: a user-level load or store completed (ud2); rax holds what the
     * load read. A #UD anywhere else is reported as such. */
    .globl ud_handler
ud_handler:
    mov %rax, value(%rip)
    mov (%rsp), %rax
    movabs $USER_LOAD, %rcx
    sub %rcx, %rax
    cmp $0x20, %rax
    jb recover
    mov (%rsp), %rax
    mov %rax, value(%rip)
    movq $22, status(%rip)
    jmp recover

    /* Any other vector: stubs push the vector; those with an error code
     * have it below rip. */
    .macro other vec, errcode
    .globl vec_\vec
vec_\vec:
    .if \errcode
    add $8, %rsp
    .endif
    mov (%rsp), %rax
    mov %rax, value(%rip)
    movq $(16 + \vec), status(%rip)
    jmp recover
    .endm
    other 0, 0
    other 1, 0
    other 2, 0
    other 4, 0
    other 5, 0
    other 7, 0
    other 8, 1
    other 10, 1
    other 11, 1
    other 12, 1
    other 13, 1
    other 16, 0
    other 17, 1
    other 18, 0
    other 19, 0

    .data
    .balign 8
recover_rip: .quad 0
recover_rsp: .quad 0
status:      .quad 0
value:       .quad 0
