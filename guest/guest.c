/*
 * The demo guest of vmem-gdbstub.
 *
 * vCPU 0 runs a loop of nested calls (for bt / finish) and switches
 * between two address spaces that share the kernel half; vCPU 1 writes a
 * global (for watchpoints) and now and then executes its own int3, which
 * must reach its own #BP handler. Both halt between bursts of work.
 */
typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

/* Filled in by the VMM before start: the two spaces' CR3 values. */
volatile u64 space_roots[2] = { 0, 0 };
/* Filled in by the VMM: LAPIC timer interrupts per second and vCPU (0: no
 * interrupt controller; then the VMM wakes a halted vCPU itself). */
volatile u64 timer_hz = 0;
/* Timer interrupts taken, by all vCPUs (timer_stub counts them). */
volatile u64 timer_ticks;
/* Set by a debugger: both vCPUs only wait for interrupts. */
volatile u64 guest_idle;
/* What the VMM's demo device answered last (port read, MMIO read). */
volatile u64 device_port_value;
volatile u64 device_mmio_value;
#define DEVICE_PORT 0x511
#define DEVICE_MMIO ((volatile u32 *)0xffffffffc0000000UL)

volatile u64 counter;
volatile u64 last_result;
volatile u64 watched_value;
volatile u64 bp_hits;
volatile u64 last_fault_addr;
volatile u64 last_fault_vector;
volatile u64 cr3_switches;
volatile u64 vcpu1_iterations;

/* Set by a debugger: vCPU 0 reads one u64 from probe_va, then clears it. */
volatile u64 probe_va;
volatile u64 probe_value;
volatile u64 probe_count;

const char greeting[] = "Hello from the higher half!";

/* User-accessible page (VA 0x400000; a different PA per address space). */
#define USER_PAGE ((volatile char *)0x400000UL)
/* The VMM's direct map of RAM: VA DIRECT_MAP + x is PA x. */
#define DIRECT_MAP 0xffff888000000000UL
#define ENTRY_ADDR 0x000ffffffffff000UL

/* Set by a debugger: vCPU 0 points the user page of space A at this
 * physical page through its own page tables (monitor vmem watch), then
 * clears it. */
volatile u64 remap_to;
/* Set by a debugger: vCPU 0 writes the entry next to the user page's (the
 * page after it, unmapped) and clears it again, then clears this: table
 * writes that change no translation of the user page. */
volatile u64 touch_neighbour;
volatile u64 neighbour_touches;
volatile u64 remaps;
/* Set by a debugger: vCPU 0 copies the page table holding the user page's
 * entry (space A) to this free physical page and points the directory
 * entry above at the copy, then clears it: the tables move, the
 * translation stays. */
volatile u64 move_table_to;
volatile u64 table_moves;
/* Set by a debugger: vCPU 1 runs (no hlt) until it is cleared. */
volatile u64 vcpu1_spin;

/* Set by a debugger (bench-e2e): vCPU 0 calls bump() in a tight loop, for
 * breakpoint hits per second. */
volatile u64 bench_spin;
volatile u64 bumps;

struct idt_entry {
    u16 offset_low;
    u16 selector;
    u8 ist;
    u8 type_attr;
    u16 offset_mid;
    u32 offset_high;
    u32 zero;
} __attribute__((packed));

struct idt_pointer {
    u16 limit;
    u64 base;
} __attribute__((packed));

#define TIMER_VECTOR 0x20
#define SPURIOUS_VECTOR 0x3f

static struct idt_entry idt[SPURIOUS_VECTOR + 1] __attribute__((aligned(16)));

extern void bp_stub(void);
extern void pf_stub(void);
extern void fault_stub(void);
extern void timer_stub(void);
extern void spurious_stub(void);

static void set_gate(int vector, void (*handler)(void))
{
    u64 addr = (u64)handler;
    idt[vector].offset_low = addr & 0xffff;
    idt[vector].selector = 0x08;
    idt[vector].ist = 0;
    idt[vector].type_attr = 0x8e; /* present, DPL 0, 64-bit interrupt gate */
    idt[vector].offset_mid = (addr >> 16) & 0xffff;
    idt[vector].offset_high = addr >> 32;
    idt[vector].zero = 0;
}

static void setup_idt(void)
{
    for (int v = 0; v < 32; v++)
        set_gate(v, fault_stub);
    set_gate(3, bp_stub);
    set_gate(14, pf_stub);
    set_gate(TIMER_VECTOR, timer_stub);
    set_gate(SPURIOUS_VECTOR, spurious_stub);
    struct idt_pointer ptr = { sizeof(idt) - 1, (u64)idt };
    __asm__ volatile("lidt %0" : : "m"(ptr));
}

static inline void wrmsr(u32 msr, u64 value)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)value), "d"((u32)(value >> 32)));
}

static inline u64 rdmsr(u32 msr)
{
    u32 low, high;
    __asm__ volatile("rdmsr" : "=a"(low), "=d"(high) : "c"(msr));
    return ((u64)high << 32) | low;
}

#define MSR_APIC_BASE 0x1b
#define X2APIC_SVR 0x80f
#define X2APIC_LVT_TIMER 0x832
#define X2APIC_TIMER_INITIAL 0x838
#define X2APIC_TIMER_DIVIDE 0x83e

/* This vCPU's LAPIC timer, periodic at timer_hz (x2APIC: no MMIO page to
 * map). KVM's APIC bus runs at 1 GHz; divided by 16. */
static void start_timer(void)
{
    if (!timer_hz)
        return;
    wrmsr(MSR_APIC_BASE, rdmsr(MSR_APIC_BASE) | (1 << 11) | (1 << 10));
    wrmsr(X2APIC_SVR, 0x100 | SPURIOUS_VECTOR);
    wrmsr(X2APIC_TIMER_DIVIDE, 0x3);
    wrmsr(X2APIC_LVT_TIMER, (1 << 17) | TIMER_VECTOR);
    wrmsr(X2APIC_TIMER_INITIAL, 1000000000UL / 16 / timer_hz);
}

static inline void halt(void)
{
    /* Our VMM wakes a vCPU halted with interrupts enabled: its timer
     * interrupt, or without an irqchip a short sleep standing in for one;
     * elsewhere (QEMU, no interrupt source set up) nothing would wake it,
     * so pause for a while instead. */
    if (space_roots[0]) {
        __asm__ volatile("sti; hlt; cli");
        return;
    }
    for (int i = 0; i < 1000; i++)
        __asm__ volatile("pause");
}

static inline void write_cr3(u64 value)
{
    __asm__ volatile("mov %0, %%cr3" : : "r"(value) : "memory");
}

static inline u64 read_cr3(void)
{
    u64 value;
    __asm__ volatile("mov %%cr3, %0" : "=r"(value));
    return value;
}

/* The entry of va at the level translating bits shift.. (12: the 4 KiB
 * page-table entry, 21: the directory entry) in the current space, read
 * and written through the direct map (0 if a level above is missing or
 * huge). */
static volatile u64 *entry_of(u64 va, int last_shift)
{
    u64 table = read_cr3() & ENTRY_ADDR;
    for (int shift = 39; shift > last_shift; shift -= 9) {
        u64 entry = ((volatile u64 *)(DIRECT_MAP + table))[(va >> shift) & 511];
        if (!(entry & 1) || (entry & 0x80))
            return 0;
        table = entry & ENTRY_ADDR;
    }
    return (volatile u64 *)(DIRECT_MAP + table) + ((va >> last_shift) & 511);
}

static volatile u64 *pte_of(u64 va)
{
    return entry_of(va, 12);
}

__attribute__((noinline)) void touch_neighbour_entry(void)
{
    volatile u64 *pte = pte_of((u64)USER_PAGE + 0x1000);
    if (pte) {
        *pte = 0x1000000 | 0x4; /* not present: no translation */
        *pte = 0;
        neighbour_touches++;
    }
}

__attribute__((noinline)) void remap_user_page(u64 pa)
{
    volatile u64 *pte = pte_of((u64)USER_PAGE);
    if (pte) {
        *pte = (*pte & ~ENTRY_ADDR) | pa;
        __asm__ volatile("invlpg (%0)" : : "r"(USER_PAGE) : "memory");
        remaps++;
    }
}

__attribute__((noinline)) void move_user_table(u64 pa)
{
    volatile u64 *pde = entry_of((u64)USER_PAGE, 21);
    if (pde && (*pde & 1) && !(*pde & 0x80)) {
        volatile u64 *from = (volatile u64 *)(DIRECT_MAP + (*pde & ENTRY_ADDR));
        volatile u64 *to = (volatile u64 *)(DIRECT_MAP + pa);
        for (int i = 0; i < 512; i++)
            to[i] = from[i];
        *pde = (*pde & ~ENTRY_ADDR) | pa;
        write_cr3(read_cr3());
        table_moves++;
    }
}

__attribute__((noinline)) int level3(int x)
{
    int local = x * 3;
    counter++;
    return local + 1;
}

__attribute__((noinline)) int level2(int x)
{
    int doubled = level3(x + 1) * 2;
    return doubled;
}

__attribute__((noinline)) int level1(int x)
{
    int result = level2(x) + 5;
    return result;
}

__attribute__((noinline)) void switch_space(u64 iteration)
{
    u64 root = space_roots[(iteration / 8) % 2];
    if (root) {
        write_cr3(root);
        cr3_switches++;
    }
}

/* Read the VMM's demo device: a port and an MMIO register, each answered
 * by the VMM itself (exits the debugger hands back untouched). */
__attribute__((noinline)) void poll_device(void)
{
    u32 value;
    __asm__ volatile("inl %1, %0" : "=a"(value) : "d"((u16)DEVICE_PORT));
    device_port_value = value;
    device_mmio_value = *DEVICE_MMIO;
}

__attribute__((noinline)) void bump(void)
{
    bumps++;
}

static void vcpu0_main(void)
{
    for (u64 iteration = 0;; iteration++) {
        while (guest_idle)
            halt();
        while (bench_spin)
            bump();
        last_result = level1((int)iteration);
        if (iteration % 8 == 0)
            switch_space(iteration);
        if (space_roots[0]) { /* only our VMM maps the user page and device */
            USER_PAGE[0] = 'A' + (iteration % 26);
            poll_device();
            if ((read_cr3() & ENTRY_ADDR) == space_roots[0]) {
                if (touch_neighbour) {
                    touch_neighbour_entry();
                    touch_neighbour = 0;
                }
                if (move_table_to) {
                    move_user_table(move_table_to);
                    move_table_to = 0;
                }
                if (remap_to) {
                    remap_user_page(remap_to);
                    remap_to = 0;
                }
            }
        }
        if (probe_va) {
            probe_value = *(volatile u64 *)probe_va;
            probe_va = 0;
            probe_count++;
        }
        halt();
    }
}

__attribute__((noinline)) void write_watched(u64 value)
{
    watched_value = value;
}

static void vcpu1_main(void)
{
    for (u64 iteration = 1;; iteration++) {
        while (guest_idle)
            halt();
        write_watched(watched_value + 1);
        vcpu1_iterations = iteration;
        if (iteration % 16 == 0)
            __asm__ volatile("int3");
        while (vcpu1_spin)
            __asm__ volatile("pause");
        halt();
    }
}

void kmain(u64 vcpu)
{
    setup_idt();
    start_timer();
    if (vcpu == 0)
        vcpu0_main();
    else
        vcpu1_main();
    for (;;)
        halt();
}
