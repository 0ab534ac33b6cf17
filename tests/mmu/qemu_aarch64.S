/*
 * The QEMU TCG probe for AArch64 stage-1 translation, 4 KiB granule, 48-
 * and 39-bit VAs, TTBR0 and TTBR1 (tests/mmu_qemu_aarch64.rs). Runs at
 * EL1 (QEMU `virt`, no EL2/EL3); the test's RAM image (IMG) holds the
 * configuration, the probe list and the random tables. TTBR0's root keeps
 * an identity block for this code and the image.
 *
 * For each VA, seven outcomes (ESR-style status, value):
 *   0 a real load at EL1         (0 / loaded value, or ESR / FAR)
 *   1-4 AT S1E1R, S1E1W, S1E0R, S1E0W (PAR_EL1 as status, 0)
 *   5 a call at EL1, 6 a jump at EL0 (the VA holds BRK #0: ESR / ELR)
 * Results go out through the PL011 UART with the MMU off, then PSCI
 * SYSTEM_OFF.
 */
    .set IMG,      0x40200000
    .set CONFIG,   IMG + 0x0
    .set PROBES,   IMG + 0x1000
    .set STACK,    IMG + 0xf000
    .set RESULTS,  IMG + 0x10000
    .set UART,     0x09000000

    .text
    .globl _start
_start:
    ldr x0, =STACK
    mov sp, x0
    adr x28, vars             /* x28: this probe's variables, always */
    adr x0, vectors
    msr vbar_el1, x0
    /* MAIR: every index normal write-back memory. */
    ldr x0, =0xffffffffffffffff
    msr mair_el1, x0
    /* TCR: TxSZ from the config, 4 KiB granules, inner-shareable WB
     * walks, IPS = 48 bits. */
    ldr x1, =CONFIG
    ldr x2, [x1, #0]          /* TxSZ */
    ldr x0, =(0b01 << 8) | (0b01 << 10) | (0b11 << 12) | (0b00 << 14) | (0b01 << 24) | (0b01 << 26) | (0b11 << 28) | (0b10 << 30) | (0b101 << 32)
    orr x0, x0, x2
    orr x0, x0, x2, lsl #16
    msr tcr_el1, x0
    ldr x0, [x1, #8]
    msr ttbr0_el1, x0
    ldr x0, [x1, #16]
    msr ttbr1_el1, x0
    isb
    tlbi vmalle1
    dsb sy
    isb
    mrs x0, sctlr_el1
    orr x0, x0, #1            /* M */
    bic x0, x0, #(1 << 19)    /* WXN off */
    msr sctlr_el1, x0
    isb

    ldr x19, =PROBES
    ldr x20, =RESULTS
    ldr x21, [x1, #24]        /* count */
    mov x22, #0
next:
    cmp x22, x21
    b.hs done
    ldr x23, [x19, x22, lsl #3]
    /* 0: load at EL1. */
    adr x0, 1f
    bl arm
    ldr x0, [x23]
    str x0, [x28, #24]
1:  bl record
    /* 1-4: address translation instructions. */
    at s1e1r, x23
    bl record_par
    at s1e1w, x23
    bl record_par
    at s1e0r, x23
    bl record_par
    at s1e0w, x23
    bl record_par
    /* 5: call at EL1. */
    adr x0, 1f
    bl arm
    blr x23
1:  bl record
    /* 6: jump to EL0. */
    adr x0, 1f
    bl arm
    msr elr_el1, x23
    mov x0, #0x3c0            /* EL0t, DAIF masked */
    msr spsr_el1, x0
    eret
1:  bl record
    add x22, x22, #1
    b next

done:
    mrs x0, sctlr_el1
    bic x0, x0, #1
    msr sctlr_el1, x0
    isb
    ldr x1, =RESULTS
    ldr x2, =UART
2:  cmp x1, x20
    b.hs 3f
    ldrb w3, [x1], #1
    strb w3, [x2]
    b 2b
3:  ldr x0, =0x84000008       /* PSCI SYSTEM_OFF */
    hvc #0
4:  wfi
    b 4b

/* Recover at x0 with the caller's stack. */
arm:
    str x0, [x28, #0]
    mov x0, sp
    str x0, [x28, #8]
    str xzr, [x28, #16]
    str xzr, [x28, #24]
    ret

record:
    ldr x0, [x28, #16]
    str x0, [x20], #8
    ldr x0, [x28, #24]
    str x0, [x20], #8
    ret

record_par:
    isb
    mrs x0, par_el1
    str x0, [x20], #8
    str xzr, [x20], #8
    ret

/* Any synchronous exception: ESR as status, ELR (BRK) or FAR as value. */
fault:
    mrs x0, esr_el1
    str x0, [x28, #16]
    lsr x1, x0, #26
    cmp x1, #0x3c
    b.eq 1f
    mrs x0, far_el1
    b 2f
1:  mrs x0, elr_el1
2:  str x0, [x28, #24]
    ldr x0, [x28, #8]
    mov sp, x0
    ldr x0, [x28, #0]
    br x0

    .balign 2048
vectors:
    .rept 16
    .balign 128
    b fault
    .endr

    .data
    .balign 8
vars:
recover_pc: .quad 0
recover_sp: .quad 0
status:     .quad 0
value:      .quad 0
