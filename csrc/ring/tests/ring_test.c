/* ring_test.c: a standalone test program for the ring core (csrc/ring/brk_ring.c).
 *
 * Build (tests/test_c_core.py does this for plain, ASan+UBSan and TSan):
 *   gcc -std=c11 -Wall -Wextra -Werror -Icsrc -O2 -pthread \
 *       csrc/ring/tests/ring_test.c csrc/ring/brk_ring.c -o ring_test
 * Run:  ./ring_test MODE     (MODE: unit, corrupt, procs, wakeup, threads)
 *
 * Prints one line per check ("ok    name ..." or "FAIL  name: why") and a
 * last line "N passed, M failed"; the exit status is 1 if anything failed.
 * BRK_TEST_SCALE=K divides the record and round counts by K (sanitizer builds).
 *
 * Segments are anonymous MAP_SHARED mappings made before fork(), so nothing
 * is ever created in /dev/shm. Every wait has a timeout; a watchdog alarm
 * ends the whole program if something still hangs, and forked children die
 * with their parent (PR_SET_PDEATHSIG).
 *
 * Some checks are regressions of defects found in brk_ring.c; their names
 * say what went wrong.
 */

#define _GNU_SOURCE
#include <stdint.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <signal.h>
#include <unistd.h>
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <linux/futex.h>

#include "brk_ring.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define NS 1000000000LL
/* Every wait's timeout; reaching it is a failure. Nothing here waits that long for a reason: a
 * ping-pong partner answers within milliseconds even on a machine loaded far beyond its cores.
 * A lost wake-up in a ping-pong never heals (nothing else comes to wake the sleeper), so it
 * sleeps to this timeout: that, not how long a wait took, is what the checks catch. */
#define WAIT_NS (30 * NS)
#define REC_MAX 2000              /* procs/threads: largest payload */

/* ---- reporting ----------------------------------------------------------- */

static int g_pass, g_fail;
static uint64_t g_scale = 1;
static char g_why[1024];
static char g_info[512];

static const char *rc_name(long long rc)
{
    static const char *names[] = {"OK",      "EMPTY",  "FULL",    "TOOBIG",   "CORRUPT", "LAPPED", "TIMEOUT",
                                  "EVICTED", "BUSY",   "LOST",    "NOTREADY", "BADSEG",  "CLOSED", "INTERRUPTED"};
    static _Thread_local char buf[32];
    if (rc >= 0 && rc <= 13)
        return names[rc];
    if (rc == -EINVAL)
        return "-EINVAL";
    if (rc == -EBUSY)
        return "-EBUSY";
    if (rc == -ENOSPC)
        return "-ENOSPC";
    if (rc == -ENOENT)
        return "-ENOENT";
    if (rc == -EOPNOTSUPP)
        return "-EOPNOTSUPP";
    snprintf(buf, sizeof buf, "%lld", rc);
    return buf;
}

/* Inside a check function: fail it with a message (and the line). */
#define REQ(cond, ...)                                                                                                 \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            int n_ = snprintf(g_why, sizeof g_why, "line %d: ", __LINE__);                                             \
            snprintf(g_why + n_, sizeof g_why - (size_t)n_, __VA_ARGS__);                                             \
            return g_why;                                                                                              \
        }                                                                                                              \
    } while (0)

#define REQ_RC(expr, want)                                                                                             \
    do {                                                                                                               \
        long long got_ = (long long)(expr), want_ = (long long)(want);                                                 \
        REQ(got_ == want_, "%s returned %s, want %s", #expr, rc_name(got_), rc_name(want_));                           \
    } while (0)

#define INFO(...) snprintf(g_info, sizeof g_info, __VA_ARGS__)

static void report(const char *name, const char *why)
{
    if (!why) {
        g_pass++;
        printf("ok    %s%s%s\n", name, g_info[0] ? "  -- " : "", g_info);
    } else {
        g_fail++;
        printf("FAIL  %s: %s%s%s\n", name, why, g_info[0] ? "  -- " : "", g_info);
    }
    g_info[0] = 0;
    fflush(stdout);
}

#define RUN(name, call)                                                                                                \
    do {                                                                                                               \
        g_info[0] = 0;                                                                                                 \
        report((name), (call));                                                                                        \
    } while (0)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void spin_ns(uint64_t ns)
{
    double end = now_s() + (double)ns * 1e-9;
    while (now_s() < end)
        ;
}

static uint64_t scaled(uint64_t n, uint64_t minimum)
{
    uint64_t v = n / g_scale;
    return v < minimum ? minimum : v;
}

/* ---- randomness, payloads ------------------------------------------------ */

static inline uint64_t xs64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* xorshift64* of (seed, seq): a record's length is a pure function of its
 * sequence number, so any consumer knows what to expect. */
static const uint64_t SEED = 0x5eed0f7e57c0ffeeull;
static inline uint64_t rec_rand(uint64_t seq)
{
    uint64_t x = SEED ^ (seq * 0x9E3779B97F4A7C15ull + 1);
    xs64(&x);
    xs64(&x);
    return x * 0x2545F4914F6CDD1Dull;
}

static inline uint64_t rec_len(uint64_t seq, uint64_t minlen, uint64_t maxlen)
{
    return minlen + (rec_rand(seq) >> 11) % (maxlen - minlen + 1);
}

/* FNV-1a over 64-bit words (then bytes), folded to 32 bits. */
static uint32_t csum32(const unsigned char *p, uint64_t n)
{
    uint64_t h = 0xcbf29ce484222325ull, i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return (uint32_t)(h ^ (h >> 32));
}

/* A stress record: [seq:8][filler][csum of everything before:4]; a record
 * shorter than 12 bytes is the prefix of the 12-byte one. */
static void make_rec(unsigned char *d, uint64_t seq, uint64_t len)
{
    if (len >= 12) {
        memcpy(d, &seq, 8);
        memset(d + 8, (int)(rec_rand(~seq) & 0xff), len - 12);
        uint32_t c = csum32(d, len - 4);
        memcpy(d + len - 4, &c, 4);
    } else {
        unsigned char t[12];
        make_rec(t, seq, 12);
        memcpy(d, t, len);
    }
}

/* 0 if p[0..len) is record `seq` */
static int rec_is(const unsigned char *p, uint64_t len, uint64_t seq)
{
    if (len < 12) {
        unsigned char t[12];
        make_rec(t, seq, len);
        return memcmp(p, t, len) == 0 ? 0 : -1;
    }
    uint64_t s;
    uint32_t c;
    memcpy(&s, p, 8);
    memcpy(&c, p + len - 4, 4);
    return s == seq && c == csum32(p, len - 4) ? 0 : -1;
}

/* A self-checking record of at least 12 bytes: its seq, or UINT64_MAX */
static uint64_t rec_seq(const unsigned char *p, uint64_t len)
{
    if (len < 12)
        return UINT64_MAX;
    uint64_t s;
    uint32_t c;
    memcpy(&s, p, 8);
    memcpy(&c, p + len - 4, 4);
    return c == csum32(p, len - 4) ? s : UINT64_MAX;
}

/* Unit tests: byte pattern of record `seq`; with len >= 8 the first 8 bytes are seq. */
static void pat(unsigned char *p, uint64_t len, uint64_t seq)
{
    for (uint64_t i = 0; i < len; i++)
        p[i] = (unsigned char)(seq * 131u + i * 7u + 1u);
    if (len >= 8)
        memcpy(p, &seq, 8);
}

static int pat_ok(const unsigned char *p, uint64_t len, uint64_t seq)
{
    unsigned char t[4096];
    if (len > sizeof t)
        return 0;
    pat(t, len, seq);
    return memcmp(p, t, len) == 0;
}

static uint64_t pat_seq(const unsigned char *p)
{
    uint64_t s;
    memcpy(&s, p, 8);
    return s;
}

static inline uint64_t rec_size(uint64_t len) { return BRK_REC_HDR + ((len + 7) & ~(uint64_t)7); }

/* where the tail lands after a len-byte record sent at tail t */
static inline uint64_t next_tail(uint64_t t, uint64_t len, uint64_t cap)
{
    uint64_t sz = rec_size(len), contig = cap - (t & (cap - 1));
    return t + (sz > contig ? contig : 0) + sz;
}

/* ---- futex interposition ------------------------------------------------- */

/* brk_ring.c calls syscall(SYS_futex, ...). This definition in the program
 * takes precedence; it forwards everything to libc's syscall, except that a
 * one-shot hook may run just before a FUTEX_WAIT, i.e. after the sleeper
 * checked the other side's position and before it blocks: the exact window
 * the no-lost-wake-up argument in brk_wait() is about (used by the wakeup
 * mode's "published between ... and its FUTEX_WAIT" checks only). The
 * sanitizer runtimes do not intercept syscall(); brk_ring.c has no static
 * state, so the hook calling back into it is harmless. */
static long (*g_real_syscall)(long, ...); /* set in main(), before any thread */
static _Atomic(void (*)(void)) g_futex_hook;
static _Atomic int g_hook_ran;
/* This process's futex sleeps that found a word already changed (EAGAIN): a wake-up that came
 * between the sleeper's last look and its block, i.e. the window itself, taken for real. */
static _Atomic uint64_t g_waitv_changed, g_wait_changed;
/* ... and those that ended by their timeout: the sleeper slept its whole wait. In a ping-pong,
 * where the other side does nothing until answered, each one is a lost wake-up, whatever the
 * wait returned afterwards (brk_wait_any looks once more after a sleep and reports the record
 * that it should have been woken for as if nothing had happened). */
static _Atomic uint64_t g_waitv_timedout, g_wait_timedout;

static void resolve_syscall(void)
{
    void *f = dlsym(RTLD_NEXT, "syscall");
    if (!f)
        abort();
    memcpy(&g_real_syscall, &f, sizeof f);
}

long syscall(long nr, ...)
{
    va_list ap;
    long a[6];
    va_start(ap, nr);
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long); /* brk_ring.c always passes six arguments to futex and futex_waitv */
    va_end(ap);
    void (*h)(void);
    if (((nr == SYS_futex && ((int)a[1] & FUTEX_CMD_MASK) == FUTEX_WAIT) || nr == SYS_futex_waitv) &&
        (h = atomic_exchange(&g_futex_hook, NULL))) {
        h();
        atomic_store(&g_hook_ran, 1);
    }
    long rc = g_real_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
    if (rc < 0 && (errno == EAGAIN || errno == ETIMEDOUT)) {
        int again = errno == EAGAIN;
        if (nr == SYS_futex_waitv)
            atomic_fetch_add(again ? &g_waitv_changed : &g_waitv_timedout, 1);
        else if (nr == SYS_futex && ((int)a[1] & FUTEX_CMD_MASK) == FUTEX_WAIT)
            atomic_fetch_add(again ? &g_wait_changed : &g_wait_timedout, 1);
    }
    return rc;
}

/* ---- segments and rigs --------------------------------------------------- */

typedef struct {
    unsigned char *base;
    uint64_t total, map_len;
    uint64_t off[BRK_MAX_RINGS], size[BRK_MAX_RINGS];
    uint32_t n;
} seg_t;

/* An anonymous shared segment plus a PROT_NONE guard page; under ASan the
 * bytes of the segment that belong to no ring are poisoned, so a read past
 * a ring's data area is reported. */
static int seg_make(seg_t *s, const brk_ring_spec *specs, uint32_t n)
{
    memset(s, 0, sizeof *s);
    if (brk_seg_layout(specs, n, s->off, s->size, &s->total))
        return -1;
    s->n = n;
    s->map_len = s->total + 4096;
    void *p = mmap(NULL, s->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    s->base = p;
    if (mprotect(s->base + s->total, 4096, PROT_NONE))
        return -1;
    if (brk_seg_format(p, s->total, specs, n, getpid(), 0, NULL))
        return -1;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t end = s->off[i] + s->size[i], next = i + 1 < n ? s->off[i + 1] : s->total;
        if (next > end)
            POISON(s->base + end, next - end);
    }
    return 0;
}

static void seg_free(seg_t *s)
{
    if (!s->base)
        return;
    UNPOISON(s->base, s->total);
    munmap(s->base, s->map_len);
    s->base = NULL;
}

static struct brk_ring_hdr *seg_ring(seg_t *s, uint32_t i) { return (struct brk_ring_hdr *)(s->base + s->off[i]); }

enum { K_SPSC, K_BCAST, K_LOSSY };
static const char *KN[] = {"spsc", "bcast", "lossy"};

static brk_ring_spec mkspec(int k, uint64_t cap, uint32_t maxc)
{
    brk_ring_spec s;
    memset(&s, 0, sizeof s);
    s.kind = k == K_SPSC ? BRK_KIND_SPSC : BRK_KIND_BCAST;
    s.flags = k == K_LOSSY ? BRK_FLAG_LOSSY : 0;
    s.capacity = cap;
    s.max_consumers = k == K_SPSC ? 0 : maxc;
    return s;
}

static int attach_p(brk_ring *r, seg_t *s, uint32_t i)
{
    return brk_ring_attach(r, s->base, s->total, i, BRK_ROLE_PRODUCER, getpid(), 0);
}

static int attach_c(brk_ring *r, seg_t *s, uint32_t i)
{
    int rc = brk_ring_attach(r, s->base, s->total, i, BRK_ROLE_CONSUMER, getpid(), 0);
    if (rc == 0 && r->kind == BRK_KIND_BCAST)
        rc = brk_bcast_join(r, getpid(), 0);
    return rc;
}

/* One ring, its producer and nc consumers, all in this process. */
typedef struct {
    seg_t seg;
    brk_ring p, c[4];
    int nc, k;
    uint64_t seq;     /* next seq the producer sends */
    uint64_t rseq[4]; /* next seq each consumer expects */
} rig_t;

static const char *rig_open(rig_t *g, int k, uint64_t cap, int nc, uint32_t maxc)
{
    memset(g, 0, sizeof *g);
    g->k = k;
    g->nc = nc;
    brk_ring_spec s = mkspec(k, cap, maxc);
    REQ(seg_make(&g->seg, &s, 1) == 0, "seg_make failed: %s", strerror(errno));
    REQ_RC(attach_p(&g->p, &g->seg, 0), 0);
    for (int i = 0; i < nc; i++)
        REQ_RC(attach_c(&g->c[i], &g->seg, 0), 0);
    return NULL;
}

static void rig_close(rig_t *g) { seg_free(&g->seg); }

static struct brk_rec rec_at(const brk_ring *r, uint64_t pos)
{
    struct brk_rec h;
    memcpy(&h, r->data + (pos & r->mask), sizeof h);
    return h;
}

static uint64_t tail_of(const brk_ring *r) { return atomic_load(&r->hdr->tail); }

/* producer: send a patterned record of len bytes as the next seq */
static int psend(rig_t *g, uint64_t len)
{
    unsigned char b[4096];
    pat(b, len, g->seq);
    int rc = brk_send(&g->p, b, len);
    if (rc == 0)
        g->seq++;
    return rc;
}

/* consumer i: receive the next record; it must be seq rseq[i] of want_len bytes */
static const char *crecv(rig_t *g, int i, uint64_t want_len)
{
    unsigned char b[4096];
    memset(b, 0xEE, sizeof b);
    REQ_RC(brk_recv(&g->c[i], b, g->c[i].max_record), 0);
    REQ(g->c[i].rlen == want_len, "consumer %d: len %llu, want %llu", i, (unsigned long long)g->c[i].rlen,
        (unsigned long long)want_len);
    REQ(pat_ok(b, want_len, g->rseq[i]), "consumer %d: record %llu has the wrong bytes", i,
        (unsigned long long)g->rseq[i]);
    g->rseq[i]++;
    return NULL;
}

/* send one record, check the tail lands on want_tail, every consumer reads it */
static const char *sr(rig_t *g, uint64_t len, uint64_t want_tail)
{
    REQ_RC(psend(g, len), 0);
    REQ(tail_of(&g->p) == want_tail, "after a %llu-byte record the tail is %llu, want %llu", (unsigned long long)len,
        (unsigned long long)tail_of(&g->p), (unsigned long long)want_tail);
    for (int i = 0; i < g->nc; i++) {
        const char *e = crecv(g, i, len);
        if (e)
            return e;
        REQ(g->c[i].head == want_tail, "consumer %d head %llu, want %llu", i, (unsigned long long)g->c[i].head,
            (unsigned long long)want_tail);
    }
    return NULL;
}

#define TRY(call)                                                                                                      \
    do {                                                                                                               \
        const char *e_ = (call);                                                                                       \
        if (e_)                                                                                                        \
            return e_;                                                                                                 \
    } while (0)

/* ======================================================================== */
/* unit                                                                      */
/* ======================================================================== */

/* Every size 0..max_record (up, down, then random), checking the tail against
 * a model of the layout rules and every PAD header. */
static const char *t_sizes(int k)
{
    rig_t g;
    TRY(rig_open(&g, k, 1024, 1, 1));
    brk_ring *p = &g.p, *c = &g.c[0];
    uint64_t mr = p->max_record, pos = 0, rng = 12345, pads = 0, ipads = 0;
    unsigned char in[1024], out[1024];
    REQ(mr == 1024 / 2 - BRK_REC_HDR && c->max_record == mr, "max_record %llu", (unsigned long long)mr);
    uint64_t n = 2 * (mr + 1) + 3000;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len = i <= mr ? i : i <= 2 * mr + 1 ? 2 * mr + 1 - i : xs64(&rng) % (mr + 1);
        uint64_t seq = g.seq, contig = 1024 - (pos & 1023), size = rec_size(len), pad = size > contig ? contig : 0;
        pat(in, len, seq);
        REQ_RC(brk_send(p, in, len), 0);
        g.seq++;
        if (pad >= BRK_REC_HDR) {
            struct brk_rec h = rec_at(p, pos);
            REQ(h.type == BRK_REC_PAD && h.len == pad - BRK_REC_HDR && h.seq == seq,
                "record %llu: PAD at %llu is {len %u, type %#x, seq %llu}", (unsigned long long)seq,
                (unsigned long long)pos, h.len, h.type, (unsigned long long)h.seq);
            pads++;
        } else if (pad) {
            ipads++;
        }
        pos += pad + size;
        struct brk_rec h = rec_at(p, pos - size);
        REQ(h.type == BRK_REC_DATA && h.len == len && h.seq == seq, "record %llu: bad header",
            (unsigned long long)seq);
        REQ(tail_of(p) == pos, "record %llu (len %llu): tail %llu, want %llu", (unsigned long long)seq,
            (unsigned long long)len, (unsigned long long)tail_of(p), (unsigned long long)pos);
        memset(out, 0xEE, sizeof out);
        REQ_RC(brk_recv(c, out, mr), 0);
        REQ(c->rlen == len && pat_ok(out, len, seq), "record %llu (len %llu): got %llu bytes, content %s",
            (unsigned long long)seq, (unsigned long long)len, (unsigned long long)c->rlen,
            pat_ok(out, c->rlen, seq) ? "ok" : "wrong");
        REQ(out[len] == 0xEE, "recv wrote past the record");
        REQ(c->head == pos, "consumer head %llu, want %llu", (unsigned long long)c->head, (unsigned long long)pos);
    }
    REQ_RC(brk_recv(c, out, mr), BRK_EMPTY);
    REQ(p->records == n && c->records == n, "records: producer %llu consumer %llu", (unsigned long long)p->records,
        (unsigned long long)c->records);
    REQ(pads > 10 && ipads > 10, "too few pads exercised (%llu PAD, %llu implicit)", (unsigned long long)pads,
        (unsigned long long)ipads);
    INFO("%llu records, %llu PAD records, %llu implicit pads", (unsigned long long)n, (unsigned long long)pads,
         (unsigned long long)ipads);
    rig_close(&g);
    return NULL;
}

/* The exact wrap cases in a 256-byte ring (max_record 112, record = 16 + len). */
static const char *t_wrap(int k)
{
    rig_t g;
    /* A: a record that ends exactly at the end of the ring: no pad */
    TRY(rig_open(&g, k, 256, 1, 1));
    TRY(sr(&g, 112, 128));
    TRY(sr(&g, 112, 256));
    TRY(sr(&g, 0, 272));
    REQ(rec_at(&g.p, 256).type == BRK_REC_DATA, "record after an exact end not at offset 0");
    rig_close(&g);

    /* B: leaves 8 bytes: too few for a header, an implicit pad nobody writes */
    TRY(rig_open(&g, k, 256, 1, 1));
    TRY(sr(&g, 112, 128));
    TRY(sr(&g, 104, 248));
    memset(g.p.data + 248, 0xAB, 8);
    TRY(sr(&g, 0, 272));
    for (int i = 248; i < 256; i++)
        REQ(g.p.data[i] == 0xAB, "the producer wrote into the 8-byte implicit pad");
    TRY(sr(&g, 8, 296));
    TRY(sr(&g, 112, 424));
    TRY(sr(&g, 64, 504)); /* leaves 8 again, at the second lap */
    TRY(sr(&g, 1, 512 + 24));
    rig_close(&g);

    /* C: leaves 16 bytes: a 0-byte record fits exactly; anything else needs a PAD of len 0 */
    TRY(rig_open(&g, k, 256, 1, 1));
    TRY(sr(&g, 112, 128));
    TRY(sr(&g, 96, 240));
    TRY(sr(&g, 0, 256));
    TRY(sr(&g, 112, 384));
    TRY(sr(&g, 96, 496));
    uint64_t s = g.seq;
    TRY(sr(&g, 8, 512 + 24));
    struct brk_rec h = rec_at(&g.p, 496);
    REQ(h.type == BRK_REC_PAD && h.len == 0 && h.seq == s, "16-byte PAD is {len %u, type %#x, seq %llu}", h.len,
        h.type, (unsigned long long)h.seq);
    rig_close(&g);

    /* D: leaves 24 bytes: PAD of len 8 */
    TRY(rig_open(&g, k, 256, 1, 1));
    TRY(sr(&g, 112, 128));
    TRY(sr(&g, 88, 232));
    s = g.seq;
    TRY(sr(&g, 16, 256 + 32));
    h = rec_at(&g.p, 232);
    REQ(h.type == BRK_REC_PAD && h.len == 8 && h.seq == s, "24-byte PAD is {len %u, type %#x}", h.len, h.type);
    /* the largest record right after a pad */
    TRY(sr(&g, 112, 288 + 128));
    TRY(sr(&g, 112, 512 + 128)); /* 96 left: pad 96, record at the start */
    rig_close(&g);
    return NULL;
}

static const char *t_claim(int k)
{
    rig_t g;
    TRY(rig_open(&g, k, 1024, 1, 1));
    brk_ring *p = &g.p, *c = &g.c[0];
    unsigned char b[1024];
    REQ_RC(brk_commit(p, 0), -EINVAL);
    REQ_RC(brk_claim(p, 100), 0);
    REQ(p->claimed == 1 && p->wptr == p->data + BRK_REC_HDR, "claim state");
    REQ_RC(brk_claim(p, 10), BRK_BUSY);
    REQ_RC(psend(&g, 10), BRK_BUSY);
    uint64_t l1 = 1;
    REQ_RC(brk_send_many(p, b, sizeof b, &l1, 1), BRK_BUSY);
    pat(p->wptr, 50, g.seq);
    memset(p->wptr + 50, 0x77, 50);
    REQ(tail_of(p) == 0, "a claim published something");
    REQ_RC(brk_recv(c, b, sizeof b), BRK_EMPTY);
    REQ_RC(brk_commit(p, 50), 0); /* shorter than the claim */
    g.seq++;
    REQ(tail_of(p) == rec_size(50), "tail %llu after a 50-byte commit", (unsigned long long)tail_of(p));
    TRY(crecv(&g, 0, 50));
    REQ_RC(brk_commit(p, 50), -EINVAL);
    /* commit longer than the claim: refused, the claim stays */
    REQ_RC(brk_claim(p, 10), 0);
    REQ_RC(brk_commit(p, 11), BRK_TOOBIG);
    pat(p->wptr, 10, g.seq);
    REQ_RC(brk_commit(p, 10), 0);
    g.seq++;
    TRY(crecv(&g, 0, 10));
    /* the full claim */
    REQ_RC(brk_claim(p, p->max_record), 0);
    pat(p->wptr, p->max_record, g.seq);
    REQ_RC(brk_commit(p, p->max_record), 0);
    g.seq++;
    TRY(crecv(&g, 0, p->max_record));
    /* claim of 0 and commit of 0 */
    REQ_RC(brk_claim(p, 0), 0);
    REQ_RC(brk_commit(p, 0), 0);
    g.seq++;
    TRY(crecv(&g, 0, 0));
    REQ_RC(brk_recv(c, b, sizeof b), BRK_EMPTY);
    rig_close(&g);
    return NULL;
}

static const char *t_abort(int k)
{
    rig_t g;
    TRY(rig_open(&g, k, 256, 1, 1));
    brk_ring *p = &g.p, *c = &g.c[0];
    unsigned char b[512];
    REQ_RC(brk_abort(p), -EINVAL);
    REQ_RC(brk_claim(p, 40), 0);
    memset(p->wptr, 0x5A, 40);
    REQ_RC(brk_abort(p), 0);
    REQ(tail_of(p) == 0 && p->tail == 0 && p->seq == 0, "abort moved the producer");
    REQ_RC(brk_recv(c, b, sizeof b), BRK_EMPTY);
    REQ_RC(brk_send(p, "hello", 5), 0);
    g.seq++;
    REQ_RC(brk_recv(c, b, sizeof b), 0);
    REQ(c->rlen == 5 && memcmp(b, "hello", 5) == 0, "after an abort the next record arrives wrong");
    g.rseq[0]++;
    /* an aborted claim that needed a pad: nothing of it (neither PAD nor
     * record) may be seen; the next record fits exactly into the 16 bytes */
    TRY(sr(&g, 88, 24 + 104));
    TRY(sr(&g, 96, 128 + 112)); /* tail 240: 16 bytes left */
    REQ_RC(brk_claim(p, 100), 0);
    memset(p->wptr, 0x5A, 100);
    REQ_RC(brk_abort(p), 0);
    REQ_RC(brk_recv(c, b, sizeof b), BRK_EMPTY);
    TRY(sr(&g, 0, 256));
    TRY(sr(&g, 8, 256 + 24));
    /* aborts between records keep seq continuous */
    for (int i = 0; i < 50; i++) {
        REQ_RC(brk_claim(p, (uint64_t)(i * 2)), 0);
        REQ_RC(brk_abort(p), 0);
        TRY(sr(&g, (uint64_t)i, next_tail(tail_of(p), (uint64_t)i, 256)));
    }
    rig_close(&g);
    return NULL;
}

static const char *t_toobig(int k)
{
    rig_t g;
    TRY(rig_open(&g, k, 1024, 1, 1));
    brk_ring *p = &g.p, *c = &g.c[0];
    uint64_t mr = p->max_record, lens[2];
    unsigned char b[1024];
    REQ_RC(psend(&g, mr + 1), BRK_TOOBIG);
    REQ_RC(brk_claim(p, mr + 1), BRK_TOOBIG);
    REQ_RC(brk_claim(p, UINT64_MAX), BRK_TOOBIG);
    REQ_RC(brk_wait_space(p, mr + 1, 0), BRK_TOOBIG);
    lens[0] = mr + 1;
    REQ_RC(brk_send_many(p, b, sizeof b, lens, 1), BRK_TOOBIG);
    REQ(p->count == 0, "count %llu", (unsigned long long)p->count);
    REQ(tail_of(p) == 0, "a refused record moved the tail");
    REQ_RC(psend(&g, mr), 0);
    /* a consumer buffer too small: TOOBIG, rlen says how big, the record stays */
    REQ_RC(brk_recv(c, b, mr - 1), BRK_TOOBIG);
    REQ(c->rlen == mr, "rlen %llu after TOOBIG", (unsigned long long)c->rlen);
    REQ_RC(brk_recv(c, b, 0), BRK_TOOBIG);
    TRY(crecv(&g, 0, mr));
    /* send_many: good, then too big: the good one goes */
    lens[0] = 3;
    lens[1] = mr + 1;
    pat(b, 3, g.seq);
    REQ_RC(brk_send_many(p, b, sizeof b, lens, 2), 0);
    REQ(p->count == 1, "count %llu", (unsigned long long)p->count);
    g.seq++;
    TRY(crecv(&g, 0, 3));
    rig_close(&g);
    return NULL;
}

static const char *t_full(int k)
{
    rig_t g;
    TRY(rig_open(&g, k, 256, 1, 1));
    brk_ring *p = &g.p;
    REQ_RC(psend(&g, 112), 0);
    REQ_RC(psend(&g, 112), 0);
    REQ_RC(psend(&g, 0), BRK_FULL);
    REQ_RC(brk_claim(p, 0), BRK_FULL);
    REQ(p->claimed == 0, "a refused claim is outstanding");
    double t0 = now_s();
    REQ_RC(brk_wait_space(p, 0, NS / 100), BRK_TIMEOUT);
    REQ(now_s() - t0 >= 0.009, "wait_space returned TIMEOUT early");
    REQ(brk_backlog(p) == 256, "producer backlog %lld", (long long)brk_backlog(p));
    TRY(crecv(&g, 0, 112));
    REQ_RC(brk_wait_space(p, 0, NS), 0);
    REQ_RC(brk_wait_space(p, 112, 0), 0);
    REQ_RC(psend(&g, 112), 0); /* fills exactly the 128 bytes freed */
    REQ_RC(psend(&g, 0), BRK_FULL);
    TRY(crecv(&g, 0, 112));
    TRY(crecv(&g, 0, 112));
    REQ_RC(psend(&g, 0), 0);
    TRY(crecv(&g, 0, 0));
    rig_close(&g);
    return NULL;
}

static const char *t_lossy_never_full(void)
{
    rig_t g;
    TRY(rig_open(&g, K_LOSSY, 256, 1, 1));
    for (int i = 0; i < 1000; i++)
        REQ_RC(psend(&g, (uint64_t)(i % 113)), 0);
    unsigned char b[128];
    REQ_RC(brk_claim(&g.p, 112), 0);
    REQ_RC(brk_commit(&g.p, 112), 0);
    REQ_RC(brk_wait_space(&g.p, 112, 0), 0);
    uint64_t lens[8] = {112, 112, 112, 112, 112, 112, 112, 112};
    unsigned char big[8 * 112];
    memset(big, 1, sizeof big);
    REQ_RC(brk_send_many(&g.p, big, sizeof big, lens, 8), 0);
    REQ(g.p.count == 8, "send_many count %llu", (unsigned long long)g.p.count);
    int rc = brk_recv(&g.c[0], b, sizeof b);
    REQ(rc == BRK_LOST, "a lapped consumer got %s", rc_name(rc));
    rig_close(&g);
    return NULL;
}

static const char *t_batches(int k)
{
    rig_t g;
    TRY(rig_open(&g, k, 1024, 1, 1));
    brk_ring *p = &g.p, *c = &g.c[0];
    unsigned char in[4096], out[4096];
    uint64_t lens[16], olens[16];
    uint64_t l10[10] = {0, 1, 7, 8, 9, 15, 16, 17, 100, 31}, off = 0;
    for (int i = 0; i < 10; i++) {
        lens[i] = l10[i];
        pat(in + off, lens[i], g.seq + (uint64_t)i);
        off += lens[i];
    }
    REQ_RC(brk_send_many(p, in, sizeof in, lens, 10), 0);
    REQ(p->count == 10, "send_many count %llu", (unsigned long long)p->count);
    g.seq += 10;
    uint64_t want_tail = 0;
    for (int i = 0; i < 10; i++)
        want_tail += rec_size(l10[i]);
    REQ(tail_of(p) == want_tail, "tail %llu want %llu", (unsigned long long)tail_of(p),
        (unsigned long long)want_tail);
    REQ(brk_backlog(c) == (int64_t)want_tail, "backlog %lld", (long long)brk_backlog(c));
    REQ_RC(brk_recv_many(c, out, sizeof out, olens, 4), 0);
    REQ(c->count == 4, "recv_many count %llu", (unsigned long long)c->count);
    REQ_RC(brk_recv_many(c, out + 100, sizeof out - 100, olens + 4, 100), 0);
    REQ(c->count == 6, "recv_many count %llu", (unsigned long long)c->count);
    off = 0;
    for (int i = 0; i < 10; i++) {
        uint64_t o = i < 4 ? off : 100 + (off - (0 + 1 + 7 + 8));
        REQ(olens[i] == l10[i], "record %d: len %llu", i, (unsigned long long)olens[i]);
        REQ(pat_ok(out + o, olens[i], (uint64_t)i), "record %d: wrong bytes", i);
        off += l10[i];
    }
    g.rseq[0] += 10;
    REQ_RC(brk_recv_many(c, out, sizeof out, olens, 4), BRK_EMPTY);
    REQ(c->count == 0, "count %llu on EMPTY", (unsigned long long)c->count);
    REQ_RC(brk_send_many(p, in, sizeof in, lens, 0), 0);
    REQ(p->count == 0, "count of an empty batch");

    /* a batch larger than the room left: lossless sends what fits */
    uint64_t head = c->head, pos = tail_of(p), fit = 0;
    for (int i = 0; i < 10; i++) {
        lens[i] = 200;
        pat(in + 200 * i, 200, g.seq + (uint64_t)i);
        uint64_t contig = 1024 - (pos & 1023), sz = rec_size(200), end = pos + (sz > contig ? contig : 0) + sz;
        if (k != K_LOSSY && end > head + 1024)
            break;
        pos = end;
        fit++;
    }
    REQ_RC(brk_send_many(p, in, sizeof in, lens, 10), 0);
    REQ(p->count == fit, "send_many sent %llu of 10, want %llu", (unsigned long long)p->count,
        (unsigned long long)fit);
    REQ(tail_of(p) == pos, "tail after a partial batch %llu want %llu", (unsigned long long)tail_of(p),
        (unsigned long long)pos);
    g.seq += fit;
    if (k == K_LOSSY) {
        /* 10 x 216 bytes through a 1024-byte ring: the consumer was lapped */
        uint64_t lost0 = c->lost;
        REQ_RC(brk_recv_many(c, out, sizeof out, olens, 16), BRK_LOST);
        uint64_t first = pat_seq(out);
        REQ(c->lost - lost0 == first - g.rseq[0], "recv_many: lost %llu, first seq %llu, expected %llu",
            (unsigned long long)(c->lost - lost0), (unsigned long long)first, (unsigned long long)g.rseq[0]);
        off = 0;
        for (uint64_t i = 0; i < c->count; i++) {
            REQ(olens[i] == 200 && pat_ok(out + off, 200, first + i), "batch record %llu wrong",
                (unsigned long long)i);
            off += 200;
        }
        REQ(first + c->count == g.seq, "did not read up to the tail");
    } else {
        lens[0] = 200;
        REQ_RC(brk_send_many(p, in, sizeof in, lens, 1), BRK_FULL);
        REQ(p->count == 0, "count on FULL %llu", (unsigned long long)p->count);
        /* a buffer smaller than the first record: TOOBIG; room for one: one */
        REQ_RC(brk_recv_many(c, out, 100, olens, 10), BRK_TOOBIG);
        REQ(c->count == 0 && c->rlen == 200, "TOOBIG count %llu rlen %llu", (unsigned long long)c->count,
            (unsigned long long)c->rlen);
        REQ_RC(brk_recv_many(c, out, 250, olens, 10), 0);
        REQ(c->count == 1 && olens[0] == 200 && pat_ok(out, 200, g.rseq[0]), "one-record batch");
        g.rseq[0]++;
        REQ_RC(brk_recv_many(c, out, sizeof out, olens, 16), 0);
        REQ(c->count == fit - 1, "rest of the batch: %llu", (unsigned long long)c->count);
        for (uint64_t i = 0; i < c->count; i++)
            REQ(pat_ok(out + 200 * i, 200, g.rseq[0] + i), "batch record %llu wrong", (unsigned long long)i);
    }
    rig_close(&g);
    return NULL;
}

static const char *t_peek(int k)
{
    rig_t g;
    TRY(rig_open(&g, k, 1024, 1, 1));
    brk_ring *c = &g.c[0];
    unsigned char b[1024];
    uint64_t l;
    REQ_RC(brk_peek(c), BRK_EMPTY);
    REQ_RC(brk_release(c), -EINVAL);
    REQ_RC(brk_unpeek(c), -EINVAL);
    REQ_RC(psend(&g, 30), 0);
    REQ_RC(psend(&g, 0), 0);
    REQ_RC(psend(&g, 300), 0);
    REQ_RC(brk_peek(c), 0);
    REQ(c->rlen == 30 && pat_ok(c->rptr, 30, 0), "peek: wrong record");
    REQ(c->rptr == c->data + BRK_REC_HDR, "peek: rptr not into the ring");
    REQ_RC(brk_peek(c), BRK_BUSY);
    REQ_RC(brk_recv(c, b, sizeof b), BRK_BUSY);
    REQ_RC(brk_recv_many(c, b, sizeof b, &l, 1), BRK_BUSY);
    REQ_RC(brk_unpeek(c), 0);
    REQ(c->head == 0, "unpeek moved the head");
    REQ_RC(brk_peek(c), 0);
    REQ(c->rlen == 30 && pat_ok(c->rptr, 30, 0), "peek after unpeek: wrong record");
    REQ_RC(brk_release(c), 0);
    REQ_RC(brk_release(c), -EINVAL);
    REQ(c->head == rec_size(30), "release: head %llu", (unsigned long long)c->head);
    REQ_RC(brk_peek(c), 0);
    REQ(c->rlen == 0, "peek of an empty record");
    REQ_RC(brk_release(c), 0);
    REQ_RC(brk_peek(c), 0);
    REQ(c->rlen == 300 && pat_ok(c->rptr, 300, 2), "peek: third record");
    REQ_RC(brk_release(c), 0);
    REQ_RC(brk_peek(c), BRK_EMPTY);
    REQ(c->records == 3, "consumer counted %llu records", (unsigned long long)c->records);
    rig_close(&g);
    return NULL;
}

/* Lossless broadcast: three consumers see everything; the slowest holds the producer. */
static const char *t_bcast3(void)
{
    rig_t g;
    TRY(rig_open(&g, K_BCAST, 1024, 3, 3));
    brk_ring *p = &g.p;
    brk_ring extra;
    REQ_RC(brk_ring_attach(&extra, g.seg.base, g.seg.total, 0, BRK_ROLE_CONSUMER, getpid(), 0), 0);
    REQ_RC(brk_bcast_join(&extra, getpid(), 0), -ENOSPC);
    int sent = 0;
    while (psend(&g, 40) == 0)
        sent++;
    REQ(sent == 1024 / 56, "sent %d 40-byte records into 1024 bytes", sent);
    REQ_RC(psend(&g, 40), BRK_FULL);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < sent; j++)
            TRY(crecv(&g, i, 40));
    REQ_RC(psend(&g, 40), BRK_FULL); /* consumer 2 has not read anything */
    REQ_RC(brk_wait_space(p, 40, NS / 100), BRK_TIMEOUT);
    TRY(crecv(&g, 2, 40));
    REQ_RC(brk_wait_space(p, 40, 0), 0);
    REQ_RC(psend(&g, 40), 0);
    REQ_RC(psend(&g, 40), BRK_FULL);
    for (int i = 0; i < 3; i++)
        while (g.rseq[i] < g.seq)
            TRY(crecv(&g, i, 40));
    /* a long run with consumers at different speeds */
    uint64_t rng = 99;
    for (int round = 0; round < 20000; round++) {
        int rc = psend(&g, xs64(&rng) % 100);
        REQ(rc == 0 || rc == BRK_FULL, "send: %s", rc_name(rc));
        for (int i = 0; i < 3; i++) {
            if (xs64(&rng) % 4 <= (uint64_t)i && g.rseq[i] < g.seq) {
                unsigned char b[128];
                REQ_RC(brk_recv(&g.c[i], b, sizeof b), 0);
                REQ(pat_ok(b, g.c[i].rlen, g.rseq[i]), "consumer %d record %llu", i, (unsigned long long)g.rseq[i]);
                g.rseq[i]++;
            }
        }
    }
    unsigned char b[128];
    for (int i = 0; i < 3; i++) {
        while (g.rseq[i] < g.seq) {
            REQ_RC(brk_recv(&g.c[i], b, sizeof b), 0);
            REQ(pat_ok(b, g.c[i].rlen, g.rseq[i]), "consumer %d record %llu", i, (unsigned long long)g.rseq[i]);
            g.rseq[i]++;
        }
        REQ_RC(brk_recv(&g.c[i], b, sizeof b), BRK_EMPTY);
        REQ(g.c[i].records == g.seq, "consumer %d saw %llu of %llu", i, (unsigned long long)g.c[i].records,
            (unsigned long long)g.seq);
    }
    INFO("%llu records, each seen by all 3 consumers", (unsigned long long)g.seq);
    rig_close(&g);
    return NULL;
}

/* Read one record from a lossy consumer by the given method; checks the loss count. */
static const char *lossy_read(brk_ring *c, int how, uint64_t *prev, uint64_t *got, uint64_t *losses)
{
    unsigned char b[4096];
    uint64_t olens[4];
    int rc;
    if (how == 0) {
        rc = brk_recv(c, b, sizeof b);
        if (rc == BRK_EMPTY || rc == BRK_CLOSED)
            return rc == BRK_EMPTY ? "EMPTY" : "CLOSED";
        REQ(rc == 0 || rc == BRK_LOST, "recv: %s", rc_name(rc));
        uint64_t s = pat_seq(b), lost = rc == BRK_LOST ? c->last_lost : 0;
        REQ(pat_ok(b, c->rlen, s), "record %llu: wrong bytes", (unsigned long long)s);
        REQ(rc == BRK_LOST ? lost > 0 : c->last_lost == 0, "rc %s with last_lost %llu", rc_name(rc),
            (unsigned long long)c->last_lost);
        REQ(s == *prev + 1 + lost, "record %llu after %lld with last_lost %llu", (unsigned long long)s,
            (long long)*prev, (unsigned long long)lost);
        *prev = s;
        *got += 1;
        *losses += rc == BRK_LOST;
    } else if (how == 1) {
        rc = brk_peek(c);
        if (rc == BRK_EMPTY || rc == BRK_CLOSED)
            return rc == BRK_EMPTY ? "EMPTY" : "CLOSED";
        REQ(rc == 0 || rc == BRK_LOST, "peek: %s", rc_name(rc));
        uint64_t lost = rc == BRK_LOST ? c->last_lost : 0, l = c->rlen;
        memcpy(b, c->rptr, l);
        REQ_RC(brk_release(c), 0);
        uint64_t s = pat_seq(b);
        REQ(pat_ok(b, l, s), "record %llu: wrong bytes", (unsigned long long)s);
        REQ(s == *prev + 1 + lost, "peek: record %llu after %lld with last_lost %llu", (unsigned long long)s,
            (long long)*prev, (unsigned long long)lost);
        *prev = s;
        *got += 1;
        *losses += rc == BRK_LOST;
    } else {
        uint64_t lost0 = c->lost;
        rc = brk_recv_many(c, b, sizeof b, olens, 4);
        if (rc == BRK_EMPTY || rc == BRK_CLOSED)
            return rc == BRK_EMPTY ? "EMPTY" : "CLOSED";
        REQ(rc == 0 || rc == BRK_LOST, "recv_many: %s", rc_name(rc));
        /* last_lost belongs to the last record of the batch; the loss in
         * front of the first is the change of c->lost */
        uint64_t lost = c->lost - lost0, off = 0;
        REQ((rc == BRK_LOST) == (lost > 0), "recv_many rc %s, lost %llu", rc_name(rc), (unsigned long long)lost);
        for (uint64_t i = 0; i < c->count; i++) {
            uint64_t s = pat_seq(b + off);
            REQ(pat_ok(b + off, olens[i], s), "record %llu: wrong bytes", (unsigned long long)s);
            REQ(s == *prev + 1 + (i == 0 ? lost : 0), "recv_many: record %llu after %lld", (unsigned long long)s,
                (long long)*prev);
            *prev = s;
            off += olens[i];
        }
        *got += c->count;
        *losses += rc == BRK_LOST;
    }
    return NULL;
}

/* Lossy broadcast: the producer never waits; a lapped consumer learns exactly
 * how many records it lost, from the first record after the lap. */
static const char *t_lossy(void)
{
    rig_t g;
    TRY(rig_open(&g, K_LOSSY, 1024, 2, 2));
    brk_ring *fast = &g.c[0], *slow = &g.c[1];
    uint64_t rng = 7, prev = UINT64_MAX, got = 0, losses = 0, fprev = UINT64_MAX, fgot = 0, flosses = 0;
    const uint64_t total = 6000;
    for (uint64_t s = 0; s < total; s++) {
        REQ_RC(psend(&g, 8 + xs64(&rng) % 64), 0);
        const char *e = lossy_read(fast, (int)(s % 3), &fprev, &fgot, &flosses);
        REQ(!e, "fast consumer: %s", e);
        if (s % 97 == 96) {
            /* at least 97 * 24 bytes were written since the slow consumer's
             * last read: it was lapped and its next read reports the loss */
            uint64_t l0 = losses;
            int reads = 1 + (int)(xs64(&rng) % 5), how = (int)((s / 97) % 3);
            for (int r = 0; r < reads; r++) {
                e = lossy_read(slow, how, &prev, &got, &losses);
                REQ(!e || strcmp(e, "EMPTY") == 0, "slow consumer (method %d): %s", how, e);
            }
            REQ(losses == l0 + 1, "after a lap: %llu BRK_LOST reports, want 1", (unsigned long long)(losses - l0));
        }
    }
    REQ_RC(brk_ring_detach(&g.p), 0);
    const char *e;
    int guard = 0;
    while (!(e = lossy_read(slow, guard % 3, &prev, &got, &losses)) && ++guard < 10000)
        ;
    REQ(e && strcmp(e, "CLOSED") == 0, "draining the slow consumer: %s", e ? e : "no end");
    unsigned char b[16];
    REQ_RC(brk_recv(slow, b, sizeof b), BRK_CLOSED);
    REQ(got + slow->lost == total, "slow consumer: received %llu + lost %llu != sent %llu", (unsigned long long)got,
        (unsigned long long)slow->lost, (unsigned long long)total);
    REQ(prev == total - 1, "slow consumer ended at %llu", (unsigned long long)prev);
    REQ(atomic_load(&slow->slot->lost) == slow->lost, "slot lost %llu != %llu",
        (unsigned long long)atomic_load(&slow->slot->lost), (unsigned long long)slow->lost);
    REQ(fgot == total && fast->lost == 0 && flosses == 0, "fast consumer: %llu received, %llu lost",
        (unsigned long long)fgot, (unsigned long long)fast->lost);
    REQ(slow->laps >= losses, "laps %llu < losses %llu", (unsigned long long)slow->laps, (unsigned long long)losses);
    INFO("sent %llu; slow consumer received %llu, lost %llu in %llu laps", (unsigned long long)total,
         (unsigned long long)got, (unsigned long long)slow->lost, (unsigned long long)losses);
    rig_close(&g);
    return NULL;
}

/* A lossy consumer that joins a running ring and is lapped before its first
 * record: it can only have lost records sent after it joined. (Regression
 * test: before 9e62196 the loss was counted from sequence number 0.) */
static const char *t_lossy_midjoin(void)
{
    rig_t g;
    TRY(rig_open(&g, K_LOSSY, 1024, 0, 1));
    for (int i = 0; i < 50; i++)
        REQ_RC(psend(&g, 24), 0);
    brk_ring *c = &g.c[0];
    REQ_RC(attach_c(c, &g.seg, 0), 0); /* starts with the next record: seq 50 */
    for (int i = 0; i < 100; i++)
        REQ_RC(psend(&g, 24), 0); /* 100 x 40 bytes: laps a 1024-byte ring */
    unsigned char b[64];
    int rc = brk_recv(c, b, sizeof b);
    REQ(rc == BRK_LOST, "recv: %s", rc_name(rc));
    uint64_t s = pat_seq(b);
    INFO("joined at seq 50, first record seq %llu, last_lost %llu", (unsigned long long)s,
         (unsigned long long)c->last_lost);
    REQ(c->last_lost == s - 50,
        "last_lost %llu, but only %llu records were sent between the join and record %llu",
        (unsigned long long)c->last_lost, (unsigned long long)(s - 50), (unsigned long long)s);
    rig_close(&g);
    return NULL;
}

static const char *t_evict(int k)
{
    rig_t g;
    TRY(rig_open(&g, k, 1024, 2, 2));
    brk_ring *p = &g.p, *c0 = &g.c[0], *c1 = &g.c[1];
    unsigned char b[1024];
    uint64_t l;
    for (int i = 0; i < 3; i++)
        REQ_RC(psend(&g, 20), 0);
    for (int i = 0; i < 3; i++)
        TRY(crecv(&g, 0, 20));
    uint32_t st;
    int32_t pid;
    uint64_t start, head;
    REQ_RC(brk_bcast_slot_info(p, c1->slot_index, &st, &pid, &start, &head), 0);
    REQ(st == c1->slot_word && (st & BRK_SLOT_MASK) == BRK_SLOT_ACTIVE && pid == getpid() && head == 0,
        "slot info before eviction: state %#x pid %d head %llu", st, pid, (unsigned long long)head);
    REQ_RC(brk_bcast_evict(p, c1->slot_index), 0);
    REQ_RC(brk_bcast_slot_info(p, c1->slot_index, &st, &pid, &start, &head), 0);
    REQ((st & BRK_SLOT_MASK) == BRK_SLOT_EVICTED, "slot state %#x after evict", st);
    REQ_RC(brk_bcast_evict(p, c1->slot_index), -ENOENT);
    REQ_RC(brk_bcast_evict(p, 2), -EINVAL);
    REQ_RC(brk_bcast_reclaim(p, c0->slot_index), -ENOENT); /* only an EVICTED slot */
    /* the evicted slot stays reserved for its owner: no room for a newcomer */
    brk_ring nc;
    REQ_RC(brk_ring_attach(&nc, g.seg.base, g.seg.total, 0, BRK_ROLE_CONSUMER, getpid(), 0), 0);
    REQ_RC(brk_bcast_join(&nc, getpid(), 0), -ENOSPC);
    REQ_RC(brk_recv(c1, b, sizeof b), BRK_EVICTED);
    REQ_RC(brk_peek(c1), BRK_EVICTED);
    REQ_RC(brk_recv_many(c1, b, sizeof b, &l, 1), BRK_EVICTED);
    double t0 = now_s();
    REQ_RC(brk_wait_data(c1, NS), 0); /* ready at once: something to look at */
    REQ(now_s() - t0 < 0.5, "wait_data of an evicted consumer slept");
    /* the evicted consumer no longer holds the producer back */
    if (k == K_BCAST) {
        int sent = 0;
        while (psend(&g, 40) == 0)
            sent++;
        REQ(sent == 1024 / 56, "sent %d after evicting the slow consumer", sent);
        while (g.rseq[0] < g.seq)
            TRY(crecv(&g, 0, 40));
    }
    /* leave and join again: a new generation of the slot, the next records */
    uint32_t old_word = c1->slot_word;
    REQ_RC(brk_bcast_leave(c1), 0);
    REQ_RC(brk_bcast_leave(c1), -EINVAL);
    REQ_RC(brk_bcast_join(c1, getpid(), 0), 0);
    REQ(c1->slot_word != old_word && (c1->slot_word & BRK_SLOT_MASK) == BRK_SLOT_ACTIVE,
        "rejoined with slot word %#x (was %#x)", c1->slot_word, old_word);
    REQ_RC(brk_bcast_join(c1, getpid(), 0), -EINVAL);
    g.rseq[1] = g.seq;
    REQ_RC(psend(&g, 5), 0);
    TRY(crecv(&g, 1, 5));
    TRY(crecv(&g, 0, 5));
    /* a consumer handle can evict another slot too (the supervisor's case),
     * and reclaim it once its owner is known dead */
    REQ_RC(brk_bcast_evict(c1, c0->slot_index), 0);
    REQ_RC(brk_recv(c0, b, sizeof b), BRK_EVICTED);
    REQ_RC(brk_bcast_reclaim(c1, c0->slot_index), 0);
    REQ_RC(brk_bcast_reclaim(c1, c0->slot_index), -ENOENT);
    REQ_RC(brk_recv(c0, b, sizeof b), BRK_EVICTED); /* a freed slot is not ours either */
    REQ_RC(brk_bcast_join(&nc, getpid(), 0), 0);
    REQ(nc.slot_index == c0->slot_index, "the newcomer got slot %u", nc.slot_index);
    REQ_RC(brk_bcast_leave(c0), 0); /* the old owner's leave must not free the new owner's slot */
    REQ_RC(brk_bcast_slot_info(p, nc.slot_index, &st, &pid, &start, &head), 0);
    REQ(st == nc.slot_word, "the old owner's leave changed the new owner's slot to %#x", st);
    REQ_RC(psend(&g, 7), 0);
    REQ_RC(brk_recv(&nc, b, sizeof b), 0);
    REQ(nc.rlen == 7 && pat_ok(b, 7, g.seq - 1), "newcomer's first record");
    rig_close(&g);
    return NULL;
}

static const char *t_closed(int k)
{
    rig_t g;
    TRY(rig_open(&g, k, 1024, k == K_SPSC ? 1 : 2, 2));
    unsigned char b[64];
    for (int i = 0; i < 3; i++)
        REQ_RC(psend(&g, 10), 0);
    REQ_RC(brk_recv(&g.c[0], b, sizeof b), 0);
    g.rseq[0]++;
    REQ_RC(brk_ring_detach(&g.p), 0);
    REQ_RC(brk_ring_detach(&g.p), 0);
    for (int i = 0; i < g.nc; i++) {
        while (g.rseq[i] < 3)
            TRY(crecv(&g, i, 10));
        REQ_RC(brk_recv(&g.c[i], b, sizeof b), BRK_CLOSED);
        REQ_RC(brk_peek(&g.c[i]), BRK_CLOSED);
        double t0 = now_s();
        REQ_RC(brk_wait_data(&g.c[i], NS), 0);
        REQ(now_s() - t0 < 0.5, "wait_data on a closed ring slept");
        REQ_RC(brk_recv_wait(&g.c[i], b, sizeof b, NS), BRK_CLOSED);
    }
    /* one producer for the ring's life */
    brk_ring p2;
    REQ_RC(attach_p(&p2, &g.seg, 0), -EBUSY);
    rig_close(&g);
    return NULL;
}

static const char *t_segcheck(void)
{
    seg_t s;
    brk_ring_spec sp[2] = {mkspec(K_SPSC, 256, 0), mkspec(K_BCAST, 4096, 8)};
    REQ(seg_make(&s, sp, 2) == 0, "seg_make");
    struct brk_seg_hdr *sh = (struct brk_seg_hdr *)s.base, out;
    brk_ring r;
    REQ_RC(brk_seg_check(s.base, s.total, &out), 0);
    REQ(out.n_rings == 2 && out.total_size == s.total && out.ring_offset[1] == s.off[1], "seg_check copy");
    sh->magic ^= 1;
    REQ_RC(brk_seg_check(s.base, s.total, &out), BRK_BADSEG);
    REQ_RC(brk_ring_attach(&r, s.base, s.total, 0, BRK_ROLE_CONSUMER, 1, 0), BRK_BADSEG);
    sh->magic ^= 1;
    sh->abi_version = BRK_ABI_VERSION + 1;
    REQ_RC(brk_seg_check(s.base, s.total, &out), BRK_BADSEG);
    REQ_RC(brk_ring_attach(&r, s.base, s.total, 0, BRK_ROLE_PRODUCER, 1, 0), BRK_BADSEG);
    sh->abi_version = BRK_ABI_VERSION;
    sh->header_size = 128;
    REQ_RC(brk_seg_check(s.base, s.total, &out), BRK_BADSEG);
    sh->header_size = sizeof *sh;
    REQ_RC(brk_seg_check(s.base, s.total + 4096, &out), BRK_BADSEG); /* mapped size != total_size */
    REQ_RC(brk_seg_check(s.base, s.total - 4096, &out), BRK_BADSEG);
    REQ_RC(brk_seg_check(s.base, 100, &out), BRK_BADSEG);
    sh->total_size += 4096;
    REQ_RC(brk_seg_check(s.base, s.total, &out), BRK_BADSEG);
    sh->total_size -= 4096;
    sh->n_rings = 0;
    REQ_RC(brk_seg_check(s.base, s.total, &out), BRK_BADSEG);
    sh->n_rings = 5;
    REQ_RC(brk_seg_check(s.base, s.total, &out), BRK_BADSEG);
    sh->n_rings = 2;
    sh->ring_offset[1] += 8;
    REQ_RC(brk_seg_check(s.base, s.total, &out), BRK_BADSEG);
    sh->ring_offset[1] = s.off[0]; /* overlapping rings */
    REQ_RC(brk_seg_check(s.base, s.total, &out), BRK_BADSEG);
    sh->ring_offset[1] = s.off[1];
    sh->ring_size[1] = s.total;
    REQ_RC(brk_seg_check(s.base, s.total, &out), BRK_BADSEG);
    sh->ring_size[1] = UINT64_MAX - 100;
    REQ_RC(brk_seg_check(s.base, s.total, &out), BRK_BADSEG);
    sh->ring_size[1] = s.size[1];
    atomic_store(&sh->ready, 0);
    REQ_RC(brk_seg_check(s.base, s.total, &out), BRK_NOTREADY);
    REQ_RC(brk_ring_attach(&r, s.base, s.total, 0, BRK_ROLE_CONSUMER, 1, 0), BRK_NOTREADY);
    atomic_store(&sh->ready, 2);
    REQ_RC(brk_seg_check(s.base, s.total, &out), BRK_NOTREADY);
    atomic_store(&sh->ready, 1);
    REQ_RC(brk_seg_check(s.base, s.total, &out), 0);
    REQ_RC(brk_ring_attach(&r, s.base, s.total, 2, BRK_ROLE_CONSUMER, 1, 0), -EINVAL);
    REQ_RC(brk_ring_attach(&r, s.base, s.total, 0, 3, 1, 0), -EINVAL);
    /* layout and format refuse bad specs */
    uint64_t o[4], z[4], t;
    brk_ring_spec bad = mkspec(K_SPSC, 300, 0);
    REQ_RC(brk_seg_layout(&bad, 1, o, z, &t), -EINVAL);
    bad = mkspec(K_SPSC, 128, 0);
    REQ_RC(brk_seg_layout(&bad, 1, o, z, &t), -EINVAL);
    bad = mkspec(K_BCAST, 256, 0);
    REQ_RC(brk_seg_layout(&bad, 1, o, z, &t), -EINVAL);
    bad = mkspec(K_BCAST, 256, BRK_MAX_CONSUMERS + 1);
    REQ_RC(brk_seg_layout(&bad, 1, o, z, &t), -EINVAL);
    REQ_RC(brk_seg_layout(sp, 0, o, z, &t), -EINVAL);
    REQ_RC(brk_seg_format(s.base, s.total + 4096, sp, 2, 1, 0, NULL), -EINVAL);
    seg_free(&s);
    return NULL;
}

static const char *t_attach_tamper(void)
{
    seg_t s;
    brk_ring_spec sp[2] = {mkspec(K_SPSC, 1024, 0), mkspec(K_BCAST, 1024, 4)};
    REQ(seg_make(&s, sp, 2) == 0, "seg_make");
    struct brk_ring_hdr *h0 = seg_ring(&s, 0), *h1 = seg_ring(&s, 1);
    brk_ring r, r2;
#define TAMPER(h, field, val, idx)                                                                                     \
    do {                                                                                                               \
        __typeof__((h)->field) save_ = (h)->field;                                                                     \
        (h)->field = (val);                                                                                            \
        REQ_RC(brk_ring_attach(&r, s.base, s.total, (idx), BRK_ROLE_CONSUMER, 1, 0), BRK_BADSEG);                      \
        REQ_RC(brk_ring_attach(&r, s.base, s.total, (idx), BRK_ROLE_PRODUCER, 1, 0), BRK_BADSEG);                      \
        (h)->field = save_;                                                                                            \
    } while (0)
    TAMPER(h0, capacity, 2048, 0);
    TAMPER(h0, capacity, 512, 0);
    TAMPER(h0, capacity, 1000, 0);
    TAMPER(h0, capacity, 0, 0);
    TAMPER(h0, data_offset, h0->data_offset + 128, 0);
    TAMPER(h0, data_offset, 0, 0);
    TAMPER(h0, max_record, h0->max_record + 8, 0);
    TAMPER(h0, kind, BRK_KIND_BCAST, 0);
    TAMPER(h0, kind, 7, 0);
    TAMPER(h0, flags, BRK_FLAG_LOSSY, 0);
    TAMPER(h0, max_consumers, 1, 0);
    TAMPER(h0, slot_size, 128, 0);
    TAMPER(h1, max_consumers, 5, 1);
    TAMPER(h1, max_consumers, 0, 1);
    TAMPER(h1, slots_offset, 0, 1);
    TAMPER(h1, slot_size, 64, 1);
    TAMPER(h1, flags, 2, 1);
    TAMPER(h1, capacity, 2048, 1);
#undef TAMPER
    /* a second producer, a second SPSC consumer */
    REQ_RC(brk_ring_attach(&r, s.base, s.total, 0, BRK_ROLE_PRODUCER, 1, 0), 0);
    REQ_RC(brk_ring_attach(&r2, s.base, s.total, 0, BRK_ROLE_PRODUCER, 2, 0), -EBUSY);
    REQ_RC(brk_ring_attach(&r2, s.base, s.total, 1, BRK_ROLE_PRODUCER, 2, 0), 0);
    REQ_RC(brk_ring_attach(&r2, s.base, s.total, 1, BRK_ROLE_PRODUCER, 3, 0), -EBUSY);
    brk_ring c1, c2;
    REQ_RC(brk_ring_attach(&c1, s.base, s.total, 0, BRK_ROLE_CONSUMER, 1, 0), 0);
    REQ_RC(brk_ring_attach(&c2, s.base, s.total, 0, BRK_ROLE_CONSUMER, 2, 0), -EBUSY);
    REQ(atomic_load(&h0->producer_pid) == 1 && atomic_load(&h0->consumer_pid) == 1, "pids");
    /* an SPSC consumer that detaches hands over where it stopped */
    unsigned char b[64];
    for (uint64_t i = 0; i < 5; i++) {
        pat(b, 20, i);
        REQ_RC(brk_send(&r, b, 20), 0);
    }
    for (uint64_t i = 0; i < 2; i++) {
        REQ_RC(brk_recv(&c1, b, sizeof b), 0);
        REQ(pat_ok(b, 20, i), "record %llu", (unsigned long long)i);
    }
    REQ_RC(brk_ring_detach(&c1), 0);
    REQ_RC(brk_recv(&c1, b, sizeof b), -EINVAL);
    REQ_RC(brk_ring_attach(&c2, s.base, s.total, 0, BRK_ROLE_CONSUMER, 2, 0), 0);
    for (uint64_t i = 2; i < 5; i++) {
        REQ_RC(brk_recv(&c2, b, sizeof b), 0);
        REQ(pat_ok(b, 20, i), "record %llu after re-attach", (unsigned long long)i);
    }
    REQ_RC(brk_recv(&c2, b, sizeof b), BRK_EMPTY);
    /* roles: a consumer cannot send, a producer cannot receive */
    REQ_RC(brk_send(&c2, b, 1), -EINVAL);
    REQ_RC(brk_claim(&c2, 1), -EINVAL);
    REQ_RC(brk_recv(&r, b, sizeof b), -EINVAL);
    REQ_RC(brk_wait_space(&c2, 1, 0), -EINVAL);
    REQ_RC(brk_wait_data(&r, 0), -EINVAL);
    brk_ring bc;
    REQ_RC(brk_ring_attach(&bc, s.base, s.total, 1, BRK_ROLE_CONSUMER, 3, 0), 0);
    REQ_RC(brk_recv(&bc, b, sizeof b), -EINVAL); /* not joined */
    REQ_RC(brk_bcast_join(&c2, 3, 0), -EINVAL);  /* not broadcast */
    seg_free(&s);
    return NULL;
}

static const char *t_waits(int k)
{
    rig_t g;
    TRY(rig_open(&g, k, 1024, 1, 1));
    brk_ring *c = &g.c[0];
    REQ_RC(brk_wait_data(c, -1), -EINVAL);
    double t0 = now_s();
    REQ_RC(brk_wait_data(c, 0), BRK_TIMEOUT);
    REQ_RC(brk_wait_data(c, NS / 50), BRK_TIMEOUT);
    double el = now_s() - t0;
    REQ(el >= 0.019 && el < 1.0, "a 20 ms wait took %.3f s", el);
    c->spin_ns = 0;
    REQ_RC(brk_wait_data(c, NS / 50), BRK_TIMEOUT);
    REQ(c->sleeps > 0, "spin_ns 0 never slept");
    REQ_RC(psend(&g, 1), 0);
    REQ_RC(brk_wait_data(c, NS), 0);
    unsigned char b[8];
    REQ_RC(brk_recv_wait(c, b, sizeof b, NS), 0);
    REQ_RC(brk_recv_wait(c, b, sizeof b, 0), BRK_EMPTY);
    REQ_RC(brk_recv_wait(c, b, sizeof b, NS / 100), BRK_TIMEOUT);
    if (k == K_SPSC) {
        REQ_RC(brk_arm(c), 0);
        REQ_RC(psend(&g, 1), 0);
        REQ_RC(brk_arm(c), BRK_BUSY);
    } else {
        /* a broadcast consumer armed for a doorbell (a server relaying the ring polls it): counted
         * as a sleeper until disarmed; the producer's next record writes its notify eventfd */
        int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        REQ(efd >= 0, "eventfd: %d", errno);
        g.p.efd_notify = efd;
        REQ_RC(brk_arm(c), 0);
        REQ(atomic_load(&c->hdr->cons_pollers) == 1 && atomic_load(&c->hdr->cons_sleepers) == 0,
            "arm counts one poller");
        REQ_RC(psend(&g, 1), 0);
        uint64_t v = 0;
        REQ(read(efd, &v, sizeof v) == (ssize_t)sizeof v && v >= 1, "the record rang the doorbell");
        REQ_RC(brk_arm(c), BRK_BUSY);
        REQ_RC(brk_disarm(c), 0);
        REQ_RC(brk_disarm(c), 0);
        REQ(atomic_load(&c->hdr->cons_pollers) == 0, "disarm uncounts");
        REQ_RC(psend(&g, 1), 0);
        REQ(read(efd, &v, sizeof v) < 0 && errno == EAGAIN, "nobody armed: no doorbell");
        /* a sleeper on the futex (a direct subscriber) is woken there, and rings no doorbell */
        atomic_fetch_add(&c->hdr->cons_sleepers, 1);
        uint32_t epoch = atomic_load(&c->hdr->cons_wait);
        REQ_RC(psend(&g, 1), 0);
        REQ(atomic_load(&c->hdr->cons_wait) != epoch, "a futex sleeper: the epoch moved");
        REQ(read(efd, &v, sizeof v) < 0 && errno == EAGAIN, "a futex sleeper only: no doorbell");
        atomic_fetch_sub(&c->hdr->cons_sleepers, 1);
        g.p.efd_notify = -1;
        close(efd);
    }
    REQ_RC(brk_spin_data(c, -1), -EINVAL);
    REQ_RC(brk_wait_space(&g.p, 1, -5), -EINVAL);
    rig_close(&g);
    return NULL;
}

/* Lossy: a claim moves `oldest` and announces the overwrite through
 * `reserve`; the claimed bytes may already have been written over old
 * records when the claim is aborted. If the next, smaller record stored a
 * smaller reserve, a consumer still at one of those old records would take
 * its copy for intact (before 9e62196 it received "GARBAGE!" below as
 * record 1). Correct: the consumer is told it was lapped (LOST). */
static const char *t_lossy_abort_lapped(void)
{
    rig_t g;
    TRY(rig_open(&g, K_LOSSY, 256, 1, 1));
    brk_ring *p = &g.p, *c = &g.c[0];
    for (int i = 0; i < 4; i++)
        REQ_RC(psend(&g, 48), 0); /* A [0,64) B [64,128) C [128,192) D [192,256) */
    TRY(crecv(&g, 0, 48));        /* the consumer is at B */
    REQ_RC(brk_claim(p, 112), 0); /* [256,384): overwrites A and B; oldest -> 128 */
    memset(p->wptr, 0x5A, 112);
    /* payload bytes that happen to look like B's header and payload */
    struct brk_rec fake = {8, BRK_REC_DATA, 1};
    memcpy(p->wptr + 48, &fake, sizeof fake);
    memcpy(p->wptr + 64, "GARBAGE!", 8);
    REQ_RC(brk_abort(p), 0);
    REQ_RC(psend(&g, 0), 0); /* [256,272) */
    unsigned char b[128];
    memset(b, 0, sizeof b);
    int rc = brk_recv(c, b, sizeof b);
    INFO("recv: %s, %llu bytes \"%.8s\", last_lost %llu (reserve %llu, oldest %llu)", rc_name(rc),
         (unsigned long long)c->rlen, (const char *)b, (unsigned long long)c->last_lost,
         (unsigned long long)atomic_load(&p->hdr->reserve), (unsigned long long)atomic_load(&p->hdr->oldest));
    REQ(rc == BRK_LOST && pat_seq(b) == 2 && c->last_lost == 1 && pat_ok(b, 48, 2),
        "a lagging consumer received bytes of an aborted claim (or CORRUPT) instead of LOST + record 2 "
        "(`reserve` moved backwards after brk_abort())");
    rig_close(&g);
    return NULL;
}

/* Where the other side last ran decides how a wait spins (brk_plan in brk_ring.c). Pinned to one
 * CPU, this thread knows its own; each side writes its hint at every publish and release. Then,
 * on an empty ring, with spin_ns far beyond a 50 ms timeout so that a spinning wait spins to
 * its deadline and never sleeps while one that skips its spin sleeps at once: right after a
 * wake-up, a wait whose producer last ran on this CPU sleeps at once (it would spin in the
 * way of the woken one); one whose producer runs elsewhere spins (the rule once applied to every
 * waiter and kept two processes on two idle CPUs waking each other for ever); without a recent
 * wake-up a wait spins either way. */
static const char *t_cpu_hint(void)
{
    int cpu = sched_getcpu();
    REQ(cpu >= 0, "sched_getcpu: %s", strerror(errno));
    cpu_set_t was, one;
    REQ(sched_getaffinity(0, sizeof was, &was) == 0, "sched_getaffinity");
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    REQ(sched_setaffinity(0, sizeof one, &one) == 0, "sched_setaffinity: %s", strerror(errno));
    const char *err = NULL;
    rig_t g, w;
    if ((err = rig_open(&g, K_SPSC, 1024, 1, 1)) || (err = rig_open(&w, K_SPSC, 1024, 1, 1))) {
        sched_setaffinity(0, sizeof was, &was);
        return err;
    }
    brk_ring *c = &g.c[0];
    uint32_t me = (uint32_t)cpu + 1, other = me + 1;
    uint64_t v = 0;
#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            int n_ = snprintf(g_why, sizeof g_why, "line %d: ", __LINE__);                                             \
            snprintf(g_why + n_, sizeof g_why - (size_t)n_, __VA_ARGS__);                                             \
            err = g_why;                                                                                               \
            goto out;                                                                                                  \
        }                                                                                                              \
    } while (0)
    CHECK(atomic_load(&g.p.hdr->producer_cpu) == 0 && atomic_load(&g.p.hdr->consumer_cpu) == 0, "hints before use");
    CHECK(psend(&g, 8) == 0, "send");
    CHECK(atomic_load(&g.p.hdr->producer_cpu) == me, "the producer's hint is %u, want %u",
          atomic_load(&g.p.hdr->producer_cpu), me);
    CHECK(brk_recv(c, &v, sizeof v) == 0, "recv");
    CHECK(atomic_load(&g.p.hdr->consumer_cpu) == me, "the consumer's hint is %u, want %u",
          atomic_load(&g.p.hdr->consumer_cpu), me);

    c->spin_ns = 10 * NS;
    /* 1. no recent wake-up, the producer here: spins (yielding), counted as a shared CPU */
    atomic_store(&g.p.hdr->producer_cpu, me);
    uint64_t sleeps = c->sleeps, shared = c->shared_cpu_waits;
    CHECK(brk_wait_data(c, NS / 20) == BRK_TIMEOUT, "wait 1");
    CHECK(c->sleeps == sleeps && c->shared_cpu_waits == shared + 1, "wait 1: %llu sleeps, %llu shared",
          (unsigned long long)(c->sleeps - sleeps), (unsigned long long)(c->shared_cpu_waits - shared));
    /* 2. just woke someone, the producer elsewhere: spins */
    atomic_store(&w.c[0].hdr->cons_wait, BRK_WAIT_FUTEX); /* w's consumer "sleeps": the send wakes it */
    CHECK(psend(&w, 8) == 0 && w.p.wakeups == 1, "the wake-up");
    atomic_store(&g.p.hdr->producer_cpu, other);
    sleeps = c->sleeps, shared = c->shared_cpu_waits;
    CHECK(brk_wait_data(c, NS / 20) == BRK_TIMEOUT, "wait 2");
    CHECK(c->sleeps == sleeps && c->shared_cpu_waits == shared, "wait 2 (peer elsewhere, just woke one): %llu sleeps",
          (unsigned long long)(c->sleeps - sleeps));
    /* 3. just woke someone, the producer here: sleeps at once. "Just" is 200 us: a preemption
     * between the wake-up and the wait can spoil a try, so a few tries, one of which must. */
    atomic_store(&g.p.hdr->producer_cpu, me);
    int slept = 0;
    for (int t = 0; t < 20 && !slept; t++) {
        atomic_store(&w.c[0].hdr->cons_wait, BRK_WAIT_FUTEX);
        CHECK(psend(&w, 8) == 0, "the wake-up");
        sleeps = c->sleeps;
        CHECK(brk_wait_data(c, NS / 20) == BRK_TIMEOUT, "wait 3");
        slept = c->sleeps == sleeps + 1;
    }
    CHECK(slept, "wait 3 (peer here, just woke one) never slept at once in 20 tries");
    INFO("CPU %d", cpu);
out:
#undef CHECK
    rig_close(&g);
    rig_close(&w);
    sched_setaffinity(0, sizeof was, &was);
    return err;
}

/* A producer given an alive descriptor (a session's socket, in the broker) keeps sending while it
 * is open and, once its other end hangs up, fails every send with BRK_INTERRUPTED within
 * BRK_ALIVE_NS (100 ms): a send, a claim, a batch alike, however much room there is. */
static const char *t_alive(int k)
{
    const char *err = NULL;
    rig_t g;
    if ((err = rig_open(&g, k, 4096, 1, 2)))
        return err;
    int sv[2];
    REQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair: %s", strerror(errno));
    brk_ring *p = &g.p;
    unsigned char rec[8] = {0}, sink[64];
    p->alive_fd1 = sv[0] + 1;
    for (int i = 0; i < 100; i++) { /* alive: every send goes (the consumer keeps room) */
        REQ_RC(brk_send(p, rec, sizeof rec), 0);
        REQ_RC(brk_recv(&g.c[0], sink, sizeof sink), 0);
    }
    close(sv[1]); /* the reader's process "dies" */
    int rc = 0;
    double t0 = now_s();
    while (rc == 0 && now_s() - t0 < 5) {
        rc = brk_send(p, rec, sizeof rec);
        if (rc == 0)
            REQ_RC(brk_recv(&g.c[0], sink, sizeof sink), 0);
    }
    REQ(rc == BRK_INTERRUPTED, "a send after the hang-up: %s, not INTERRUPTED", rc_name(rc));
    REQ_RC(brk_claim(p, 8), BRK_INTERRUPTED); /* and from then on, every way of sending */
    REQ_RC(brk_send(p, rec, sizeof rec), BRK_INTERRUPTED);
    INFO("the hang-up seen after %.0f ms", (now_s() - t0) * 1000);
    p->alive_fd1 = 0;
    close(sv[0]);
    rig_close(&g);
    return NULL;
}

static void mode_unit(void)
{
    char name[96];
    for (int k = 0; k < 3; k++) {
#define U(label, call)                                                                                                 \
    do {                                                                                                               \
        snprintf(name, sizeof name, "unit %s: %s", KN[k], label);                                                      \
        RUN(name, call);                                                                                               \
    } while (0)
        U("send/recv of every size 0..max_record, layout and pads", t_sizes(k));
        U("wrap: exact end, 8 left (implicit pad), 16 left, 24 left", t_wrap(k));
        U("claim/commit (shorter commit, claim twice -> BUSY)", t_claim(k));
        U("abort leaves no trace", t_abort(k));
        U("too big -> TOOBIG", t_toobig(k));
        U("send_many/recv_many batches", t_batches(k));
        U("peek/unpeek/release", t_peek(k));
        U("producer detach -> drain, then CLOSED", t_closed(k));
        U("wait_data/recv_wait/arm timeouts", t_waits(k));
        if (k != K_LOSSY)
            U("full -> FULL, then room after the consumer reads", t_full(k));
        if (k != K_SPSC)
            U("evict -> EVICTED, leave and rejoin", t_evict(k));
        U("alive fd: sends go while it is open, INTERRUPTED after its hang-up", t_alive(k));
#undef U
    }
    RUN("unit lossy: producer never full", t_lossy_never_full());
    RUN("unit bcast: 3 lossless consumers see everything, the slowest holds the producer", t_bcast3());
    RUN("unit lossy: lapped consumer gets LOST with exact last_lost; received + lost == sent", t_lossy());
    RUN("unit lossy: a consumer joined mid-stream and lapped before its first read counts only its own loss",
        t_lossy_midjoin());
    RUN("unit lossy: bytes written into an aborted claim never reach a lagging consumer (reserve never goes back)",
        t_lossy_abort_lapped());
    RUN("unit seg_check: bad magic/abi/size/rings -> BADSEG, unready -> NOTREADY", t_segcheck());
    RUN("unit attach: tampered config -> BADSEG, second producer/consumer -> -EBUSY, re-attach", t_attach_tamper());
    RUN("unit wait: each side leaves the CPU it ran on; a waiter sleeps at once after a wake-up only if its peer "
        "last ran on its CPU, and yields from the start then (regression: both sides asleep for good)",
        t_cpu_hint());
}

/* ======================================================================== */
/* corrupt                                                                   */
/* ======================================================================== */

static int allowed_recv(int k, int rc)
{
    switch (rc) {
    case BRK_OK:
    case BRK_EMPTY:
    case BRK_CORRUPT:
    case BRK_CLOSED:
        return 1;
    case BRK_EVICTED:
        return k != K_SPSC;
    case BRK_LAPPED:
    case BRK_LOST:
        return k == K_LOSSY;
    default:
        return 0;
    }
}

/* A reader that found corruption must keep answering with documented outcomes. */
static const char *after_corrupt(rig_t *g, int i)
{
    unsigned char b[4096];
    uint64_t l[4];
    for (int n = 0; n < 5; n++) {
        int rc = brk_recv(&g->c[i], b, sizeof b);
        REQ(allowed_recv(g->k, rc), "recv after corruption: %s", rc_name(rc));
        rc = brk_peek(&g->c[i]);
        REQ(allowed_recv(g->k, rc), "peek after corruption: %s", rc_name(rc));
        if (rc == 0 || rc == BRK_LOST)
            brk_unpeek(&g->c[i]);
        rc = brk_recv_many(&g->c[i], b, sizeof b, l, 4);
        REQ(allowed_recv(g->k, rc), "recv_many after corruption: %s", rc_name(rc));
        rc = brk_wait_data(&g->c[i], 0);
        REQ(rc == 0 || rc == BRK_TIMEOUT, "wait_data after corruption: %s", rc_name(rc));
    }
    return NULL;
}

static const char *expect_corrupt(rig_t *g, int i)
{
    unsigned char b[4096];
    REQ_RC(brk_recv(&g->c[i], b, sizeof b), BRK_CORRUPT);
    return after_corrupt(g, i);
}

/* fresh rig: records a (len 8) and b (len 8) sent; the consumer read `read` of them */
static const char *cr_open(rig_t *g, int k, int nsend, int read)
{
    TRY(rig_open(g, k, 256, 1, 1));
    for (int i = 0; i < nsend; i++)
        REQ_RC(psend(g, 8), 0);
    for (int i = 0; i < read; i++)
        TRY(crecv(g, 0, 8));
    return NULL;
}

static const char *c_positions(int k)
{
    rig_t g;
    /* tail beyond head + capacity */
    TRY(cr_open(&g, k, 1, 1));
    atomic_store(&g.p.hdr->tail, 24 + 256 + 8);
    TRY(expect_corrupt(&g, 0));
    rig_close(&g);
    /* ... and far beyond, with unread records */
    TRY(cr_open(&g, k, 3, 1));
    atomic_store(&g.p.hdr->tail, UINT64_MAX - 7);
    TRY(crecv(&g, 0, 8)); /* below the tail it loaded before: still read */
    TRY(crecv(&g, 0, 8));
    TRY(expect_corrupt(&g, 0));
    rig_close(&g);
    /* tail behind head */
    TRY(cr_open(&g, k, 2, 2));
    atomic_store(&g.p.hdr->tail, 24);
    TRY(expect_corrupt(&g, 0));
    rig_close(&g);
    TRY(cr_open(&g, k, 2, 2));
    atomic_store(&g.p.hdr->tail, 0);
    TRY(expect_corrupt(&g, 0));
    rig_close(&g);
    /* tail not a multiple of 8 */
    TRY(cr_open(&g, k, 2, 2));
    atomic_store(&g.p.hdr->tail, 48 + 20);
    TRY(expect_corrupt(&g, 0));
    rig_close(&g);
    return NULL;
}

static const char *c_records(int k)
{
    rig_t g;
    struct brk_rec h;
    uint32_t bad_lens[] = {0xFFFFFFFFu, 256, 257, 113, 1000000};
    for (size_t i = 0; i < sizeof bad_lens / sizeof bad_lens[0]; i++) {
        /* a record length larger than the ring / max_record */
        TRY(cr_open(&g, k, 2, 0));
        h = rec_at(&g.p, 0);
        h.len = bad_lens[i];
        memcpy(g.p.data, &h, sizeof h);
        TRY(expect_corrupt(&g, 0));
        rig_close(&g);
    }
    /* a length within max_record but past what was published */
    TRY(cr_open(&g, k, 2, 0));
    h = rec_at(&g.p, 0);
    h.len = 100;
    memcpy(g.p.data, &h, sizeof h);
    TRY(expect_corrupt(&g, 0));
    rig_close(&g);

    /* a record running past the end of the ring (plenty published after it) */
    TRY(rig_open(&g, k, 256, 1, 1));
    TRY(sr(&g, 112, 128));
    REQ_RC(psend(&g, 48), 0); /* 128..192 */
    REQ_RC(psend(&g, 40), 0); /* 192..248 */
    REQ_RC(psend(&g, 8), 0);  /* implicit pad, 256..280 */
    TRY(crecv(&g, 0, 48));
    h = rec_at(&g.p, 192);
    h.len = 60; /* 80 bytes from offset 192 in a 256-byte ring */
    memcpy(g.p.data + 192, &h, sizeof h);
    TRY(expect_corrupt(&g, 0));
    rig_close(&g);

    /* bad record types */
    uint32_t types[] = {0, 0x12345678, BRK_REC_DATA + 1, BRK_REC_PAD};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        TRY(cr_open(&g, k, 3, 1));
        h = rec_at(&g.p, 24);
        h.type = types[i]; /* a PAD in the middle of the ring does not reach the end */
        memcpy(g.p.data + 24, &h, sizeof h);
        TRY(expect_corrupt(&g, 0));
        rig_close(&g);
    }
    /* a wrong sequence number */
    int64_t deltas[] = {1, -1, 1000};
    for (size_t i = 0; i < 3; i++) {
        TRY(cr_open(&g, k, 3, 1));
        h = rec_at(&g.p, 24);
        h.seq = (uint64_t)((int64_t)h.seq + deltas[i]);
        memcpy(g.p.data + 24, &h, sizeof h);
        TRY(expect_corrupt(&g, 0));
        rig_close(&g);
    }
    /* a PAD whose length does not reach the end (or goes past it) */
    uint32_t padlens[] = {0, 16, 9, 200};
    for (size_t i = 0; i < sizeof padlens / sizeof padlens[0]; i++) {
        TRY(rig_open(&g, k, 256, 1, 1));
        TRY(sr(&g, 112, 128));
        TRY(sr(&g, 88, 232));
        REQ_RC(psend(&g, 16), 0); /* PAD len 8 at 232, record at 256 */
        h = rec_at(&g.p, 232);
        REQ(h.type == BRK_REC_PAD && h.len == 8, "no PAD where expected");
        h.len = padlens[i];
        memcpy(g.p.data + 232, &h, sizeof h);
        TRY(expect_corrupt(&g, 0));
        rig_close(&g);
    }
    /* a PAD where a record must be, but the tail does not cover what it skips to */
    TRY(rig_open(&g, k, 256, 1, 1));
    TRY(sr(&g, 112, 128));
    TRY(sr(&g, 88, 232));
    REQ_RC(psend(&g, 0), 0); /* 232..248 */
    h.len = 8;
    h.type = BRK_REC_PAD;
    h.seq = 2;
    memcpy(g.p.data + 232, &h, sizeof h);
    TRY(expect_corrupt(&g, 0));
    rig_close(&g);
    return NULL;
}

static const char *c_head_spsc(void)
{
    rig_t g;
    TRY(rig_open(&g, K_SPSC, 256, 1, 1));
    REQ_RC(psend(&g, 112), 0);
    REQ_RC(psend(&g, 112), 0);
    TRY(crecv(&g, 0, 112));
    uint64_t good = atomic_load(&g.p.hdr->head);
    REQ(good == 128, "head %llu", (unsigned long long)good);
    uint64_t bad[] = {1024, 256 + 8, 131, UINT64_MAX - 7};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        atomic_store(&g.p.hdr->head, bad[i]);
        REQ_RC(psend(&g, 0), BRK_CORRUPT);
        REQ_RC(brk_claim(&g.p, 0), BRK_CORRUPT);
        double t0 = now_s();
        int rc = brk_wait_space(&g.p, 0, NS); /* must not sleep on a corrupt head */
        REQ(rc == 0 && now_s() - t0 < 0.5, "wait_space with a corrupt head: %s after %.2f s", rc_name(rc),
            now_s() - t0);
    }
    atomic_store(&g.p.hdr->head, 0); /* stale but possible: just full */
    REQ_RC(psend(&g, 0), BRK_FULL);
    atomic_store(&g.p.hdr->head, good);
    REQ_RC(psend(&g, 0), 0);
    TRY(crecv(&g, 0, 112));
    TRY(crecv(&g, 0, 0));
    rig_close(&g);
    return NULL;
}

static const char *c_slot_head(void)
{
    uint64_t bad[] = {3, 1024 + 8, 4096};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rig_t g;
        TRY(rig_open(&g, K_BCAST, 256, 2, 2));
        REQ_RC(psend(&g, 112), 0);
        REQ_RC(psend(&g, 112), 0);
        REQ_RC(psend(&g, 0), BRK_FULL);
        TRY(crecv(&g, 0, 112));
        TRY(crecv(&g, 0, 112));
        REQ_RC(psend(&g, 0), BRK_FULL); /* consumer 1 holds it */
        atomic_store(&g.c[1].slot->head, bad[i]);
        REQ_RC(psend(&g, 0), 0); /* evicts consumer 1, no error for the topic */
        uint32_t st;
        int32_t pid;
        uint64_t start, head;
        REQ_RC(brk_bcast_slot_info(&g.p, g.c[1].slot_index, &st, &pid, &start, &head), 0);
        REQ((st & BRK_SLOT_MASK) == BRK_SLOT_EVICTED, "slot state %#x", st);
        unsigned char b[128];
        REQ_RC(brk_recv(&g.c[1], b, sizeof b), BRK_EVICTED);
        TRY(crecv(&g, 0, 0));
        rig_close(&g);
    }
    return NULL;
}

static const char *c_oldest(void)
{
    rig_t g;
    TRY(rig_open(&g, K_LOSSY, 256, 1, 1));
    for (int i = 0; i < 3; i++)
        REQ_RC(psend(&g, 40), 0);
    for (int i = 0; i < 3; i++)
        TRY(crecv(&g, 0, 40));
    for (int i = 0; i < 20; i++)
        REQ_RC(psend(&g, 40), 0);
    uint64_t o = atomic_load(&g.p.hdr->oldest), t = tail_of(&g.p), head = g.c[0].head;
    REQ(head == 168 && t - o <= 256 && o > head, "setup: head %llu oldest %llu tail %llu", (unsigned long long)head,
        (unsigned long long)o, (unsigned long long)t);
    uint64_t bad[] = {o + 4, t + 8, t + 1024, 8, UINT64_MAX - 7};
    unsigned char b[128];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        atomic_store(&g.p.hdr->oldest, bad[i]);
        REQ_RC(brk_recv(&g.c[0], b, sizeof b), BRK_CORRUPT);
        REQ(g.c[0].head == head, "a failed recovery moved the head");
    }
    atomic_store(&g.p.hdr->oldest, o);
    REQ_RC(brk_recv(&g.c[0], b, sizeof b), BRK_LOST);
    uint64_t s = pat_seq(b);
    REQ(g.c[0].last_lost == s - 3, "last_lost %llu for first seq %llu", (unsigned long long)g.c[0].last_lost,
        (unsigned long long)s);
    /* an oldest that points into the middle of a record: whatever is read
     * there, the outcome is a documented one */
    for (int i = 0; i < 20; i++)
        REQ_RC(psend(&g, 40), 0);
    o = atomic_load(&g.p.hdr->oldest);
    atomic_store(&g.p.hdr->oldest, o - 16);
    int rc = brk_recv(&g.c[0], b, sizeof b);
    REQ(allowed_recv(K_LOSSY, rc), "recv: %s", rc_name(rc));
    TRY(after_corrupt(&g, 0));
    rig_close(&g);
    return NULL;
}

static const char *c_misc(void)
{
    rig_t g;
    unsigned char b[64];
    /* producer_pid scribbled to CLOSED: the consumer says CLOSED at the end */
    TRY(cr_open(&g, K_SPSC, 1, 0));
    atomic_store(&g.p.hdr->producer_pid, BRK_PID_CLOSED);
    TRY(crecv(&g, 0, 8));
    REQ_RC(brk_recv(&g.c[0], b, sizeof b), BRK_CLOSED);
    rig_close(&g);
    /* a broadcast slot's state scribbled: EVICTED */
    TRY(cr_open(&g, K_BCAST, 1, 0));
    atomic_store(&g.c[0].slot->state, BRK_SLOT_ACTIVE);
    REQ_RC(brk_recv(&g.c[0], b, sizeof b), BRK_EVICTED);
    rig_close(&g);
    /* attach/join on corrupt positions */
    seg_t s;
    brk_ring_spec sp[2] = {mkspec(K_SPSC, 256, 0), mkspec(K_BCAST, 256, 2)};
    REQ(seg_make(&s, sp, 2) == 0, "seg_make");
    brk_ring r;
    atomic_store(&seg_ring(&s, 0)->tail, 64);
    REQ_RC(attach_p(&r, &s, 0), BRK_CORRUPT);
    REQ(atomic_load(&seg_ring(&s, 0)->producer_pid) == 0, "a refused producer kept the ring");
    atomic_store(&seg_ring(&s, 0)->head, 4);
    REQ_RC(brk_ring_attach(&r, s.base, s.total, 0, BRK_ROLE_CONSUMER, 1, 0), BRK_CORRUPT);
    atomic_store(&seg_ring(&s, 0)->head, 0);
    atomic_store(&seg_ring(&s, 0)->tail, 1024);
    REQ_RC(brk_ring_attach(&r, s.base, s.total, 0, BRK_ROLE_CONSUMER, 1, 0), BRK_CORRUPT);
    atomic_store(&seg_ring(&s, 0)->tail, 64);
    REQ_RC(brk_ring_attach(&r, s.base, s.total, 0, BRK_ROLE_CONSUMER, 1, 0), 0); /* the pid was given back */
    atomic_store(&seg_ring(&s, 1)->tail, 12);
    REQ_RC(brk_ring_attach(&r, s.base, s.total, 1, BRK_ROLE_CONSUMER, 1, 0), 0);
    REQ_RC(brk_bcast_join(&r, 1, 0), BRK_CORRUPT);
    uint32_t st;
    int32_t pid;
    uint64_t start, head;
    REQ_RC(brk_bcast_slot_info(&r, 0, &st, &pid, &start, &head), 0);
    REQ((st & BRK_SLOT_MASK) == BRK_SLOT_FREE, "a failed join left the slot %#x", st);
    atomic_store(&seg_ring(&s, 1)->tail, 16);
    REQ_RC(brk_bcast_join(&r, 1, 0), 0);
    seg_free(&s);
    return NULL;
}

/* Random scribbles over a ring's header, slots and data, then 100 consumer
 * calls: every outcome must be documented, every length <= max_record, and
 * (under ASan) no byte outside the ring may be read. */
static const char *c_fuzz(int k, uint64_t rounds)
{
    const uint64_t cap = 1024;
    brk_ring_spec sp = mkspec(k, cap, 2);
    seg_t s;
    REQ(seg_make(&s, &sp, 1) == 0, "seg_make");
    struct brk_ring_hdr *h = seg_ring(&s, 0);
    brk_ring p, c;
    REQ_RC(attach_p(&p, &s, 0), 0);
    const uint64_t mr = p.max_record, dof = h->data_offset;
    struct brk_slot *slot0 = (struct brk_slot *)((unsigned char *)h + sizeof *h);
    /* exactly sized heap buffers: a write past them is an ASan error */
    unsigned char *dst = malloc(mr), *mdst = malloc(4 * mr), *src = malloc(mr);
    REQ(dst && mdst && src, "malloc");
    memset(src, 0x3C, mr);
    uint64_t rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)k, hist[16] = {0}, lens[4], calls = 0;
    for (uint64_t round = 0; round < rounds; round++) {
        REQ_RC(brk_seg_format(s.base, s.total, &sp, 1, getpid(), 0, NULL), 0);
        REQ_RC(attach_p(&p, &s, 0), 0);
        REQ_RC(attach_c(&c, &s, 0), 0);
        /* some honest traffic, partly consumed */
        uint64_t nsend = xs64(&rng) % 48, nread = nsend ? xs64(&rng) % (nsend + 1) : 0;
        for (uint64_t i = 0; i < nsend; i++) {
            uint64_t len = xs64(&rng) & 1 ? xs64(&rng) % 64 : xs64(&rng) % (mr + 1);
            int rc = brk_send(&p, src, len);
            REQ(rc == 0 || rc == BRK_FULL, "honest send: %s", rc_name(rc));
        }
        for (uint64_t i = 0; i < nread; i++) {
            int rc = brk_recv(&c, dst, mr);
            REQ(rc == 0 || rc == BRK_EMPTY || rc == BRK_LOST, "honest recv: %s", rc_name(rc));
        }
        /* scribble */
        int nw = 1 + (int)(xs64(&rng) % 4);
        for (int w = 0; w < nw; w++) {
            uint64_t u = xs64(&rng) % 100, v = xs64(&rng);
            if (u < 35) { /* anywhere in the header and slots */
                uint64_t off = xs64(&rng) % dof, n = 1 + xs64(&rng) % 8;
                if (off + n > dof)
                    n = dof - off;
                memcpy((unsigned char *)h + off, &v, n);
            } else if (u < 70) { /* anywhere in the data */
                uint64_t off = xs64(&rng) % cap, n = 1 + xs64(&rng) % 16;
                for (uint64_t i = 0; i < n && off + i < cap; i++)
                    p.data[off + i] = (unsigned char)xs64(&rng);
            } else if (u < 85) { /* a position or state word */
                _Atomic uint64_t *pos[] = {&h->tail, &h->head, &h->oldest, &h->reserve, NULL};
                if (k != K_SPSC)
                    pos[4] = &slot0->head; /* not via h->slots_offset: that may be scribbled */
                int which = (int)(xs64(&rng) % 6);
                if (which == 5) {
                    if ((v >> 8) & 1)
                        atomic_store(&h->producer_pid, (int32_t)(v % 4) - 1);
                    else
                        atomic_store(&h->cons_wait, (uint32_t)(v % 3));
                    continue;
                }
                _Atomic uint64_t *f = pos[which] ? pos[which] : &h->tail;
                uint64_t cur = atomic_load(f), nv;
                switch (v % 6) {
                case 0: nv = xs64(&rng); break;
                case 1: nv = cur + 8 * (xs64(&rng) % 16); break;
                case 2: nv = cur - 8 * (xs64(&rng) % 16); break;
                case 3: nv = cur + cap + 8 * (xs64(&rng) % 4); break;
                case 4: nv = cur ^ ((uint64_t)1 << (xs64(&rng) % 64)); break;
                default: nv = xs64(&rng) % (4 * cap); break;
                }
                atomic_store(f, nv);
            } else { /* the header of the record the consumer reads next */
                uint64_t off = c.head & (cap - 1);
                if (cap - off < BRK_REC_HDR)
                    off = 0;
                struct brk_rec r;
                memcpy(&r, p.data + off, sizeof r);
                switch (v % 7) {
                case 0: r.len = (uint32_t)xs64(&rng); break;
                case 1: r.len += (uint32_t)(xs64(&rng) % 64); break;
                case 2: r.len = (uint32_t)(mr - xs64(&rng) % 4); break;
                case 3: r.type = r.type == BRK_REC_PAD ? BRK_REC_DATA : BRK_REC_PAD; break;
                case 4: r.type = (uint32_t)xs64(&rng); break;
                case 5: r.seq += xs64(&rng) % 3 - 1; break;
                default: r.len = (uint32_t)(cap - off - BRK_REC_HDR); r.type = BRK_REC_PAD; break;
                }
                memcpy(p.data + off, &r, sizeof r);
            }
        }
        /* 100 calls */
        for (int op = 0; op < 100; op++) {
            uint64_t u = xs64(&rng) % 20;
            int rc;
            calls++;
            if (u < 10) {
                rc = brk_recv(&c, dst, mr);
                REQ(allowed_recv(k, rc), "round %llu: recv returned %s", (unsigned long long)round, rc_name(rc));
                if (rc == 0 || rc == BRK_LOST)
                    REQ(c.rlen <= mr, "recv: length %llu > max_record", (unsigned long long)c.rlen);
            } else if (u < 13) {
                rc = brk_peek(&c);
                REQ(allowed_recv(k, rc), "round %llu: peek returned %s", (unsigned long long)round, rc_name(rc));
                if (rc == 0 || rc == BRK_LOST) {
                    REQ(c.rlen <= mr && c.rptr >= p.data && c.rptr + c.rlen <= p.data + cap,
                        "peek lent %llu bytes at offset %lld", (unsigned long long)c.rlen,
                        (long long)(c.rptr - p.data));
                    volatile unsigned char sink = 0;
                    for (uint64_t i = 0; i < c.rlen; i++)
                        sink ^= c.rptr[i];
                    (void)sink;
                    if (xs64(&rng) & 1) {
                        rc = brk_release(&c);
                        REQ(rc == 0 || (k != K_SPSC && rc == BRK_EVICTED) || (k == K_LOSSY && rc == BRK_LAPPED),
                            "release returned %s", rc_name(rc));
                    } else {
                        REQ_RC(brk_unpeek(&c), 0);
                    }
                }
            } else if (u < 16) {
                rc = brk_recv_many(&c, mdst, 4 * mr, lens, 4);
                REQ(allowed_recv(k, rc), "round %llu: recv_many returned %s", (unsigned long long)round,
                    rc_name(rc));
                REQ(c.count <= 4, "recv_many count %llu", (unsigned long long)c.count);
                uint64_t sum = 0;
                for (uint64_t i = 0; i < c.count; i++) {
                    REQ(lens[i] <= mr, "recv_many: length %llu > max_record", (unsigned long long)lens[i]);
                    sum += lens[i];
                }
                REQ(sum <= 4 * mr, "recv_many wrote %llu bytes", (unsigned long long)sum);
                REQ((rc == 0 || rc == BRK_LOST) == (c.count > 0), "recv_many rc %s with count %llu", rc_name(rc),
                    (unsigned long long)c.count);
            } else if (u < 18) {
                rc = brk_send(&p, src, xs64(&rng) % (mr + 1));
                REQ(rc == 0 || rc == BRK_FULL || rc == BRK_CORRUPT, "send returned %s", rc_name(rc));
            } else if (u < 19) {
                rc = brk_wait_data(&c, 0);
                REQ(rc == 0 || rc == BRK_TIMEOUT, "wait_data returned %s", rc_name(rc));
                (void)brk_backlog(&c);
            } else {
                rc = brk_wait_space(&p, xs64(&rng) % (mr + 1), 0);
                REQ(rc == 0 || rc == BRK_TIMEOUT, "wait_space returned %s", rc_name(rc));
                (void)brk_backlog(&p);
            }
            hist[rc >= 0 && rc < 16 ? rc : 15]++;
        }
    }
    INFO("%llu rounds, %llu calls: ok %llu, empty %llu, full %llu, corrupt %llu, lapped %llu, lost %llu, "
         "evicted %llu, closed %llu",
         (unsigned long long)rounds, (unsigned long long)calls, (unsigned long long)hist[BRK_OK],
         (unsigned long long)hist[BRK_EMPTY], (unsigned long long)hist[BRK_FULL], (unsigned long long)hist[BRK_CORRUPT],
         (unsigned long long)hist[BRK_LAPPED], (unsigned long long)hist[BRK_LOST],
         (unsigned long long)hist[BRK_EVICTED], (unsigned long long)hist[BRK_CLOSED]);
    free(dst);
    free(mdst);
    free(src);
    seg_free(&s);
    return NULL;
}

static void mode_corrupt(void)
{
    char name[128];
    for (int k = 0; k < 3; k++) {
        snprintf(name, sizeof name, "corrupt %s: tail beyond head+capacity, behind head, not a multiple of 8", KN[k]);
        RUN(name, c_positions(k));
        snprintf(name, sizeof name,
                 "corrupt %s: record too long, past the end, bad type, wrong seq, PAD not reaching the end", KN[k]);
        RUN(name, c_records(k));
    }
    RUN("corrupt spsc: head scribbled -> producer reports CORRUPT (and does not sleep)", c_head_spsc());
    RUN("corrupt bcast: a slot's head scribbled -> the producer evicts that consumer", c_slot_head());
    RUN("corrupt lossy: oldest scribbled -> CORRUPT, state kept; restored -> exact loss", c_oldest());
    RUN("corrupt misc: producer_pid, slot state, attach/join on corrupt positions", c_misc());
    uint64_t rounds = scaled(10000, 100);
    for (int k = 0; k < 3; k++) {
        snprintf(name, sizeof name, "corrupt %s: randomized scribbles, 100 calls per round", KN[k]);
        RUN(name, c_fuzz(k, rounds));
    }
}

/* ======================================================================== */
/* procs / threads: streams between workers                                  */
/* ======================================================================== */

typedef struct {
    int ok;
    uint64_t count, lost, losses, lapped, sleeps, wakeups, full_waits;
    uint64_t window; /* futex sleeps that found their word changed (g_waitv_changed + g_wait_changed) */
    double secs, max_wait;
    char msg[300];
} wres_t;

typedef struct {
    _Atomic uint32_t joined;
    _Atomic uint32_t stop; /* someone failed: everybody stops early */
    uint32_t bell;         /* a brk_wait_any bell the workers share (threads or processes) */
    wres_t res[8];
} ctl_t;

typedef struct job job_t;
typedef void (*wfn)(job_t *, int);

struct job {
    seg_t seg;
    ctl_t *ctl;
    int kind, nc;
    uint64_t n, minlen, maxlen;
    uint64_t slow_ns;  /* lossy consumer: spin this long per record */
    uint64_t batch;    /* producer: send_many batches of this many (lossy stress) */
    int efd[2];        /* ping-pong: eventfds, or -1 */
    const char *label; /* for messages */
};

#define WFAIL(...)                                                                                                     \
    do {                                                                                                               \
        snprintf(res->msg, sizeof res->msg, __VA_ARGS__);                                                              \
        res->ok = 0;                                                                                                   \
        atomic_store(&j->ctl->stop, 1);                                                                                \
        goto out;                                                                                                      \
    } while (0)

static int wait_joined(job_t *j, uint32_t n)
{
    double end = now_s() + 5.0;
    while (atomic_load(&j->ctl->joined) < n) {
        if (now_s() > end || atomic_load(&j->ctl->stop))
            return -1;
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* wait, keeping the longest wait (reported, never judged: a loaded machine makes any wait long) */
static int timed_wait(brk_ring *r, int consumer, uint64_t len, wres_t *res, double *el)
{
    double t0 = now_s();
    int rc = consumer ? brk_wait_data(r, WAIT_NS) : brk_wait_space(r, len, WAIT_NS);
    *el = now_s() - t0;
    if (*el > res->max_wait)
        res->max_wait = *el;
    return rc;
}

static void w_producer(job_t *j, int idx)
{
    wres_t *res = &j->ctl->res[idx];
    brk_ring p;
    unsigned char *buf = malloc(64 * (REC_MAX + 8));
    uint64_t lens[64], rng = 0xfeedull + (uint64_t)idx, seq = 0;
    double t0 = now_s(), el;
    int lossy = j->kind == K_LOSSY, attached = 0;
    res->ok = 1;
    if (!buf)
        WFAIL("malloc");
    int rc = attach_p(&p, &j->seg, 0);
    if (rc)
        WFAIL("attach: %s", rc_name(rc));
    attached = 1;
    if (wait_joined(j, (uint32_t)j->nc))
        WFAIL("the consumers did not join within 5 s");
    while (seq < j->n) {
        if ((seq & 1023) == 0 && atomic_load(&j->ctl->stop))
            WFAIL("stopped: another worker failed");
        uint64_t how = xs64(&rng) % 8, len = rec_len(seq, j->minlen, j->maxlen);
        if (j->batch || how == 7) { /* send_many */
            uint64_t nb = j->batch ? j->batch : 1 + xs64(&rng) % 8, off = 0;
            if (nb > j->n - seq)
                nb = j->n - seq;
            for (uint64_t i = 0; i < nb; i++) {
                lens[i] = rec_len(seq + i, j->minlen, j->maxlen);
                make_rec(buf + off, seq + i, lens[i]);
                off += lens[i];
            }
            rc = brk_send_many(&p, buf, off, lens, nb);
            if (rc == 0) {
                if (p.count < 1 || p.count > nb)
                    WFAIL("send_many count %llu of %llu", (unsigned long long)p.count, (unsigned long long)nb);
                if (lossy && p.count != nb)
                    WFAIL("lossy send_many sent %llu of %llu", (unsigned long long)p.count, (unsigned long long)nb);
                seq += p.count;
                continue;
            }
        } else if (how < 4) { /* send */
            make_rec(buf, seq, len);
            rc = brk_send(&p, buf, len);
        } else { /* claim (maybe more than needed), write in place, commit */
            uint64_t extra = how == 6 ? xs64(&rng) % (p.max_record - len + 1) : 0;
            rc = brk_claim(&p, len + extra);
            if (rc == 0) {
                make_rec(p.wptr, seq, len);
                rc = brk_commit(&p, len);
                if (rc)
                    WFAIL("commit: %s", rc_name(rc));
            }
        }
        if (rc == 0) {
            seq++;
            continue;
        }
        if (rc != BRK_FULL)
            WFAIL("send of record %llu: %s", (unsigned long long)seq, rc_name(rc));
        if (lossy)
            WFAIL("a lossy producer got FULL");
        rc = timed_wait(&p, 0, len, res, &el);
        if (rc)
            WFAIL("wait_space (record %llu): %s after %.2f s", (unsigned long long)seq, rc_name(rc), el);
    }
out:
    res->count = seq;
    res->secs = now_s() - t0;
    if (attached) {
        res->sleeps = p.sleeps;
        res->wakeups = p.wakeups;
        res->full_waits = p.full_waits;
        brk_ring_detach(&p);
    }
    free(buf);
}

static void w_consumer(job_t *j, int idx)
{
    wres_t *res = &j->ctl->res[idx];
    brk_ring c;
    enum { BUFSZ = 16 * (REC_MAX + 8) };
    unsigned char *buf = malloc(BUFSZ), *cp = malloc(REC_MAX + 8);
    uint64_t lens[16], rng = 0xc0ffeeull * (uint64_t)(idx + 1), next = 0, prev = UINT64_MAX, got = 0;
    double t0 = now_s(), el;
    int lossy = j->kind == K_LOSSY, attached = 0;
    res->ok = 1;
    if (!buf || !cp)
        WFAIL("malloc");
    int rc = attach_c(&c, &j->seg, 0);
    if (rc)
        WFAIL("attach/join: %s", rc_name(rc));
    attached = 1;
    atomic_fetch_add(&j->ctl->joined, 1);
    for (;;) {
        if ((got & 1023) == 0 && atomic_load(&j->ctl->stop))
            WFAIL("stopped: another worker failed (after %llu records)", (unsigned long long)got);
        uint64_t how = xs64(&rng) % 8, nrec = 0, lost_first = 0, lost0 = c.lost;
        const unsigned char *recs[16];
        uint64_t rl[16];
        if (how < 4) {
            rc = brk_recv(&c, buf, BUFSZ);
            if (rc == 0 || rc == BRK_LOST) {
                recs[0] = buf;
                rl[0] = c.rlen;
                nrec = 1;
                lost_first = rc == BRK_LOST ? c.last_lost : 0;
            }
        } else if (how < 6) {
            rc = brk_peek(&c);
            if (rc == BRK_LOST && !lossy)
                WFAIL("peek: a lossless consumer got LOST");
            if (rc == 0 || rc == BRK_LOST) {
                lost_first = rc == BRK_LOST ? c.last_lost : 0;
                rl[0] = c.rlen;
                if (lossy) {
                    /* the lent bytes may be overwritten while we look: copy,
                     * then release says whether the copy is good */
                    memcpy(cp, c.rptr, c.rlen);
                    recs[0] = cp;
                    rc = brk_release(&c);
                    if (rc == BRK_LAPPED) {
                        res->lapped++;
                        continue;
                    }
                    if (rc)
                        WFAIL("release: %s", rc_name(rc));
                    nrec = 1;
                } else {
                    if (rec_is(c.rptr, c.rlen, next) || c.rlen != rec_len(next, j->minlen, j->maxlen))
                        WFAIL("peek: record %llu (len %llu) is wrong", (unsigned long long)next,
                              (unsigned long long)c.rlen);
                    rc = brk_release(&c);
                    if (rc)
                        WFAIL("release: %s", rc_name(rc));
                    next++;
                    got++;
                    continue;
                }
            }
        } else {
            rc = brk_recv_many(&c, buf, BUFSZ, lens, 1 + xs64(&rng) % 16);
            if (rc == 0 || rc == BRK_LOST) {
                uint64_t off = 0;
                for (uint64_t i = 0; i < c.count; i++) {
                    recs[i] = buf + off;
                    rl[i] = lens[i];
                    off += lens[i];
                }
                nrec = c.count;
                lost_first = c.lost - lost0;
                if ((rc == BRK_LOST) != (lost_first > 0))
                    WFAIL("recv_many: %s with lost %llu", rc_name(rc), (unsigned long long)lost_first);
            }
        }
        if (nrec) {
            for (uint64_t i = 0; i < nrec; i++) {
                if (lossy) {
                    uint64_t s = rec_seq(recs[i], rl[i]), want = prev + 1 + (i == 0 ? lost_first : 0);
                    if (s == UINT64_MAX)
                        WFAIL("a record after seq %lld (len %llu) fails its checksum", (long long)prev,
                              (unsigned long long)rl[i]);
                    if (rl[i] != rec_len(s, j->minlen, j->maxlen))
                        WFAIL("record %llu has length %llu", (unsigned long long)s, (unsigned long long)rl[i]);
                    if (s != want)
                        WFAIL("record %llu after %lld (reported lost %llu): sequence broken", (unsigned long long)s,
                              (long long)prev, (unsigned long long)(i == 0 ? lost_first : 0));
                    prev = s;
                    if (j->slow_ns)
                        spin_ns(j->slow_ns);
                } else {
                    if (lost_first)
                        WFAIL("a lossless consumer lost %llu", (unsigned long long)lost_first);
                    if (rl[i] != rec_len(next, j->minlen, j->maxlen) || rec_is(recs[i], rl[i], next))
                        WFAIL("record %llu is wrong (len %llu, want %llu): lost, duplicated, reordered or torn",
                              (unsigned long long)next, (unsigned long long)rl[i],
                              (unsigned long long)rec_len(next, j->minlen, j->maxlen));
                    next++;
                }
                got++;
            }
            if (lost_first)
                res->losses++;
            continue;
        }
        if (rc == BRK_EMPTY) {
            rc = timed_wait(&c, 1, 0, res, &el);
            if (rc)
                WFAIL("wait_data after %llu records: %s after %.2f s", (unsigned long long)got, rc_name(rc), el);
            continue;
        }
        if (rc == BRK_CLOSED)
            break;
        if (rc == BRK_LAPPED && lossy) {
            res->lapped++;
            continue;
        }
        WFAIL("after %llu records: %s", (unsigned long long)got, rc_name(rc));
    }
    if (lossy) {
        if (got + c.lost != j->n)
            WFAIL("received %llu + lost %llu != sent %llu", (unsigned long long)got, (unsigned long long)c.lost,
                  (unsigned long long)j->n);
        if (j->n && prev != j->n - 1)
            WFAIL("the last record read was %lld, not %llu", (long long)prev, (unsigned long long)(j->n - 1));
    } else if (got != j->n || next != j->n) {
        WFAIL("received %llu of %llu", (unsigned long long)got, (unsigned long long)j->n);
    }
out:
    res->count = got;
    res->secs = now_s() - t0;
    if (attached) {
        res->lost = c.lost;
        res->sleeps = c.sleeps;
        res->wakeups = c.wakeups;
        brk_ring_detach(&c);
    }
    free(buf);
    free(cp);
}

/* Ping-pong over rings 0 (worker 0 -> 1) and 1 (1 -> 0); spin_ns = 0 on
 * every handle, so every wait really goes to sleep. */
static const char *pp_send(brk_ring *r, uint64_t v, wres_t *res)
{
    double el;
    int rc;
    while ((rc = brk_send(r, &v, sizeof v)) == BRK_FULL) {
        rc = timed_wait(r, 0, sizeof v, res, &el);
        REQ(rc == 0, "value %llu: wait_space: %s after %.2f s", (unsigned long long)v, rc_name(rc), el);
    }
    REQ(rc == 0, "value %llu: send: %s", (unsigned long long)v, rc_name(rc));
    return NULL;
}

static const char *pp_recv(brk_ring *r, uint64_t want, wres_t *res)
{
    double el;
    uint64_t v = UINT64_MAX;
    int rc;
    while ((rc = brk_recv(r, &v, sizeof v)) == BRK_EMPTY) {
        rc = timed_wait(r, 1, 0, res, &el);
        REQ(rc == 0, "waiting for %llu: wait_data: %s after %.2f s: lost wake-up", (unsigned long long)want,
            rc_name(rc), el);
    }
    REQ(rc == 0, "waiting for %llu: recv: %s", (unsigned long long)want, rc_name(rc));
    REQ(v == want, "got %llu, want %llu", (unsigned long long)v, (unsigned long long)want);
    return NULL;
}

static void w_ping(job_t *j, int idx)
{
    wres_t *res = &j->ctl->res[idx];
    brk_ring out, in;
    int ao = 0, ai = 0;
    double t0 = now_s();
    uint64_t i = 0;
    const char *e;
    res->ok = 1;
    int rc = attach_p(&out, &j->seg, (uint32_t)idx);
    if (rc)
        WFAIL("attach producer: %s", rc_name(rc));
    ao = 1;
    rc = brk_ring_attach(&in, j->seg.base, j->seg.total, (uint32_t)(1 - idx), BRK_ROLE_CONSUMER, getpid(), 0);
    if (rc)
        WFAIL("attach consumer: %s", rc_name(rc));
    ai = 1;
    out.spin_ns = in.spin_ns = 0;
    if (j->efd[0] >= 0) {
        /* each side sleeps on its own eventfd and rings the other side's */
        out.efd_wait = in.efd_wait = j->efd[idx];
        out.efd_notify = in.efd_notify = j->efd[1 - idx];
    }
    for (i = 0; i < j->n; i++) {
        if (idx == 0) {
            if ((e = pp_send(&out, i, res)) || (e = pp_recv(&in, i, res)))
                WFAIL("round %llu: %s", (unsigned long long)i, e);
        } else {
            if ((e = pp_recv(&in, i, res)) || (e = pp_send(&out, i, res)))
                WFAIL("round %llu: %s", (unsigned long long)i, e);
        }
    }
out:
    res->count = i;
    res->secs = now_s() - t0;
    res->sleeps = (ao ? out.sleeps : 0) + (ai ? in.sleeps : 0);
    res->wakeups = (ao ? out.wakeups : 0) + (ai ? in.wakeups : 0);
    if (ao)
        brk_ring_detach(&out);
    if (ai)
        brk_ring_detach(&in);
}

typedef struct {
    job_t *j;
    int idx;
    wfn fn;
} targ_t;

static void *thread_main(void *a)
{
    targ_t *t = a;
    t->fn(t->j, t->idx);
    return NULL;
}

/* Run n workers as processes (fork) or threads; collect and judge results. */
static const char *run_workers(job_t *j, int n, wfn *fns, int threads, double limit_s)
{
    static char why[2048];
    why[0] = 0;
    for (int i = 0; i < n; i++) {
        memset(&j->ctl->res[i], 0, sizeof j->ctl->res[i]);
        j->ctl->res[i].ok = 0;
    }
    atomic_store(&j->ctl->joined, 0);
    atomic_store(&j->ctl->stop, 0);
    int status[8], killed[8] = {0};
    if (threads) {
        pthread_t th[8];
        targ_t ta[8];
        for (int i = 0; i < n; i++) {
            ta[i] = (targ_t){j, i, fns[i]};
            if (pthread_create(&th[i], NULL, thread_main, &ta[i]))
                return "pthread_create failed";
        }
        for (int i = 0; i < n; i++) {
            pthread_join(th[i], NULL);
            status[i] = 0;
        }
    } else {
        pid_t pids[8], parent = getpid();
        fflush(stdout);
        fflush(stderr);
        for (int i = 0; i < n; i++) {
            pid_t pid = fork();
            if (pid < 0) {
                snprintf(why, sizeof why, "fork: %s", strerror(errno));
                for (int k = 0; k < i; k++) {
                    kill(pids[k], SIGKILL);
                    waitpid(pids[k], NULL, 0);
                }
                return why;
            }
            if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent)
                    _exit(97);
                alarm((unsigned)limit_s + 10);
                fns[i](j, i);
                fflush(stdout);
                _exit(j->ctl->res[i].ok ? 0 : 1);
            }
            pids[i] = pid;
        }
        int left = n, done[8] = {0};
        double deadline = now_s() + limit_s;
        while (left) {
            for (int i = 0; i < n; i++) {
                if (done[i])
                    continue;
                pid_t r = waitpid(pids[i], &status[i], WNOHANG);
                if (r == pids[i]) {
                    done[i] = 1;
                    left--;
                }
            }
            if (left && now_s() > deadline) {
                for (int i = 0; i < n; i++) {
                    if (!done[i]) {
                        kill(pids[i], SIGKILL);
                        waitpid(pids[i], &status[i], 0);
                        killed[i] = 1;
                        done[i] = 1;
                        left--;
                    }
                }
            }
            if (left) {
                struct timespec ts = {0, 2000000};
                nanosleep(&ts, NULL);
            }
        }
    }
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        wres_t *r = &j->ctl->res[i];
        const char *what = NULL;
        char sbuf[64];
        if (killed[i])
            what = "killed after the time limit";
        else if (!threads && WIFSIGNALED(status[i])) {
            snprintf(sbuf, sizeof sbuf, "died of signal %d", WTERMSIG(status[i]));
            what = sbuf;
        } else if (!threads && (!WIFEXITED(status[i]) || WEXITSTATUS(status[i]) != 0) && r->ok) {
            snprintf(sbuf, sizeof sbuf, "exit status %d", WEXITSTATUS(status[i]));
            what = sbuf;
        } else if (!r->ok)
            what = r->msg[0] ? r->msg : "failed";
        if (what && len < sizeof why - 1)
            len += (size_t)snprintf(why + len, sizeof why - len, "%sworker %d: %s", len ? "; " : "", i, what);
    }
    return why[0] ? why : NULL;
}

static ctl_t *ctl_new(void)
{
    void *p = mmap(NULL, sizeof(ctl_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    memset(p, 0, sizeof(ctl_t));
    return p;
}

static const char *stream(job_t *j, int threads, uint64_t cap)
{
    brk_ring_spec sp = mkspec(j->kind, cap, (uint32_t)(j->nc > 0 ? j->nc : 1));
    REQ(seg_make(&j->seg, &sp, 1) == 0, "seg_make");
    wfn fns[8] = {w_producer};
    for (int i = 1; i <= j->nc; i++)
        fns[i] = w_consumer;
    const char *e = run_workers(j, j->nc + 1, fns, threads, 200);
    seg_free(&j->seg);
    wres_t *p = &j->ctl->res[0];
    int len = snprintf(g_info, sizeof g_info, "%.2f s; producer: %llu sent, %llu full waits, %llu sleeps",
                       p->secs, (unsigned long long)p->count, (unsigned long long)p->full_waits,
                       (unsigned long long)p->sleeps);
    for (int i = 1; i <= j->nc && len < (int)sizeof g_info; i++) {
        wres_t *c = &j->ctl->res[i];
        len += snprintf(g_info + len, sizeof g_info - (size_t)len, "; c%d: %llu recv", i, (unsigned long long)c->count);
        if (j->kind == K_LOSSY && len < (int)sizeof g_info)
            len += snprintf(g_info + len, sizeof g_info - (size_t)len, ", %llu lost (%llu reports), %llu LAPPED",
                            (unsigned long long)c->lost, (unsigned long long)c->losses,
                            (unsigned long long)c->lapped);
        if (len < (int)sizeof g_info)
            len += snprintf(g_info + len, sizeof g_info - (size_t)len, ", %llu sleeps, max wait %.3f s",
                            (unsigned long long)c->sleeps, c->max_wait);
    }
    return e;
}

static const char *pingpong(job_t *j, int threads, int eventfd)
{
    brk_ring_spec sp[2] = {mkspec(K_SPSC, 4096, 0), mkspec(K_SPSC, 4096, 0)};
    REQ(seg_make(&j->seg, sp, 2) == 0, "seg_make");
    j->efd[0] = j->efd[1] = -1;
    if (eventfd) {
        j->efd[0] = brk_eventfd();
        j->efd[1] = brk_eventfd();
        REQ(j->efd[0] >= 0 && j->efd[1] >= 0, "brk_eventfd: %d %d", j->efd[0], j->efd[1]);
    }
    wfn fns[2] = {w_ping, w_ping};
    const char *e = run_workers(j, 2, fns, threads, 200);
    if (eventfd) {
        brk_close_fd(j->efd[0]);
        brk_close_fd(j->efd[1]);
    }
    seg_free(&j->seg);
    wres_t *a = &j->ctl->res[0], *b = &j->ctl->res[1];
    INFO("%llu round trips in %.2f s (%.1f us each); sleeps %llu + %llu, wake-ups sent %llu + %llu",
         (unsigned long long)a->count, a->secs, a->count ? a->secs * 1e6 / (double)a->count : 0.0,
         (unsigned long long)a->sleeps, (unsigned long long)b->sleeps, (unsigned long long)a->wakeups,
         (unsigned long long)b->wakeups);
    if (!e && (a->sleeps == 0 || b->sleeps == 0))
        return "a side never slept: the sleep path was not exercised";
    return e;
}

static job_t job_init(ctl_t *ctl, int kind, int nc, uint64_t n)
{
    job_t j;
    memset(&j, 0, sizeof j);
    j.ctl = ctl;
    j.kind = kind;
    j.nc = nc;
    j.n = n;
    j.minlen = 0;
    j.maxlen = REC_MAX;
    j.efd[0] = j.efd[1] = -1;
    return j;
}

/* A lossy consumer that is lapped all the time recovers thousands of times a
 * second. brk_recover() loads `oldest`, then `tail`, and calls a snapshot with
 * tail - oldest > capacity corrupt; but the producer may publish between the
 * two loads, and with small records one record is enough. Rounds of 1M
 * records for up to 5 s (not scaled); any BRK_CORRUPT fails the check. Once
 * fixed, this stays a stress test of exact loss counting under constant laps. */
static const char *lossy_recover_race(ctl_t *ctl)
{
    static char why[1400];
    double t0 = now_s();
    uint64_t sent = 0, lost = 0;
    int round = 0;
    while (round < 40 && now_s() - t0 < 5.0) {
        job_t j = job_init(ctl, K_LOSSY, 1, 1000000);
        j.minlen = 12;
        j.maxlen = 24;
        j.slow_ns = 100;
        round++;
        const char *e = stream(&j, 0, 4096);
        if (e) {
            snprintf(why, sizeof why,
                     "round %d after %.1f s: %s. The ring was healthy: brk_recover() read `oldest`, the producer "
                     "published another record, then it read `tail`, and took tail - oldest > capacity for corruption",
                     round, now_s() - t0, e);
            return why;
        }
        sent += j.n;
        lost += ctl->res[1].lost;
    }
    INFO("%d rounds in %.1f s: %llu records sent, %llu lost, no CORRUPT", round, now_s() - t0,
         (unsigned long long)sent, (unsigned long long)lost);
    return NULL;
}

static void mode_procs(void)
{
    ctl_t *ctl = ctl_new();
    char name[160];
    job_t j = job_init(ctl, K_SPSC, 1, scaled(3000000, 10000));
    snprintf(name, sizeof name, "procs spsc: %llu records of 0..2000 bytes, 2 processes",
             (unsigned long long)j.n);
    RUN(name, stream(&j, 0, 65536));

    j = job_init(ctl, K_BCAST, 3, scaled(1000000, 10000));
    snprintf(name, sizeof name, "procs bcast lossless: %llu records, 1 producer + 3 consumer processes",
             (unsigned long long)j.n);
    RUN(name, stream(&j, 0, 65536));

    j = job_init(ctl, K_LOSSY, 1, scaled(300000, 5000));
    j.minlen = 12;
    j.slow_ns = 5000;
    snprintf(name, sizeof name, "procs bcast lossy: %llu records, fast producer, slow consumer (5 us/record)",
             (unsigned long long)j.n);
    RUN(name, stream(&j, 0, 65536));

    RUN("procs lossy: a consumer lapped all the time (tiny records, 4 KiB ring) never gets BRK_CORRUPT from "
        "brk_recover() on a healthy ring (regression: an inconsistent oldest/tail snapshot)",
        lossy_recover_race(ctl));

    munmap(ctl, sizeof *ctl);
}

/* Hooks run on a sleeping consumer's thread just before its FUTEX_WAIT, i.e.
 * after its last look at the tail: the window of the no-lost-wake-up
 * argument in brk_wait(). hook_publish: the producer publishes a record.
 * hook_second_sleeper (broadcast): a second consumer B goes through its own
 * brk_wait() (spin_ns 0), and the record is published while B, too, is
 * about to block; then the first consumer A blocks. This is the real
 * interleaving "A checks, B checks, P publishes, B re-arms and sees the
 * record, A blocks" that a one-value sleeping flag gets wrong (A would sleep
 * through the wake-up: the flag ABA). */
static brk_ring *g_hook_p, *g_hook_b;
static int g_hook_rc, g_hook_brc;
static double g_hook_bel;

static void hook_publish(void)
{
    uint64_t v = 42;
    g_hook_rc = brk_send(g_hook_p, &v, sizeof v);
}

static uint32_t *g_hook_bell;

static void hook_bell(void)
{
    brk_bell_ring(g_hook_bell);
}

static int i_odd(uint64_t v)
{
    return (int)(v & 1);
}

static void hook_second_sleeper(void)
{
    atomic_store(&g_futex_hook, hook_publish); /* fires at B's FUTEX_WAIT */
    double t0 = now_s();
    g_hook_brc = brk_wait_data(g_hook_b, NS / 5);
    g_hook_bel = now_s() - t0;
}

static const char *t_publish_in_window(int k, int second)
{
    rig_t g;
    TRY(rig_open(&g, k, 1024, k == K_SPSC ? 1 : 2, 2));
    brk_ring *a = &g.c[0];
    a->spin_ns = 0;
    g_hook_p = &g.p;
    g_hook_b = k == K_SPSC ? NULL : &g.c[1];
    if (g_hook_b)
        g_hook_b->spin_ns = 0;
    g_hook_rc = g_hook_brc = -1;
    g_hook_bel = 0;
    atomic_store(&g_hook_ran, 0);
    atomic_store(&g_futex_hook, second ? hook_second_sleeper : hook_publish);
    double t0 = now_s();
    int rc = brk_wait_data(a, NS);
    double el = now_s() - t0;
    atomic_store(&g_futex_hook, NULL);
    REQ(atomic_load(&g_hook_ran), "the consumer never reached FUTEX_WAIT");
    REQ(g_hook_rc == 0, "the producer's send in the window: %s (the second consumer never blocked?)",
        rc_name(g_hook_rc));
    if (second)
        REQ(g_hook_brc == 0 && g_hook_bel < 0.1, "the second consumer's wait: %s after %.3f s", rc_name(g_hook_brc),
            g_hook_bel);
    REQ_RC(rc, 0);
    INFO("wait_data returned after %.3f s", el);
    REQ(el < 0.5,
        "the consumer slept %.2f s (its whole timeout) although the record was published before it blocked: "
        "lost wake-up",
        el);
    uint64_t v;
    REQ_RC(brk_recv(a, &v, sizeof v), 0);
    if (second)
        REQ_RC(brk_recv(&g.c[1], &v, sizeof v), 0);
    rig_close(&g);
    return NULL;
}

/* brk_wait_any: a record published between the waiter's last look and its futex_waitv wakes
 * it (the hook publishes there), on the second of two rings; a bell rung there does too. */
static const char *t_wait_any_window(int bell_in_window)
{
    rig_t g0, g1;
    TRY(rig_open(&g0, K_SPSC, 1024, 1, 1));
    TRY(rig_open(&g1, K_SPSC, 1024, 1, 1));
    brk_ring *rings[2] = {&g0.c[0], &g1.c[0]};
    static uint32_t bell;
    uint32_t which = 99, seen = atomic_load((_Atomic uint32_t *)&bell);
    REQ_RC(brk_wait_any(rings, 2, &bell, seen, 0, NS / 100, &which), BRK_TIMEOUT);
    REQ_RC(brk_wait_any(rings, BRK_WAIT_ANY_MAX + 1, NULL, 0, 0, 0, &which), -EINVAL);
    REQ_RC(brk_wait_any(&rings[0], 1, NULL, 0, 0, -1, &which), -EINVAL);
    brk_ring *prod[1] = {&g0.p};
    REQ_RC(brk_wait_any(prod, 1, NULL, 0, 0, 0, &which), -EINVAL); /* a producer side */
    g_hook_p = &g1.p;
    g_hook_rc = -1;
    atomic_store(&g_hook_ran, 0);
    atomic_store(&g_futex_hook, bell_in_window ? hook_bell : hook_publish);
    g_hook_bell = &bell;
    double t0 = now_s();
    int rc = brk_wait_any(rings, 2, &bell, seen, 0, NS, &which);
    double el = now_s() - t0;
    atomic_store(&g_futex_hook, NULL);
    REQ(atomic_load(&g_hook_ran), "the waiter never reached futex_waitv");
    REQ_RC(rc, 0);
    REQ(which == (bell_in_window ? 2u : 1u), "woke for %u", which);
    REQ(el < 0.5, "the wake-up in the window was lost: woke after %.3f s", el);
    if (!bell_in_window) {
        REQ_RC(g_hook_rc, 0);
        unsigned char b[16];
        REQ_RC(brk_recv(&g1.c[0], b, sizeof b), 0);
    }
    REQ(atomic_load(&g0.c[0].hdr->cons_wait) == BRK_WAIT_NONE && atomic_load(&g1.c[0].hdr->cons_wait) == BRK_WAIT_NONE,
        "the waiter left a sleeping flag behind");
    rig_close(&g0);
    rig_close(&g1);
    return NULL;
}

typedef struct {
    rig_t *g[2];
    uint32_t *bell;
    uint64_t n;
    _Atomic uint64_t sent[3];
    _Atomic int done; /* set once every sent[] is final, then the bell rings a last time */
} any_job_t;

static void *any_producer(void *arg)
{
    any_job_t *j = arg;
    for (uint64_t i = 0; i < j->n; i++) {
        unsigned k = (unsigned)((i * 2654435761u) >> 7) % 3u;
        if (k < 2) {
            while (psend(j->g[k], 8) == BRK_FULL)
                sched_yield();
        } else
            brk_bell_ring(j->bell);
        atomic_fetch_add(&j->sent[k], 1);
        if (i % 7 == 0) {
            struct timespec ts = {0, 20000 * (long)(i % 5)}; /* now and then: the waiter falls asleep */
            nanosleep(&ts, NULL);
        }
    }
    /* The waiter may have taken the last record before the count above moved and gone back to
     * sleep with nothing more to come (the old version of this check then reported a lost
     * wake-up that was its own race): the counts are final now, and this ring says so. */
    atomic_store(&j->done, 1);
    brk_bell_ring(j->bell);
    return NULL;
}

/* brk_wait_any from another thread's records on two rings and rings of the bell: every record
 * is seen, and no wait reaches its timeout (a lost wake-up at the end; in the middle later
 * records hide one, which the ping-pong below does not). */
static const char *t_wait_any_threads(uint64_t n)
{
    rig_t g0, g1;
    TRY(rig_open(&g0, K_SPSC, 1024, 1, 1));
    TRY(rig_open(&g1, K_SPSC, 1024, 1, 1));
    static uint32_t bell;
    any_job_t j = {.g = {&g0, &g1}, .bell = &bell, .n = n};
    brk_ring *rings[2] = {&g0.c[0], &g1.c[0]};
    uint32_t seen = atomic_load((_Atomic uint32_t *)&bell);
    pthread_t th;
    REQ(pthread_create(&th, NULL, any_producer, &j) == 0, "pthread_create");
    uint64_t got[2] = {0, 0}, waits = 0;
    const char *err = NULL;
    while (!err) {
        if (atomic_load(&j.done) && got[0] == atomic_load(&j.sent[0]) && got[1] == atomic_load(&j.sent[1]))
            break;
        uint32_t which = 99;
        int rc = brk_wait_any(rings, 2, &bell, seen, (i_odd(got[0] + got[1]) ? 0 : 2000), WAIT_NS, &which);
        waits++;
        if (rc == BRK_TIMEOUT) {
            err = "a wait reached its timeout although the producer's last act is a bell: a lost wake-up";
            break;
        }
        if (rc != 0) {
            err = "wait_any failed";
            break;
        }
        if (which < 2) {
            unsigned char b[16];
            while (brk_recv(rings[which], b, sizeof b) == 0)
                got[which]++;
        } else if (which == 2)
            seen = atomic_load((_Atomic uint32_t *)&bell);
        else
            err = "wait_any woke for no ring";
    }
    pthread_join(th, NULL);
    REQ(!err, "%s", err);
    REQ(got[0] == atomic_load(&j.sent[0]) && got[1] == atomic_load(&j.sent[1]), "records lost: %llu/%llu, %llu/%llu",
        (unsigned long long)got[0], (unsigned long long)atomic_load(&j.sent[0]), (unsigned long long)got[1],
        (unsigned long long)atomic_load(&j.sent[1]));
    INFO("%llu + %llu records, %llu bells, %llu waits", (unsigned long long)got[0], (unsigned long long)got[1],
         (unsigned long long)atomic_load(&j.sent[2]), (unsigned long long)waits);
    rig_close(&g0);
    rig_close(&g1);
    return NULL;
}

/* ---- brk_wait_any ping-pong ------------------------------------------------
 *
 * A caller (worker 0) and a provider (worker 1), threads or processes, over one segment of three
 * SPSC rings: 0 and 1 from the caller, 2 back. Each round the caller does one of: a record on
 * ring 0, one on ring 1, a ring of the shared bell, or all three; the provider waits for it all
 * in brk_wait_any and answers on ring 2, which the caller waits for in brk_wait. Nothing else
 * moves, so a lost wake-up on either side leaves it asleep until its timeout: a failure however
 * long the machine takes to get there. The spins vary by round (0: straight to sleep), and the
 * futex sleeps that found their word already changed are counted: each is a wake-up that came
 * in the window between the last look and the block.
 */
enum { AE_R0 = 1, AE_R1 = 2, AE_BELL = 4 };

static unsigned any_events(uint64_t i)
{
    static const unsigned ev[4] = {AE_R0, AE_R1, AE_BELL, AE_R0 | AE_R1 | AE_BELL};
    return ev[(rec_rand(i) >> 17) % 4];
}

static void w_any_caller(job_t *j, int idx)
{
    wres_t *res = &j->ctl->res[idx];
    brk_ring p0, p1, ack;
    int at = 0;
    uint64_t i = 0, v;
    double t0 = now_s();
    res->ok = 1;
    int rc = attach_p(&p0, &j->seg, 0);
    if (!rc && ++at)
        rc = attach_p(&p1, &j->seg, 1);
    if (!rc && ++at)
        rc = attach_c(&ack, &j->seg, 2);
    if (rc)
        WFAIL("attach: %s", rc_name(rc));
    at++;
    for (;; i++) { /* round UINT64_MAX: the provider's "ready", sent once it has read the bell */
        uint64_t want = i == 0 ? UINT64_MAX : i - 1;
        ack.spin_ns = i % 3 == 0 ? 0 : 3000;
        while ((rc = brk_recv(&ack, &v, sizeof v)) == BRK_EMPTY) {
            rc = brk_wait_data(&ack, WAIT_NS);
            if (rc == BRK_TIMEOUT || atomic_load(&g_wait_timedout))
                WFAIL("round %llu: no answer within %lld s: a lost wake-up (the provider's brk_wait_any, or "
                      "this side's brk_wait)", (unsigned long long)want, WAIT_NS / NS);
            if (rc)
                WFAIL("round %llu: wait_data: %s", (unsigned long long)want, rc_name(rc));
        }
        if (rc || v != want)
            WFAIL("round %llu: answer %s, value %llu", (unsigned long long)want, rc_name(rc), (unsigned long long)v);
        if (i == j->n)
            break;
        if ((i & 1023) == 0 && atomic_load(&j->ctl->stop))
            WFAIL("stopped: the provider failed");
        unsigned ev = any_events(i);
        if ((ev & AE_R0) && (rc = brk_send(&p0, &i, sizeof i)))
            WFAIL("round %llu: send on ring 0: %s", (unsigned long long)i, rc_name(rc));
        if ((ev & AE_R1) && (rc = brk_send(&p1, &i, sizeof i)))
            WFAIL("round %llu: send on ring 1: %s", (unsigned long long)i, rc_name(rc));
        if (ev & AE_BELL)
            brk_bell_ring(&j->ctl->bell);
    }
out:
    res->count = i;
    res->secs = now_s() - t0;
    res->window = atomic_load(&g_wait_changed);
    if (at > 2) {
        res->sleeps = ack.sleeps;
        res->wakeups = p0.wakeups + p1.wakeups;
    }
    if (at > 0)
        brk_ring_detach(&p0);
    if (at > 1)
        brk_ring_detach(&p1);
    if (at > 2)
        brk_ring_detach(&ack);
}

static void w_any_provider(job_t *j, int idx)
{
    wres_t *res = &j->ctl->res[idx];
    brk_ring c[2], ans;
    int at = 0;
    uint64_t i = 0, v = UINT64_MAX;
    double t0 = now_s();
    res->ok = 1;
    int rc = attach_c(&c[0], &j->seg, 0);
    if (!rc && ++at)
        rc = attach_c(&c[1], &j->seg, 1);
    if (!rc && ++at)
        rc = attach_p(&ans, &j->seg, 2);
    if (rc)
        WFAIL("attach: %s", rc_name(rc));
    at++;
    brk_ring *rings[2] = {&c[0], &c[1]};
    uint32_t seen = atomic_load((_Atomic uint32_t *)&j->ctl->bell);
    if ((rc = brk_send(&ans, &v, sizeof v))) /* ready: the bell is read */
        WFAIL("ready: %s", rc_name(rc));
    for (; i < j->n; i++) {
        unsigned need = any_events(i), have = 0;
        static const int64_t spins[4] = {0, 1000, 20000, 0};
        while (have != need) {
            uint32_t which = 99;
            rc = brk_wait_any(rings, 2, &j->ctl->bell, seen, spins[i % 4], WAIT_NS, &which);
            if (rc == BRK_TIMEOUT || atomic_load(&g_waitv_timedout)) {
                uint64_t t0r = atomic_load(&c[0].hdr->tail), t1r = atomic_load(&c[1].hdr->tail);
                WFAIL("round %llu: wait_any slept through its whole %lld s timeout; now ring 0 %s, ring 1 %s, the "
                      "bell %s: a lost wake-up", (unsigned long long)i, WAIT_NS / NS,
                      t0r != c[0].head ? "has a record" : "is empty", t1r != c[1].head ? "has a record" : "is empty",
                      atomic_load((_Atomic uint32_t *)&j->ctl->bell) != seen ? "rang" : "did not ring");
            }
            if (rc)
                WFAIL("round %llu: wait_any: %s", (unsigned long long)i, rc_name(rc));
            if (which > 2)
                WFAIL("round %llu: wait_any woke for %u", (unsigned long long)i, which);
            for (int r = 0; r < 2; r++) {
                while ((rc = brk_recv(&c[r], &v, sizeof v)) == 0) {
                    unsigned bit = r ? AE_R1 : AE_R0;
                    if (v != i || !(need & bit) || (have & bit))
                        WFAIL("round %llu: ring %d gave %llu", (unsigned long long)i, r, (unsigned long long)v);
                    have |= bit;
                }
                if (rc != BRK_EMPTY)
                    WFAIL("round %llu: recv on ring %d: %s", (unsigned long long)i, r, rc_name(rc));
            }
            uint32_t b = atomic_load((_Atomic uint32_t *)&j->ctl->bell);
            if (b != seen) {
                if (!(need & AE_BELL) || (have & AE_BELL) || b != seen + 1)
                    WFAIL("round %llu: the bell moved from %u to %u", (unsigned long long)i, seen, b);
                seen = b;
                have |= AE_BELL;
            }
        }
        if ((rc = brk_send(&ans, &i, sizeof i)))
            WFAIL("round %llu: answer: %s", (unsigned long long)i, rc_name(rc));
    }
out:
    res->count = i;
    res->secs = now_s() - t0;
    res->window = atomic_load(&g_waitv_changed);
    if (at > 2) {
        res->sleeps = c[0].sleeps; /* every futex_waitv counts on each ring it waits on */
        res->wakeups = ans.wakeups;
    }
    if (at > 0)
        brk_ring_detach(&c[0]);
    if (at > 1)
        brk_ring_detach(&c[1]);
    if (at > 2)
        brk_ring_detach(&ans);
}

/* CPU hogs beside a check, so that its threads or processes are preempted at any instruction. */
static int hogs_start(pid_t *pids, int n)
{
    pid_t parent = getpid();
    fflush(stdout);
    for (int i = 0; i < n; i++) {
        pids[i] = fork();
        if (pids[i] < 0)
            return -1;
        if (pids[i] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(0);
            alarm(250);
            for (volatile uint64_t x = 0;; x++)
                ;
        }
    }
    return 0;
}

static void hogs_stop(pid_t *pids, int n)
{
    for (int i = 0; i < n; i++) {
        if (pids[i] > 0) {
            kill(pids[i], SIGKILL);
            waitpid(pids[i], NULL, 0);
        }
    }
}

static const char *t_wait_any_pingpong(ctl_t *ctl, int threads, int hogs, uint64_t n)
{
    job_t j = job_init(ctl, K_SPSC, 1, n);
    brk_ring_spec sp[3] = {mkspec(K_SPSC, 4096, 0), mkspec(K_SPSC, 4096, 0), mkspec(K_SPSC, 4096, 0)};
    REQ(seg_make(&j.seg, sp, 3) == 0, "seg_make");
    atomic_store((_Atomic uint32_t *)&ctl->bell, 7);
    atomic_store(&g_waitv_changed, 0);
    atomic_store(&g_wait_changed, 0);
    atomic_store(&g_waitv_timedout, 0);
    atomic_store(&g_wait_timedout, 0);
    pid_t hp[4] = {0};
    REQ(hogs <= 4 && hogs_start(hp, hogs) == 0, "fork of a CPU hog: %s", strerror(errno));
    wfn fns[2] = {w_any_caller, w_any_provider};
    const char *e = run_workers(&j, 2, fns, threads, 200);
    hogs_stop(hp, hogs);
    seg_free(&j.seg);
    wres_t *a = &ctl->res[0], *b = &ctl->res[1];
    INFO("%llu rounds in %.2f s (%.1f us each)%s; provider: %llu sleeps, %llu in the window; caller: %llu sleeps, "
         "%llu in the window", (unsigned long long)b->count, b->secs,
         b->count ? b->secs * 1e6 / (double)b->count : 0.0, hogs ? ", CPU hogs beside" : "",
         (unsigned long long)b->sleeps, (unsigned long long)b->window, (unsigned long long)a->sleeps,
         (unsigned long long)(threads ? a->window - b->window : a->window));
    if (!e && b->sleeps == 0)
        return "the provider never slept: the sleep path was not exercised";
    return e;
}

/* The brk_wait_any ping-pong alone and beside two CPU hogs, between processes or threads. */
static void run_wait_any_pingpongs(ctl_t *ctl, int threads)
{
    char name[160];
    uint64_t rounds = scaled(50000, 5000);
    for (int hogs = 0; hogs <= 2; hogs += 2) {
        snprintf(name, sizeof name, "%s wait_any: %llu ping-pong rounds between 2 %s%s", threads ? "threads" : "wakeup",
                 (unsigned long long)rounds, threads ? "threads" : "processes",
                 hogs ? " beside 2 CPU hogs" : ", none lost");
        RUN(name, t_wait_any_pingpong(ctl, threads, hogs, rounds));
    }
}

static void mode_wakeup(void)
{
    ctl_t *ctl = ctl_new();
    char name[160];
    job_t j = job_init(ctl, K_SPSC, 1, scaled(5000, 200));
    snprintf(name, sizeof name, "wakeup futex: %llu ping-pong round trips between 2 processes, spin_ns 0",
             (unsigned long long)j.n);
    RUN(name, pingpong(&j, 0, 0));
    snprintf(name, sizeof name, "wakeup eventfd: %llu ping-pong round trips between 2 processes, spin_ns 0",
             (unsigned long long)j.n);
    RUN(name, pingpong(&j, 0, 1));
    RUN("wakeup spsc: a record published between the consumer's last check and its FUTEX_WAIT wakes it",
        t_publish_in_window(K_SPSC, 0));
    RUN("wakeup bcast: a record published between a consumer's last check and its FUTEX_WAIT wakes it",
        t_publish_in_window(K_BCAST, 0));
    RUN("wakeup bcast: a second consumer sleeping and waking in that window does not swallow the first one's wake-up",
        t_publish_in_window(K_BCAST, 1));
    RUN("wakeup wait_any: a record published on the second ring in the window before futex_waitv wakes the waiter",
        t_wait_any_window(0));
    RUN("wakeup wait_any: a bell rung in that window wakes the waiter", t_wait_any_window(1));
    run_wait_any_pingpongs(ctl, 0);
    munmap(ctl, sizeof *ctl);
}

static void mode_threads(void)
{
    /* Lossy rings are left out here on purpose: a lossy consumer reads bytes
     * the producer may be overwriting at the same time and decides afterwards
     * (seqlock style, brk_lossy_intact) whether its copy is good. That read
     * races by design and ThreadSanitizer would rightly report it. */
    ctl_t *ctl = ctl_new();
    char name[160];
    job_t j = job_init(ctl, K_SPSC, 1, scaled(1000000, 5000));
    snprintf(name, sizeof name, "threads spsc: %llu records of 0..2000 bytes", (unsigned long long)j.n);
    RUN(name, stream(&j, 1, 65536));
    j = job_init(ctl, K_BCAST, 2, scaled(300000, 3000));
    snprintf(name, sizeof name, "threads bcast lossless: %llu records, 2 consumers", (unsigned long long)j.n);
    RUN(name, stream(&j, 1, 65536));
    j = job_init(ctl, K_SPSC, 1, scaled(2000, 200));
    snprintf(name, sizeof name, "threads wakeup futex: %llu ping-pong round trips, spin_ns 0",
             (unsigned long long)j.n);
    RUN(name, pingpong(&j, 1, 0));
    uint64_t n_any = scaled(100000, 2000);
    snprintf(name, sizeof name, "threads wait_any: %llu records on 2 rings and bells, from another thread",
             (unsigned long long)n_any);
    RUN(name, t_wait_any_threads(n_any));
    run_wait_any_pingpongs(ctl, 1);
    munmap(ctl, sizeof *ctl);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    const char *sc = getenv("BRK_TEST_SCALE");
    if (sc && *sc) {
        long v = strtol(sc, NULL, 10);
        g_scale = v > 0 ? (uint64_t)v : 1;
    }
    resolve_syscall();
    alarm(280); /* watchdog: SIGALRM ends a hung run (pytest allows 300 s) */
    setvbuf(stdout, NULL, _IOLBF, 0);
    double t0 = now_s();
    if (!strcmp(mode, "unit"))
        mode_unit();
    else if (!strcmp(mode, "corrupt"))
        mode_corrupt();
    else if (!strcmp(mode, "procs"))
        mode_procs();
    else if (!strcmp(mode, "wakeup"))
        mode_wakeup();
    else if (!strcmp(mode, "threads"))
        mode_threads();
    else {
        fprintf(stderr, "usage: %s unit|corrupt|procs|wakeup|threads  (env BRK_TEST_SCALE=K divides counts)\n",
                argv[0]);
        return 2;
    }
    printf("mode %s, scale %llu: %.2f s\n", mode, (unsigned long long)g_scale, now_s() - t0);
    printf("%d passed, %d failed\n", g_pass, g_fail);
    fflush(stdout);
    return g_fail ? 1 : 0;
}
