/*
 * hull's synthetic guest: a freestanding program booted by hull-vmm through the same ELF and
 * 64-bit boot path as a Linux vmlinux. It proves the VMM's devices from the guest side, one
 * step at a time, printing each result on the serial console, then resets through the i8042.
 *
 * It finds its devices the way Linux does, from `virtio_mmio.device=4K@<addr>:<irq>` on the
 * command line, and drives them with a minimal polled virtio-mmio (version 2) driver. Options,
 * also from the command line:
 *   hull.vsock_port=N   listen on vsock port N and echo one connection back (host CONNECTs)
 *   hull.host_port=N    connect to host port N, send a greeting, print the reply
 *   hull.hostile=1      first attack the devices with malformed chains and floods
 *   hull.idle=1         halt for good instead of resetting (benchmarks measure an idle VMM)
 */
#include <stdint.h>
#include <stddef.h>

#define barrier() __asm__ volatile("mfence" ::: "memory")

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t rd32(uint64_t a) { return *(volatile uint32_t *)a; }
static inline void wr32(uint64_t a, uint32_t v) { *(volatile uint32_t *)a = v; }

static void *memset(void *d, int c, size_t n) { uint8_t *p = d; while (n--) *p++ = (uint8_t)c; return d; }
static void *memcpy(void *d, const void *s, size_t n) { uint8_t *p = d; const uint8_t *q = s; while (n--) *p++ = *q++; return d; }
static size_t strlen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }
static int strncmp(const char *a, const char *b, size_t n) { for (size_t i = 0; i < n; i++) { if (a[i] != b[i] || !a[i]) return (uint8_t)a[i] - (uint8_t)b[i]; } return 0; }

/* ---- serial ---- */
static void putc_serial(char c) { while (!(inb(0x3f8 + 5) & 0x20)) {} outb(0x3f8, (uint8_t)c); }
static void puts_serial(const char *s) { while (*s) putc_serial(*s++); }
static void putn(uint64_t v, int base) {
    char b[24]; int i = 0;
    if (!v) { putc_serial('0'); return; }
    while (v) { b[i++] = "0123456789abcdef"[v % base]; v /= base; }
    while (i--) putc_serial(b[i]);
}
static void say(const char *a, uint64_t n, const char *b) { puts_serial("hull-synthetic: "); puts_serial(a); if (b) { putn(n, 10); puts_serial(b); } puts_serial("\n"); }

static void reset(void) {
    puts_serial("hull-synthetic: resetting through the i8042\n");
    outb(0x64, 0xfe);
    for (;;) __asm__ volatile("hlt");
}
static void fail(const char *why) { puts_serial("hull-synthetic: FAIL "); puts_serial(why); puts_serial("\n"); reset(); }

/* ---- command line ---- */
static const char *cmdline;
static uint64_t parse_num(const char *s, const char **end) {
    uint64_t v = 0; int base = 10;
    if (s[0] == '0' && s[1] == 'x') { base = 16; s += 2; }
    for (;; s++) {
        int d;
        if (*s >= '0' && *s <= '9') d = *s - '0';
        else if (base == 16 && *s >= 'a' && *s <= 'f') d = *s - 'a' + 10;
        else break;
        v = v * base + d;
    }
    if (end) *end = s;
    return v;
}
static int opt(const char *key, uint64_t *val) {
    size_t n = strlen(key);
    for (const char *p = cmdline; *p; p++) {
        if ((p == cmdline || p[-1] == ' ') && !strncmp(p, key, n) && p[n] == '=') { *val = parse_num(p + n + 1, 0); return 1; }
    }
    return 0;
}

/* ---- memory: a bump allocator over identity-mapped RAM ---- */
static uint8_t heap[4 << 20] __attribute__((aligned(4096)));
static size_t heap_used;
static void *alloc(size_t n, size_t align) {
    heap_used = (heap_used + align - 1) & ~(align - 1);
    if (heap_used + n > sizeof(heap)) fail("out of heap");
    void *p = heap + heap_used; heap_used += n; memset(p, 0, n); return p;
}

/* ---- virtio-mmio ---- */
struct desc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };
#define D_NEXT 1
#define D_WRITE 2
struct vq {
    uint16_t size, last_used, avail_idx, free;
    struct desc *desc;
    volatile uint16_t *avail; /* flags, idx, ring[size] */
    volatile uint8_t *used;   /* flags, idx, ring[size] of {u32 id, u32 len} */
};
struct vdev { uint64_t base; uint32_t id; uint32_t irq; struct vq q[3]; int nq; };

static struct vdev devs[8];
static int ndevs;

static void find_devices(void) {
    const char *key = "virtio_mmio.device=4K@";
    size_t n = strlen(key);
    for (const char *p = cmdline; *p; p++) {
        if (!strncmp(p, key, n)) {
            const char *end;
            uint64_t base = parse_num(p + n, &end);
            if (rd32(base) != 0x74726976 || rd32(base + 4) != 2) fail("virtio-mmio magic/version");
            devs[ndevs].base = base;
            devs[ndevs].irq = *end == ':' ? (uint32_t)parse_num(end + 1, 0) : 0;
            devs[ndevs].id = rd32(base + 8);
            say("virtio-mmio device id ", devs[ndevs].id, " found on the cmdline");
            ndevs++;
        }
    }
}
static struct vdev *device(uint32_t id) { for (int i = 0; i < ndevs; i++) if (devs[i].id == id) return &devs[i]; return 0; }

static void vdev_init(struct vdev *d, int nq) {
    uint64_t b = d->base;
    wr32(b + 0x70, 0);
    wr32(b + 0x70, 1);
    wr32(b + 0x70, 3);
    wr32(b + 0x14, 1);
    if (!(rd32(b + 0x10) & 1)) fail("device lacks VIRTIO_F_VERSION_1");
    wr32(b + 0x24, 0); wr32(b + 0x20, 0);
    wr32(b + 0x24, 1); wr32(b + 0x20, 1);
    wr32(b + 0x70, 3 | 8);
    if (!(rd32(b + 0x70) & 8)) fail("FEATURES_OK not accepted");
    for (int i = 0; i < nq; i++) {
        struct vq *q = &d->q[i];
        wr32(b + 0x30, i);
        uint32_t max = rd32(b + 0x34);
        if (!max) fail("queue not available");
        q->size = max < 16 ? max : 16;
        q->desc = alloc(16 * q->size, 4096);
        q->avail = alloc(6 + 2 * q->size, 4096);
        q->used = alloc(6 + 8 * q->size, 4096);
        q->last_used = q->avail_idx = q->free = 0;
        wr32(b + 0x38, q->size);
        wr32(b + 0x80, (uint32_t)(uint64_t)q->desc); wr32(b + 0x84, 0);
        wr32(b + 0x90, (uint32_t)(uint64_t)q->avail); wr32(b + 0x94, 0);
        wr32(b + 0xa0, (uint32_t)(uint64_t)q->used); wr32(b + 0xa4, 0);
        wr32(b + 0x44, 1);
    }
    d->nq = nq;
    wr32(b + 0x70, 3 | 8 | 4);
    if (rd32(b + 0x70) & 0x40) fail("device needs reset after DRIVER_OK");
}

/* Publish descriptor `head` on queue qi and notify. */
static void vq_publish(struct vdev *d, int qi, uint16_t head) {
    struct vq *q = &d->q[qi];
    q->avail[2 + q->avail_idx % q->size] = head;
    barrier();
    q->avail_idx++;
    q->avail[1] = q->avail_idx;
    barrier();
    wr32(d->base + 0x50, qi);
}
/* Put a one-descriptor buffer at slot `slot` and publish it. */
static void vq_put(struct vdev *d, int qi, uint16_t slot, void *buf, uint32_t len, int writable) {
    struct vq *q = &d->q[qi];
    q->desc[slot] = (struct desc){ (uint64_t)buf, len, (uint16_t)(writable ? D_WRITE : 0), 0 };
    vq_publish(d, qi, slot);
}
static inline uint64_t rdtsc(void) { uint32_t lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((uint64_t)hi << 32) | lo; }
/* Wait for the next used entry; returns its id and stores its length. 0 on timeout. The
 * timeout counts TSC ticks as if the TSC ran at 1 GHz (it runs faster: waits only get longer). */
static int vq_wait(struct vdev *d, int qi, uint32_t *id, uint32_t *len, uint64_t ms) {
    struct vq *q = &d->q[qi];
    uint64_t deadline = rdtsc() + ms * 1000000ull;
    while (rdtsc() < deadline) {
        barrier();
        uint16_t idx = *(volatile uint16_t *)(q->used + 2);
        if (idx != q->last_used) {
            volatile uint8_t *e = q->used + 4 + 8 * (q->last_used % q->size);
            *id = *(volatile uint32_t *)e;
            *len = *(volatile uint32_t *)(e + 4);
            q->last_used++;
            wr32(d->base + 0x64, rd32(d->base + 0x60));
            return 1;
        }
    }
    return 0;
}
#define SPINS 20000ull /* ms */

/* ---- vsock ---- */
struct __attribute__((packed)) vhdr {
    uint64_t src_cid, dst_cid; uint32_t src_port, dst_port, len; uint16_t type, op; uint32_t flags, buf_alloc, fwd_cnt;
};
enum { OP_REQUEST = 1, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST };
#define RXBUF 4096
static uint64_t my_cid;
static uint8_t *rxbufs[16];
static uint8_t *txbuf;
static uint32_t fwd_cnt;

static void vsock_send(struct vdev *d, uint32_t sport, uint32_t dport, uint16_t op, uint32_t flags, const void *data, uint32_t len) {
    struct vhdr *h = (struct vhdr *)txbuf;
    *h = (struct vhdr){ my_cid, 2, sport, dport, len, 1, op, flags, 65536, fwd_cnt };
    if (len) memcpy(txbuf + sizeof *h, data, len);
    vq_put(d, 1, 0, txbuf, sizeof *h + len, 0);
    uint32_t id, l;
    if (!vq_wait(d, 1, &id, &l, SPINS)) fail("vsock tx not consumed");
}
/* Wait for a packet on rx; returns the buffer (re-queued by the caller via vsock_rx_done). */
static struct vhdr *vsock_recv(struct vdev *d, uint32_t *slot) {
    uint32_t len;
    if (!vq_wait(d, 0, slot, &len, SPINS)) fail("vsock rx timed out");
    if (len < sizeof(struct vhdr)) fail("vsock rx short packet");
    return (struct vhdr *)rxbufs[*slot];
}
static void vsock_rx_done(struct vdev *d, uint32_t slot) { vq_put(d, 0, (uint16_t)slot, rxbufs[slot], RXBUF, 1); }

static void vsock_setup(struct vdev *d) {
    vdev_init(d, 3);
    my_cid = rd32(d->base + 0x100) | ((uint64_t)rd32(d->base + 0x104) << 32);
    say("vsock: guest cid ", my_cid, "");
    txbuf = alloc(RXBUF + 64, 64);
    for (uint16_t i = 0; i < d->q[0].size; i++) { rxbufs[i] = alloc(RXBUF, 64); vsock_rx_done(d, i); }
}

/* Echo one host-initiated connection on `port` until the host closes it. */
static void vsock_echo(struct vdev *d, uint32_t port) {
    say("vsock: listening on port ", port, "");
    uint32_t slot, peer = 0, echoed = 0;
    for (;;) {
        struct vhdr *h = vsock_recv(d, &slot);
        struct vhdr c = *h;
        uint8_t data[RXBUF];
        if (c.len) memcpy(data, (uint8_t *)h + sizeof *h, c.len > RXBUF - sizeof *h ? RXBUF - sizeof *h : c.len);
        vsock_rx_done(d, slot);
        if (c.dst_port != port) continue;
        if (c.op == OP_REQUEST) { peer = c.src_port; vsock_send(d, port, peer, OP_RESPONSE, 0, 0, 0); say("vsock: accepted host port ", peer, ""); }
        else if (c.op == OP_RW && c.src_port == peer) { fwd_cnt += c.len; vsock_send(d, port, peer, OP_RW, 0, data, c.len); echoed += c.len; }
        else if (c.op == OP_SHUTDOWN && c.src_port == peer) { vsock_send(d, port, peer, OP_RST, 0, 0, 0); break; }
        else if (c.op == OP_CREDIT_REQUEST) vsock_send(d, port, peer, OP_CREDIT_UPDATE, 0, 0, 0);
    }
    say("vsock: echoed ", echoed, " bytes; host closed");
}

/* Connect to a host port (reaching <uds>_<port> on the host), greet, print the reply. */
static void vsock_connect(struct vdev *d, uint32_t hport) {
    uint32_t me = 40000, slot;
    vsock_send(d, me, hport, OP_REQUEST, 0, 0, 0);
    struct vhdr *h;
    uint16_t op;
    do { /* skip leftovers of earlier connections */
        h = vsock_recv(d, &slot);
        op = h->op;
        int ours = h->dst_port == me && h->src_port == hport;
        vsock_rx_done(d, slot);
        if (ours) break;
    } while (1);
    if (op != OP_RESPONSE) fail("vsock: host refused the guest's connection");
    const char *hi = "hello host from the guest\n";
    vsock_send(d, me, hport, OP_RW, 0, hi, strlen(hi));
    for (;;) {
        h = vsock_recv(d, &slot);
        if (h->op == OP_RW) {
            char line[128]; uint32_t n = h->len < 127 ? h->len : 127;
            memcpy(line, (uint8_t *)h + sizeof *h, n); line[n] = 0;
            while (n && (line[n - 1] == '\n')) line[--n] = 0;
            puts_serial("hull-synthetic: vsock: host replied: "); puts_serial(line); puts_serial("\n");
            vsock_rx_done(d, slot);
            break;
        }
        vsock_rx_done(d, slot);
    }
    vsock_send(d, me, hport, OP_SHUTDOWN, 3, 0, 0);
}

/* ---- hostile: malformed chains and floods; every request must simply fail ---- */
static void hostile(struct vdev *d) {
    struct vq *q = &d->q[1];
    uint32_t id, len;
    struct { const char *what; struct desc a, b; int two; } cases[] = {
        { "address beyond RAM", { 0xfff0000000ull, 64, 0, 0 }, {0}, 0 },
        { "length running off the end", { 0x7ff0000ull, 0x100000, 0, 0 }, {0}, 0 },
        { "absurd length", { (uint64_t)txbuf, 0xffffffffu, 0, 0 }, {0}, 0 },
        { "descriptor loop", { (uint64_t)txbuf, 44, D_NEXT, 1 }, { (uint64_t)txbuf, 44, D_NEXT, 0 }, 1 },
        { "next index out of the table", { (uint64_t)txbuf, 44, D_NEXT, 200 }, {0}, 0 },
        { "readable after writable", { (uint64_t)txbuf, 44, D_NEXT | D_WRITE, 1 }, { (uint64_t)txbuf, 44, 0, 0 }, 1 },
    };
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        q->desc[0] = cases[i].a;
        if (cases[i].two) q->desc[1] = cases[i].b;
        vq_publish(d, 1, 0);
        if (!vq_wait(d, 1, &id, &len, SPINS)) fail(cases[i].what);
        puts_serial("hull-synthetic: hostile: "); puts_serial(cases[i].what); puts_serial(": request failed, VMM alive\n");
    }
    /* A header claiming a payload far beyond the chain. */
    struct vhdr *h = (struct vhdr *)txbuf;
    *h = (struct vhdr){ my_cid, 2, 1, 2, 0x7fffffff, 1, OP_RW, 0, 0, 0 };
    vq_put(d, 1, 0, txbuf, sizeof *h, 0);
    if (!vq_wait(d, 1, &id, &len, SPINS)) fail("oversized header len");
    say("hostile: header claiming 2 GiB of payload: request failed, VMM alive", 0, 0);
    /* Register abuse: bad queue select, notify of a queue that does not exist. */
    wr32(d->base + 0x30, 99); wr32(d->base + 0x38, 4096); wr32(d->base + 0x44, 1);
    wr32(d->base + 0x50, 77); wr32(d->base + 0x30, 0);
    say("hostile: register abuse ignored", 0, 0);
    /* Floods: connection requests to closed ports and data for unknown connections, without
     * reading the replies (the rx ring stays full, so the device must bound its backlog). */
    for (uint32_t i = 0; i < 3000; i++)
        vsock_send(d, 50000 + i, 7000 + i, i % 2 ? OP_RW : OP_REQUEST, 0, "x", i % 2);
    say("hostile: flooded ", 3000, " packets");
    /* Drain what the device did queue for us: resets. */
    uint32_t slot, resets = 0;
    for (;;) {
        if (!vq_wait(d, 0, &slot, &len, 300)) break;
        if (((struct vhdr *)rxbufs[slot])->op == OP_RST) resets++;
        vsock_rx_done(d, slot);
    }
    say("hostile: drained ", resets, " resets");
    fwd_cnt = 0;
}

/* ---- virtio-fs: one FUSE_INIT round trip with the backend ---- */
static void fs_init(struct vdev *d) {
    vdev_init(d, 2);
    char tag[37]; for (int i = 0; i < 36; i++) tag[i] = *(volatile char *)(d->base + 0x100 + i); tag[36] = 0;
    puts_serial("hull-synthetic: fs: tag "); puts_serial(tag); puts_serial("\n");
    uint8_t *in = alloc(104, 64), *out = alloc(80, 64);
    *(uint32_t *)(in + 0) = 104;    /* fuse_in_header.len */
    *(uint32_t *)(in + 4) = 26;     /* FUSE_INIT */
    *(uint64_t *)(in + 8) = 1;      /* unique */
    *(uint32_t *)(in + 40) = 7;     /* major */
    *(uint32_t *)(in + 44) = 38;    /* minor */
    *(uint32_t *)(in + 48) = 65536; /* max_readahead */
    struct vq *q = &d->q[1];
    q->desc[0] = (struct desc){ (uint64_t)in, 104, D_NEXT, 1 };
    q->desc[1] = (struct desc){ (uint64_t)out, 80, D_WRITE, 0 };
    vq_publish(d, 1, 0);
    uint32_t id, len;
    if (!vq_wait(d, 1, &id, &len, SPINS)) fail("fs: no FUSE_INIT reply");
    int32_t err = *(int32_t *)(out + 4);
    uint32_t major = *(uint32_t *)(out + 16), minor = *(uint32_t *)(out + 20);
    if (err) fail("fs: FUSE_INIT returned an error");
    puts_serial("hull-synthetic: fs: FUSE_INIT reply: major "); putn(major, 10);
    puts_serial(" minor "); putn(minor, 10); puts_serial(" len "); putn(len, 10); puts_serial("\n");
}

/* ---- virtio-net: one frame out ---- */
static void net_send(struct vdev *d) {
    vdev_init(d, 2);
    uint8_t mac[6]; for (int i = 0; i < 6; i++) mac[i] = *(volatile uint8_t *)(d->base + 0x100 + i);
    const char *payload = "hull-synthetic frame";
    uint8_t *f = alloc(12 + 64, 64);
    memset(f + 12, 0xff, 6); memcpy(f + 18, mac, 6); f[24] = 0x88; f[25] = 0xb5;
    memcpy(f + 26, payload, strlen(payload));
    vq_put(d, 1, 0, f, 12 + 64, 0);
    uint32_t id, len;
    if (!vq_wait(d, 1, &id, &len, SPINS)) fail("net: frame not consumed");
    puts_serial("hull-synthetic: net: sent a frame from ");
    for (int i = 0; i < 6; i++) { putn(mac[i] >> 4, 16); putn(mac[i] & 15, 16); if (i < 5) putc_serial(':'); }
    puts_serial("\n");
}

/* ---- interrupts: IO-APIC pin -> vector 0x30 + device index, counted per device ----
 * The devices are driven by polling, with interrupts enabled meanwhile: the counts prove that
 * the VMM raised each device's line (irqfd -> in-kernel IO-APIC -> local APIC) and set its
 * interrupt status, which Linux's interrupt-driven drivers depend on. */
#define LAPIC 0xfee00000ull
#define IOAPIC 0xfec00000ull
#define VECTOR_BASE 0x30
struct __attribute__((packed)) idt_entry { uint16_t off_lo, sel; uint8_t ist, type; uint16_t off_mid; uint32_t off_hi, zero; };
static struct idt_entry idt[256] __attribute__((aligned(16)));
static volatile uint32_t irq_count[8];
struct iframe;
static void on_irq(int i) {
    irq_count[i]++;
    wr32(devs[i].base + 0x64, rd32(devs[i].base + 0x60));
    wr32(LAPIC + 0xb0, 0); /* EOI */
}
__attribute__((interrupt)) static void isr0(struct iframe *f) { (void)f; on_irq(0); }
__attribute__((interrupt)) static void isr1(struct iframe *f) { (void)f; on_irq(1); }
__attribute__((interrupt)) static void isr2(struct iframe *f) { (void)f; on_irq(2); }
__attribute__((interrupt)) static void spurious(struct iframe *f) { (void)f; }
static void set_gate(int v, void (*h)(struct iframe *)) {
    uint64_t a = (uint64_t)h;
    uint16_t cs; __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    idt[v] = (struct idt_entry){ (uint16_t)a, cs, 0, 0x8e, (uint16_t)(a >> 16), (uint32_t)(a >> 32), 0 };
}
static void ioapic_write(uint32_t reg, uint32_t v) { wr32(IOAPIC, reg); wr32(IOAPIC + 0x10, v); }
static void setup_interrupts(void) {
    void (*isr[3])(struct iframe *) = { isr0, isr1, isr2 };
    outb(0x21, 0xff); outb(0xa1, 0xff); /* the legacy PIC stays masked */
    for (int i = 0; i < ndevs && i < 3; i++) {
        set_gate(VECTOR_BASE + i, isr[i]);
        ioapic_write(0x10 + 2 * devs[i].irq, VECTOR_BASE + i); /* fixed, edge, active high, unmasked */
        ioapic_write(0x11 + 2 * devs[i].irq, 0);                /* to APIC id 0 */
    }
    set_gate(0xff, spurious);
    struct __attribute__((packed)) { uint16_t limit; uint64_t base; } idtr = { sizeof idt - 1, (uint64_t)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));
    wr32(LAPIC + 0x80, 0);     /* accept every priority */
    wr32(LAPIC + 0xf0, 0x1ff); /* enable, spurious vector 0xff */
    __asm__ volatile("sti");
}
static void report_interrupts(void) {
    for (int i = 0; i < ndevs; i++) {
        puts_serial("hull-synthetic: interrupts: device id "); putn(devs[i].id, 10);
        puts_serial(" irq "); putn(devs[i].irq, 10); puts_serial(": "); putn(irq_count[i], 10); puts_serial("\n");
    }
}

/* hull.ticks=1: the local APIC timer, periodic, counts ticks; every fifth the guest prints
 * "tick N", for ever. A snapshot test stops it and restores a copy, which must go on counting
 * from the saved N (memory, registers, IDT and the timer's LAPIC state all came back) without
 * booting again (no second hello). */
#define TIMER_VECTOR 0x40
static volatile uint64_t ticks;
__attribute__((interrupt)) static void timer_isr(struct iframe *f) { (void)f; ticks++; wr32(LAPIC + 0xb0, 0); }
static void tick_forever(void) {
    set_gate(TIMER_VECTOR, timer_isr);
    wr32(LAPIC + 0x3e0, 0x3);                     /* divide by 16 */
    wr32(LAPIC + 0x320, TIMER_VECTOR | (1 << 17)); /* periodic */
    wr32(LAPIC + 0x380, 6250000);                 /* 100 ms at KVM's 1 GHz APIC clock */
    uint64_t shown = 0;
    for (;;) {
        __asm__ volatile("sti; hlt; cli");
        if (ticks / 5 != shown) { shown = ticks / 5; say("tick ", shown, ""); }
    }
}

/* The boot page tables map only the first GiB; map the fourth (the MMIO hole: virtio-mmio,
 * IO-APIC, local APIC) with uncached 2 MiB pages. */
static uint64_t mmio_pd[512] __attribute__((aligned(4096)));
static void map_mmio_hole(void) {
    uint64_t cr3;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    uint64_t *pml4 = (uint64_t *)(cr3 & ~0xfffull);
    uint64_t *pdpt = (uint64_t *)(pml4[0] & ~0xfffull);
    for (uint64_t i = 0; i < 512; i++) mmio_pd[i] = (0xc0000000ull + (i << 21)) | 0x83 | 0x18; /* P RW PS PWT PCD */
    pdpt[3] = (uint64_t)mmio_pd | 0x3;
    __asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
}

void guest_main(const uint8_t *zero_page) {
    map_mmio_hole();
    cmdline = (const char *)(uintptr_t)*(const uint32_t *)(zero_page + 0x228);
    puts_serial("hull-synthetic: hello from the guest\n");
    find_devices();
    setup_interrupts();
    uint64_t v;
    struct vdev *d;
    if ((d = device(26))) fs_init(d);
    if ((d = device(1))) net_send(d);
    if ((d = device(19))) {
        vsock_setup(d);
        if (opt("hull.hostile", &v) && v) hostile(d);
        if (opt("hull.host_port", &v)) vsock_connect(d, (uint32_t)v);
        if (opt("hull.vsock_port", &v)) vsock_echo(d, (uint32_t)v);
    }
    report_interrupts();
    puts_serial("hull-synthetic: all steps done\n");
    if (opt("hull.ticks", &v) && v) tick_forever();
    if (opt("hull.idle", &v) && v) {
        puts_serial("hull-synthetic: idling\n");
        for (;;) __asm__ volatile("cli; hlt");
    }
    reset();
}
