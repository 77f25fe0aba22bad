/*
 * hull's synthetic guest: a freestanding program booted by hull-vmm through the same ELF and
 * 64-bit boot path as a Linux vmlinux. It proves the VMM's devices from the guest side, one
 * step at a time, printing each result on the serial console, then resets through the i8042.
 */
#include <stdint.h>
#include <stddef.h>

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static void putc_serial(char c) {
    while (!(inb(0x3f8 + 5) & 0x20)) {}
    outb(0x3f8, (uint8_t)c);
}
static void puts_serial(const char *s) { while (*s) putc_serial(*s++); }

static void reset(void) {
    puts_serial("hull-synthetic: resetting through the i8042\n");
    outb(0x64, 0xfe);
    for (;;) __asm__ volatile("hlt");
}

void guest_main(const uint8_t *zero_page) {
    const char *cmdline = (const char *)(uintptr_t)*(const uint32_t *)(zero_page + 0x228);
    puts_serial("hull-synthetic: hello from the guest\n");
    puts_serial("hull-synthetic: cmdline: ");
    puts_serial(cmdline);
    puts_serial("\n");
    reset();
}
