/* brk_ring.c: lock-free SPSC and broadcast rings of variable-length records in shared memory. */

/*
 * Trust: everything in the segment can be scribbled on by another process.
 * The configuration is copied into the process-local handle once, at attach,
 * and checked against the layout this file would have produced; afterwards
 * only the handle's copy is used. Each side writes its own position to shared
 * memory but never reads it back. The other side's position and every record
 * header are copied out once and checked before use. A failed check returns
 * BRK_CORRUPT; nothing here loops without a bound or indexes outside the ring.
 *
 * Waiting (spin, then sleep) and why no wake-up is lost: see brk_wait().
 */

#define _GNU_SOURCE
#include <stdint.h>
#include <stddef.h>
#include <stdatomic.h>
#include <string.h>
#include <errno.h>
#include <limits.h>
#include <time.h>
#include <poll.h>
#include <sched.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <linux/futex.h>

#include "brk_ring.h"

/* futex_waitv came with Linux 5.16. Kernel headers older than that lack its number, its struct and
 * FUTEX_32: they are defined here as the kernel's ABI has them, so that such a build image compiles,
 * and a kernel older than 5.16 answers ENOSYS, which brk_wait_any falls back from at run time. */
#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449 /* the same on every architecture (the generic syscall table) */
#endif
#ifndef FUTEX_32
#define FUTEX_32 2
struct futex_waitv {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t __reserved;
};
#endif

/* ---- layout checks ----------------------------------------------------- */

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free to work across processes");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free to work across processes");
_Static_assert(sizeof(_Atomic uint64_t) == 8 && sizeof(_Atomic uint32_t) == 4, "atomics are plain-sized");

_Static_assert(sizeof(struct brk_seg_hdr) == 256, "segment header size");
_Static_assert(offsetof(struct brk_seg_hdr, magic) == 0, "seg magic");
_Static_assert(offsetof(struct brk_seg_hdr, abi_version) == 8, "seg abi_version");
_Static_assert(offsetof(struct brk_seg_hdr, header_size) == 12, "seg header_size");
_Static_assert(offsetof(struct brk_seg_hdr, features) == 16, "seg features");
_Static_assert(offsetof(struct brk_seg_hdr, total_size) == 24, "seg total_size");
_Static_assert(offsetof(struct brk_seg_hdr, creator_pid) == 32, "seg creator_pid");
_Static_assert(offsetof(struct brk_seg_hdr, n_rings) == 36, "seg n_rings");
_Static_assert(offsetof(struct brk_seg_hdr, creator_start) == 40, "seg creator_start");
_Static_assert(offsetof(struct brk_seg_hdr, ring_offset) == 48, "seg ring_offset");
_Static_assert(offsetof(struct brk_seg_hdr, ring_size) == 80, "seg ring_size");
_Static_assert(offsetof(struct brk_seg_hdr, nonce) == 112, "seg nonce");
_Static_assert(offsetof(struct brk_seg_hdr, ready) == 144, "seg ready");

_Static_assert(sizeof(struct brk_ring_hdr) == 640, "ring header size");
_Static_assert(offsetof(struct brk_ring_hdr, kind) == 0, "ring kind");
_Static_assert(offsetof(struct brk_ring_hdr, flags) == 4, "ring flags");
_Static_assert(offsetof(struct brk_ring_hdr, capacity) == 8, "ring capacity");
_Static_assert(offsetof(struct brk_ring_hdr, max_record) == 16, "ring max_record");
_Static_assert(offsetof(struct brk_ring_hdr, data_offset) == 24, "ring data_offset");
_Static_assert(offsetof(struct brk_ring_hdr, slots_offset) == 32, "ring slots_offset");
_Static_assert(offsetof(struct brk_ring_hdr, max_consumers) == 40, "ring max_consumers");
_Static_assert(offsetof(struct brk_ring_hdr, slot_size) == 44, "ring slot_size");
_Static_assert(offsetof(struct brk_ring_hdr, tail) == 128, "producer line");
_Static_assert(offsetof(struct brk_ring_hdr, reserve) == 136, "ring reserve");
_Static_assert(offsetof(struct brk_ring_hdr, oldest) == 144, "ring oldest");
_Static_assert(offsetof(struct brk_ring_hdr, producer_pid) == 152, "ring producer_pid");
_Static_assert(offsetof(struct brk_ring_hdr, producer_start) == 160, "ring producer_start");
_Static_assert(offsetof(struct brk_ring_hdr, producer_cpu) == 168, "ring producer_cpu");
_Static_assert(offsetof(struct brk_ring_hdr, head) == 256, "consumer line");
_Static_assert(offsetof(struct brk_ring_hdr, consumer_pid) == 264, "ring consumer_pid");
_Static_assert(offsetof(struct brk_ring_hdr, consumer_start) == 272, "ring consumer_start");
_Static_assert(offsetof(struct brk_ring_hdr, consumer_cpu) == 280, "ring consumer_cpu");
_Static_assert(offsetof(struct brk_ring_hdr, cons_wait) == 384, "consumer wait line");
_Static_assert(offsetof(struct brk_ring_hdr, prod_wait) == 512, "producer wait line");

_Static_assert(sizeof(struct brk_slot) == 128, "slot size");
_Static_assert(offsetof(struct brk_slot, state) == 0, "slot state");
_Static_assert(offsetof(struct brk_slot, pid) == 4, "slot pid");
_Static_assert(offsetof(struct brk_slot, start) == 8, "slot start");
_Static_assert(offsetof(struct brk_slot, head) == 16, "slot head");
_Static_assert(offsetof(struct brk_slot, lost) == 24, "slot lost");

_Static_assert(sizeof(struct brk_rec) == BRK_REC_HDR, "record header size");
_Static_assert(offsetof(struct brk_rec, len) == 0, "rec len");
_Static_assert(offsetof(struct brk_rec, type) == 4, "rec type");
_Static_assert(offsetof(struct brk_rec, seq) == 8, "rec seq");

#define BRK_LINE 128u
#define BRK_NO_LIMIT UINT64_MAX

/* ---- small helpers ----------------------------------------------------- */

static inline uint64_t brk_align(uint64_t n, uint64_t a) { return (n + a - 1) & ~(a - 1); }

static inline uint64_t brk_rec_size(uint64_t len) { return BRK_REC_HDR + brk_align(len, 8); }

static inline int brk_is_pow2(uint64_t x) { return x && !(x & (x - 1)); }

static inline uint64_t brk_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void brk_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline int brk_is_lossy(const brk_ring *r) { return r->kind == BRK_KIND_BCAST && (r->flags & BRK_FLAG_LOSSY); }


/* ---- futex and eventfd ------------------------------------------------- */

/*
 * Where the other side runs decides how to wait for it.
 *
 * Each side leaves a hint of the CPU it last ran on in its own line of the
 * ring header: the producer at every publish (producer_cpu), an SPSC consumer
 * at every release (consumer_cpu). A waiter compares the other side's hint
 * with its own CPU (sched_getcpu, a few ns through rseq):
 *
 * - Another CPU (or no hint yet): spin. The answer comes from elsewhere and a
 *   spin catches it without a system call on either side.
 * - This CPU: the other side can only run while we do not. Yield between
 *   looks from the start, and right after we woke it (it is then most likely
 *   queued behind us) sleep at once: spinning there made a sleeping round
 *   trip take ~90-140 us against ~25 us without it (2 cores, one busy).
 *
 * Before the hint, the second rule applied to every waiter that had woken the
 * other side in the last 200 us. Two processes on two idle CPUs could then
 * fall into a state they never left: each woke the other, slept at once, and
 * was woken in turn, so every message paid two futex calls and two wake-ups
 * (a 64 B round trip of 14-50 us instead of ~0.5 us, for as long as the pair
 * ran). The hint keeps the rule where it helps: both processes on one CPU
 * (pinned, one vCPU, or stacked there by the scheduler while the other CPU
 * is busy), where sleeping or yielding is the fastest hand-over there is.
 * A wrong hint costs one slow hand-over: the side that runs next writes a
 * fresh one. Only equality with our own CPU is ever asked of it, so whatever
 * a peer writes there cannot do more than that.
 */
static _Thread_local uint64_t brk_woke_at; /* when this thread last woke a sleeper with a system call */
#define BRK_NO_SPIN_AFTER_WAKE_NS 200000u

/* 1 + the CPU this thread runs on, 0 if unknown: what the hints hold. */
static inline uint32_t brk_cpu_hint(void)
{
    int c = sched_getcpu();
    return c < 0 ? 0 : (uint32_t)c + 1;
}

/*
 * A waiter spins on its own for r->pure_spin_ns (BRK_PURE_SPIN_NS unless the
 * Python layer says otherwise), then calls sched_yield() between looks until
 * its spin time is up: an answer mostly comes within the pure spin, which
 * keeps its latency, and a peer we did not know to share our CPU still gets
 * it. A process allowed on one CPU only yields at once (pure_spin_ns 0, set
 * by src/shmbroker/core/ring.py), as does a waiter whose peer's hint is its own CPU.
 */
#define BRK_PURE_SPIN_NS 20000u

/* How a wait spins, from the other side's hint (peer_cpu, 0 unknown): the
 * pure spin before yielding, and whether to skip the spin altogether. */
typedef struct {
    uint64_t pure;
    int no_spin;
} brk_spin_plan;

static inline brk_spin_plan brk_plan(brk_ring *r, uint32_t peer_cpu, uint64_t now)
{
    brk_spin_plan p = { r->pure_spin_ns, 0 };
    if (peer_cpu && peer_cpu == brk_cpu_hint()) {
        r->shared_cpu_waits++;
        p.pure = 0;
        if (brk_woke_at && now - brk_woke_at < BRK_NO_SPIN_AFTER_WAKE_NS)
            p.no_spin = 1;
    }
    return p;
}

/* The other side's hint for a waiter on r: the producer's for a consumer; the
 * consumer's for an SPSC producer; none for a broadcast producer (many). relaxed:
 * a hint, ordered with nothing; any value only picks one of two ways to wait. */
static inline uint32_t brk_peer_cpu(const brk_ring *r, int consumer)
{
    if (consumer)
        return atomic_load_explicit(&r->hdr->producer_cpu, memory_order_relaxed);
    return r->kind == BRK_KIND_SPSC ? atomic_load_explicit(&r->hdr->consumer_cpu, memory_order_relaxed) : 0;
}

/* Shared (not PRIVATE) futexes: the word lives in a MAP_SHARED segment. */
static int brk_futex_wait(_Atomic uint32_t *word, uint32_t val, uint64_t timeout_ns)
{
    struct timespec ts = { (time_t)(timeout_ns / 1000000000u), (long)(timeout_ns % 1000000000u) };
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, val, &ts, NULL, 0);
    if (rc == 0 || errno == EAGAIN || errno == EINTR)
        return 0;
    if (errno == ETIMEDOUT)
        return BRK_TIMEOUT;
    return -errno;
}

static void brk_futex_wake(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static int brk_eventfd_wait(int fd, uint64_t timeout_ns)
{
    struct pollfd p = { fd, POLLIN, 0 };
    struct timespec ts = { (time_t)(timeout_ns / 1000000000u), (long)(timeout_ns % 1000000000u) };
    int rc = ppoll(&p, 1, &ts, NULL);
    if (rc < 0)
        return errno == EINTR ? 0 : -errno;
    if (rc == 0)
        return BRK_TIMEOUT;
    uint64_t v;
    /* Drain the counter; the fd is non-blocking, so a racing reader costs nothing. */
    if (read(fd, &v, sizeof v) < 0 && errno != EAGAIN)
        return -errno;
    return 0;
}

int brk_eventfd(void)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int brk_close_fd(int fd)
{
    return close(fd) < 0 ? -errno : 0;
}

/*
 * Wake the other side if it announced that it sleeps. Call only right after a
 * seq_cst store of our position (tail or head).
 *
 * The flag is loaded seq_cst: it pairs with the sleeper's seq_cst store of the
 * flag in brk_wait(). The sleeper stores the flag, then loads our position;
 * we store our position, then load the flag; all four are seq_cst, so in their
 * single total order at least one of the two loads comes after the other
 * side's store: either the sleeper sees our progress and does not sleep, or
 * we see its flag and wake it. That is the no-lost-wake-up argument.
 */
static void brk_wake(brk_ring *r, _Atomic uint32_t *flag)
{
    if (atomic_load_explicit(flag, memory_order_seq_cst) == BRK_WAIT_NONE)
        return;
    /* acq_rel exchange: of several wakers only the one that clears the flag
     * issues the system call. */
    uint32_t how = atomic_exchange_explicit(flag, BRK_WAIT_NONE, memory_order_acq_rel);
    if (how == BRK_WAIT_NONE)
        return;
    if (how == BRK_WAIT_EVENTFD && r->efd_notify >= 0) {
        uint64_t one = 1;
        ssize_t w = write(r->efd_notify, &one, sizeof one);
        (void)w; /* EAGAIN means the counter is already non-zero: the sleeper wakes anyway */
    } else {
        /* BRK_WAIT_FUTEX, or an eventfd sleeper whose fd we were not given:
         * the futex wake is harmless and the sleeper's timeout bounds the rest. */
        brk_futex_wake(flag);
    }
    brk_woke_at = brk_now_ns();
    r->wakeups++;
}

/* ---- segments ---------------------------------------------------------- */

static int brk_spec_check(const brk_ring_spec *s)
{
    if (s->kind != BRK_KIND_SPSC && s->kind != BRK_KIND_BCAST)
        return -EINVAL;
    if (!brk_is_pow2(s->capacity) || s->capacity < BRK_MIN_CAPACITY || s->capacity > BRK_MAX_CAPACITY)
        return -EINVAL;
    if (s->kind == BRK_KIND_SPSC && (s->flags != 0 || s->max_consumers != 0))
        return -EINVAL;
    if (s->kind == BRK_KIND_BCAST &&
        ((s->flags & ~(uint32_t)BRK_FLAG_LOSSY) || s->max_consumers < 1 || s->max_consumers > BRK_MAX_CONSUMERS))
        return -EINVAL;
    return 0;
}

/* Bytes of one ring: header, slots, data, each start on a line. */
static void brk_ring_layout(const brk_ring_spec *s, uint64_t *slots_off, uint64_t *data_off, uint64_t *size)
{
    uint64_t slots = sizeof(struct brk_ring_hdr);
    uint64_t data = brk_align(slots + (uint64_t)s->max_consumers * sizeof(struct brk_slot), BRK_LINE);
    *slots_off = s->kind == BRK_KIND_BCAST ? slots : 0;
    *data_off = data;
    *size = data + s->capacity;
}

static uint64_t brk_max_record(uint64_t capacity)
{
    /* Half the ring less a header: a record and the worst pad in front of it
     * (smaller than the record) then always fit in an empty ring. */
    return capacity / 2 - BRK_REC_HDR;
}

int brk_seg_layout(const brk_ring_spec *specs, uint32_t n, uint64_t *offsets, uint64_t *sizes, uint64_t *total)
{
    if (n < 1 || n > BRK_MAX_RINGS)
        return -EINVAL;
    uint64_t at = sizeof(struct brk_seg_hdr);
    for (uint32_t i = 0; i < n; i++) {
        int rc = brk_spec_check(&specs[i]);
        if (rc)
            return rc;
        uint64_t so, dof, size;
        brk_ring_layout(&specs[i], &so, &dof, &size);
        at = brk_align(at, BRK_LINE);
        offsets[i] = at;
        sizes[i] = size;
        at += size;
    }
    *total = brk_align(at, 4096);
    return 0;
}

int brk_seg_format(void *base, uint64_t total, const brk_ring_spec *specs, uint32_t n, int32_t pid, uint64_t start,
                   const uint8_t *nonce)
{
    uint64_t offsets[BRK_MAX_RINGS], sizes[BRK_MAX_RINGS], want;
    int rc = brk_seg_layout(specs, n, offsets, sizes, &want);
    if (rc)
        return rc;
    if (want != total)
        return -EINVAL;
    struct brk_seg_hdr *sh = base;
    memset(sh, 0, sizeof *sh);
    sh->abi_version = BRK_ABI_VERSION;
    sh->header_size = sizeof *sh;
    sh->total_size = total;
    sh->creator_pid = pid;
    sh->creator_start = start;
    sh->n_rings = n;
    if (nonce)
        memcpy(sh->nonce, nonce, BRK_NONCE_BYTES);
    for (uint32_t i = 0; i < n; i++) {
        sh->ring_offset[i] = offsets[i];
        sh->ring_size[i] = sizes[i];
        unsigned char *rb = (unsigned char *)base + offsets[i];
        uint64_t so, dof, size;
        brk_ring_layout(&specs[i], &so, &dof, &size);
        /* Headers and slots start zeroed (positions 0, slots FREE, nobody
         * waiting); the data area needs no clearing. */
        memset(rb, 0, dof);
        struct brk_ring_hdr *h = (struct brk_ring_hdr *)rb;
        h->kind = specs[i].kind;
        h->flags = specs[i].flags;
        h->capacity = specs[i].capacity;
        h->max_record = brk_max_record(specs[i].capacity);
        h->data_offset = dof;
        h->slots_offset = so;
        h->max_consumers = specs[i].max_consumers;
        h->slot_size = specs[i].kind == BRK_KIND_BCAST ? sizeof(struct brk_slot) : 0;
    }
    sh->magic = BRK_SEG_MAGIC;
    /* release: pairs with the acquire load in brk_seg_check, so whoever sees
     * ready == 1 also sees every field written above. */
    atomic_store_explicit(&sh->ready, 1, memory_order_release);
    return 0;
}

int brk_seg_check(const void *base, uint64_t mapped, struct brk_seg_hdr *out)
{
    if (mapped < sizeof(struct brk_seg_hdr))
        return BRK_BADSEG;
    struct brk_seg_hdr *sh = (struct brk_seg_hdr *)base;
    /* acquire: pairs with the release store in brk_seg_format. */
    if (atomic_load_explicit(&sh->ready, memory_order_acquire) != 1)
        return BRK_NOTREADY;
    memcpy(out, sh, sizeof *out);
    if (out->magic != BRK_SEG_MAGIC || out->abi_version != BRK_ABI_VERSION || out->header_size != sizeof *out)
        return BRK_BADSEG;
    if (out->total_size != mapped || out->n_rings < 1 || out->n_rings > BRK_MAX_RINGS)
        return BRK_BADSEG;
    uint64_t at = sizeof(struct brk_seg_hdr);
    for (uint32_t i = 0; i < out->n_rings; i++) {
        uint64_t off = out->ring_offset[i], size = out->ring_size[i];
        if (off < at || off % BRK_LINE || size < sizeof(struct brk_ring_hdr) || size > mapped || off > mapped - size)
            return BRK_BADSEG;
        at = off + size;
    }
    return 0;
}

/* ---- waking ------------------------------------------------------------ */

/*
 * Broadcast consumers share one futex word, cons_wait, used as an epoch: a
 * sleeper counts itself in cons_sleepers, reads the epoch, checks for work,
 * and waits for the epoch to change; a waker that sees a sleeper bumps the
 * epoch and wakes them all. A one-value flag would not do for many sleepers:
 * a second sleeper re-setting the flag after a wake-up makes the first one's
 * wait match again, and it sleeps through the wake-up (the ABA of a flag).
 *
 * Call only right after a seq_cst store (tail, producer_pid or a slot state):
 * the seq_cst load of cons_sleepers pairs with the sleeper's seq_cst
 * increment in brk_wait: either it sees our store or we see it counted.
 */
static void brk_wake_consumers(brk_ring *r)
{
    if (r->kind == BRK_KIND_SPSC) {
        brk_wake(r, &r->hdr->cons_wait);
        return;
    }
    /* Two kinds of sleeper, each counted on its own: cons_sleepers, those on the futex (brk_wait),
     * and cons_pollers, those in poll() on the producer's doorbell (brk_arm, a server relaying the
     * ring). Each seq_cst load pairs with its sleepers' seq_cst increment, made before they look
     * at the ring: either we see one counted, or it sees our store. */
    uint32_t sleepers = atomic_load_explicit(&r->hdr->cons_sleepers, memory_order_seq_cst);
    uint32_t pollers = atomic_load_explicit(&r->hdr->cons_pollers, memory_order_seq_cst);
    if (sleepers == 0 && pollers == 0)
        return;
    if (sleepers) {
        /* seq_cst increment: a sleeper that reads the new epoch also sees the
         * store we made before it (see brk_wait); one that read the old epoch
         * is woken, or finds the word changed when it calls FUTEX_WAIT. */
        atomic_fetch_add_explicit(&r->hdr->cons_wait, 1, memory_order_seq_cst);
        brk_futex_wake(&r->hdr->cons_wait);
    }
    if (r->efd_notify >= 0 && pollers) {
        /* the pollers' doorbell is this eventfd; nobody polling, no write (a direct subscriber
         * asleep on the futex does not ring the relaying server's doorbell) */
        uint64_t one = 1;
        ssize_t w = write(r->efd_notify, &one, sizeof one);
        (void)w; /* EAGAIN: the counter is already non-zero, the poller wakes anyway */
    }
    brk_woke_at = brk_now_ns();
    r->wakeups++;
}

/* ---- attach and detach ------------------------------------------------- */

int brk_ring_attach(brk_ring *r, void *base, uint64_t mapped, uint32_t index, uint32_t role, int32_t pid,
                    uint64_t start)
{
    struct brk_seg_hdr sh;
    memset(r, 0, sizeof *r);
    r->efd_notify = r->efd_wait = -1;
    if (role != BRK_ROLE_PRODUCER && role != BRK_ROLE_CONSUMER)
        return -EINVAL;
    int rc = brk_seg_check(base, mapped, &sh);
    if (rc)
        return rc;
    if (index >= sh.n_rings)
        return -EINVAL;
    struct brk_ring_hdr *h = (struct brk_ring_hdr *)((unsigned char *)base + sh.ring_offset[index]);
    /* Copy the configuration once and accept it only if it is exactly what
     * brk_ring_layout would produce for the same kind, flags and capacity. */
    brk_ring_spec s = { h->kind, h->flags, h->capacity, h->max_consumers, 0 };
    uint64_t max_record = h->max_record, data_off = h->data_offset, slots_off = h->slots_offset;
    uint32_t slot_size = h->slot_size;
    if (brk_spec_check(&s))
        return BRK_BADSEG;
    uint64_t so, dof, size;
    brk_ring_layout(&s, &so, &dof, &size);
    if (size != sh.ring_size[index] || dof != data_off || so != slots_off || max_record != brk_max_record(s.capacity) ||
        slot_size != (s.kind == BRK_KIND_BCAST ? sizeof(struct brk_slot) : 0))
        return BRK_BADSEG;

    r->hdr = h;
    r->data = (unsigned char *)h + dof;
    r->capacity = s.capacity;
    r->mask = s.capacity - 1;
    r->max_record = max_record;
    r->kind = s.kind;
    r->flags = s.flags;
    r->role = role;
    r->max_consumers = s.max_consumers;
    r->spin_ns = 50000;
    r->pure_spin_ns = BRK_PURE_SPIN_NS;

    if (role == BRK_ROLE_PRODUCER) {
        /* One producer for the ring's life: the pid word goes 0 -> pid once,
         * and to BRK_PID_CLOSED at detach. acq_rel CAS: acquire orders us
         * after the creator's formatting, release publishes our claim to
         * consumers that load producer_pid (brk_next, liveness checks). */
        int32_t expect = 0;
        if (!atomic_compare_exchange_strong_explicit(&h->producer_pid, &expect, pid, memory_order_acq_rel,
                                                     memory_order_acquire))
            return -EBUSY;
        h->producer_start = start;
        /* relaxed: we are the only writer of tail; it is 0 on a ring nobody produced into. */
        uint64_t t = atomic_load_explicit(&h->tail, memory_order_relaxed);
        if (t != 0) {
            /* release: give the ring back as we found it (pairs with the CAS above) */
            atomic_store_explicit(&h->producer_pid, 0, memory_order_release);
            r->hdr = NULL;
            return BRK_CORRUPT;
        }
        r->limit = s.capacity; /* lossy: oldest (0) + capacity; others: head (0) + capacity */
        return 0;
    }

    if (s.kind == BRK_KIND_SPSC) {
        int32_t expect = 0;
        /* acq_rel CAS, as for the producer: one consumer at a time; acquire
         * also orders us after the previous consumer's release of the pid. */
        if (!atomic_compare_exchange_strong_explicit(&h->consumer_pid, &expect, pid, memory_order_acq_rel,
                                                     memory_order_acquire))
            return -EBUSY;
        h->consumer_start = start;
        /* acquire: pairs with the previous consumer's seq_cst (release) store of head */
        uint64_t hd = atomic_load_explicit(&h->head, memory_order_acquire);
        /* acquire: pairs with the producer's seq_cst store in brk_publish */
        uint64_t t = atomic_load_explicit(&h->tail, memory_order_acquire);
        if (t - hd > s.capacity || (hd & 7)) {
            /* release: pairs with the next attacher's CAS */
            atomic_store_explicit(&h->consumer_pid, 0, memory_order_release);
            r->hdr = NULL;
            return BRK_CORRUPT;
        }
        r->head = r->avail = hd;
        r->lap_pending = hd ? 2 : 0;
        return 0;
    }
    /* Broadcast consumers take a slot with brk_bcast_join. */
    r->slot_index = UINT32_MAX;
    (void)pid;
    (void)start;
    return 0;
}

int brk_ring_detach(brk_ring *r)
{
    if (!r->hdr)
        return 0;
    if (r->role == BRK_ROLE_PRODUCER) {
        r->claimed = 0;
        /* seq_cst: consumers that sleep must see it, like a tail store
         * (brk_wake_consumers); release for the tail they read after it. */
        atomic_store_explicit(&r->hdr->producer_pid, BRK_PID_CLOSED, memory_order_seq_cst);
        brk_wake_consumers(r);
    } else if (r->kind == BRK_KIND_SPSC) {
        r->held = 0;
        /* seq_cst: a producer sleeping for room must see that nobody will
         * make room (pairs with the flag load in brk_wake); release for the
         * next attacher's CAS. */
        atomic_store_explicit(&r->hdr->consumer_pid, 0, memory_order_seq_cst);
        brk_wake(r, &r->hdr->prod_wait);
    } else {
        brk_bcast_leave(r);
    }
    r->hdr = NULL;
    return 0;
}

/* ---- producer ---------------------------------------------------------- */

static inline struct brk_slot *brk_slot_at(const brk_ring *r, uint32_t i)
{
    return (struct brk_slot *)((unsigned char *)r->hdr + sizeof(struct brk_ring_hdr)) + i;
}

/* Lossless broadcast: the limit is the slowest active consumer plus capacity,
 * measured from the published tail (a joiner starts from a published tail). */
static int brk_bcast_limit(brk_ring *r)
{
    /* seq_cst fence: pairs with the fence in brk_bcast_join. If this scan
     * does not see a joiner's slot, the joiner's later tail load sees at least
     * the tail we base the limit on, so it never starts behind our limit. */
    atomic_thread_fence(memory_order_seq_cst);
    uint64_t behind = 0; /* largest distance tail - head among consumers */
    for (uint32_t i = 0; i < r->max_consumers; i++) {
        struct brk_slot *sl = brk_slot_at(r, i);
        /* acquire: pairs with the release CAS to ACTIVE in brk_bcast_join,
         * so the head we load next is the joiner's. */
        uint32_t word = atomic_load_explicit(&sl->state, memory_order_acquire);
        uint32_t st = word & BRK_SLOT_MASK;
        if (st == BRK_SLOT_JOINING)
            return BRK_FULL; /* it wakes us when it is active; a dead one gets evicted */
        if (st != BRK_SLOT_ACTIVE)
            continue;
        /* acquire: pairs with the consumer's seq_cst (release) store of its
         * head: its reads of the records before head happen-before we
         * overwrite them. */
        uint64_t h = atomic_load_explicit(&sl->head, memory_order_acquire);
        uint64_t d = r->tail - h;
        if (d > r->capacity || (h & 7)) {
            /* A cursor that cannot be right: end that consumer, not the topic. */
            brk_bcast_evict(r, i);
            continue;
        }
        if (d > behind)
            behind = d;
    }
    r->limit = r->tail - behind + r->capacity;
    return 0;
}

/* Lossy broadcast: before writing [pos, end), move `oldest` past every record
 * that it overwrites, then announce the overwrite through `reserve`. */
static int brk_lossy_room(brk_ring *r, uint64_t pos, uint64_t end)
{
    uint64_t o = r->limit - r->capacity;
    if (end > o + r->capacity) {
        for (uint64_t steps = 0; end > o + r->capacity; steps++) {
            if (steps > r->capacity / 8 || o >= pos)
                return BRK_CORRUPT;
            uint64_t off = o & r->mask, contig = r->capacity - off;
            if (contig < BRK_REC_HDR) {
                o += contig;
                continue;
            }
            struct brk_rec h;
            memcpy(&h, r->data + off, sizeof h);
            uint64_t size = h.type == BRK_REC_PAD ? (uint64_t)h.len + BRK_REC_HDR : brk_rec_size(h.len);
            if ((h.type != BRK_REC_PAD && h.type != BRK_REC_DATA) || size > contig ||
                (h.type == BRK_REC_PAD && size != contig))
                return BRK_CORRUPT;
            o += size;
        }
        r->limit = o + r->capacity;
        /* release: a consumer that acquires oldest sees the record headers up
         * to it as we left them. Stored before reserve (below), so whoever
         * acquires a reserve value also sees an oldest at least this new. */
        atomic_store_explicit(&r->hdr->oldest, o, memory_order_release);
    }
    if (end > r->reserved) {
        /* Never lower: an aborted or shortened claim may already have written
         * bytes up to the old value. Release store, then a release fence
         * before the data writes: the seqlock pattern. A consumer that copies
         * bytes we are about to write and then (after an acquire fence) loads
         * reserve sees this value and knows its copy may be torn. Pairs with
         * the fence + load in brk_lossy_intact. */
        r->reserved = end;
        atomic_store_explicit(&r->hdr->reserve, end, memory_order_release);
        atomic_thread_fence(memory_order_release);
    }
    return 0;
}

/* How often a producer with an alive descriptor looks at it (brk_alive). */
#define BRK_ALIVE_NS 100000000ull

/* A producer whose reader never waits for it (a server relaying a publisher's ring) would not
 * notice that reader die: every BRK_ALIVE_NS its sends poll() a descriptor that hangs up when it
 * does (the session's socket), and from then on fail (BRK_INTERRUPTED, as after brk_interrupt).
 * A coarse clock read per send (vDSO, a few ns); a poll() ten times a second at most. */
static int brk_alive(brk_ring *r)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    if (now < r->alive_next)
        return 0;
    r->alive_next = now + BRK_ALIVE_NS;
    struct pollfd p = { r->alive_fd1 - 1, POLLRDHUP, 0 };
    if (poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))) {
        /* relaxed: our own thread reads it next (brk_room); another thread's wait sees it at its
         * next look (the flag is sticky) */
        atomic_store_explicit(&r->interrupt, 1, memory_order_relaxed);
        return BRK_INTERRUPTED;
    }
    return 0;
}

/* Find room for a payload of len bytes at pos (the tail, or further on in a
 * batch that has not been published yet); sets claim_pos/claim_pad. */
static inline int brk_room(brk_ring *r, uint64_t pos, uint64_t len)
{
    /* relaxed: a sticky flag that another thread of ours sets (brk_interrupt's seq_cst store) when
     * the ring closes, or brk_alive when the reader's process is gone: every send after fails with
     * BRK_INTERRUPTED. No data is ordered by it; it is seen at the latest a few sends later. */
    if (atomic_load_explicit(&r->interrupt, memory_order_relaxed))
        return BRK_INTERRUPTED;
    if (r->alive_fd1 > 0) {
        int rc = brk_alive(r);
        if (rc)
            return rc;
    }
    if (len > r->max_record)
        return BRK_TOOBIG;
    uint64_t size = brk_rec_size(len);
    uint64_t contig = r->capacity - (pos & r->mask);
    uint64_t pad = size > contig ? contig : 0;
    uint64_t end = pos + pad + size;
    if (brk_is_lossy(r)) {
        int rc = brk_lossy_room(r, pos, end);
        if (rc)
            return rc;
    } else if (end > r->limit) {
        if (r->kind == BRK_KIND_SPSC) {
            /* acquire: pairs with the consumer's seq_cst (release) store of
             * head in brk_publish_head: its reads happen-before our overwrite. */
            uint64_t h = atomic_load_explicit(&r->hdr->head, memory_order_acquire);
            if (r->tail - h > r->capacity || (h & 7))
                return BRK_CORRUPT;
            r->limit = h + r->capacity;
        } else {
            int rc = brk_bcast_limit(r);
            if (rc)
                return rc;
        }
        if (end > r->limit)
            return BRK_FULL;
    }
    r->claim_pad = pad;
    r->claim_pos = pos + pad;
    return 0;
}

/* Write the pad (if any) in front of claim_pos and the record's header. */
static inline void brk_write_headers(brk_ring *r, uint64_t len)
{
    if (r->claim_pad >= BRK_REC_HDR) {
        struct brk_rec p = { (uint32_t)(r->claim_pad - BRK_REC_HDR), BRK_REC_PAD, r->seq };
        memcpy(r->data + ((r->claim_pos - r->claim_pad) & r->mask), &p, sizeof p);
    }
    struct brk_rec h = { (uint32_t)len, BRK_REC_DATA, r->seq };
    memcpy(r->data + (r->claim_pos & r->mask), &h, sizeof h);
}

static inline void brk_publish(brk_ring *r, uint64_t end)
{
    r->tail = end;
    /* relaxed: a hint for the consumer's waits (brk_plan), on the line the tail store writes anyway */
    atomic_store_explicit(&r->hdr->producer_cpu, brk_cpu_hint(), memory_order_relaxed);
    /* seq_cst store: as a release it pairs with the consumer's acquire load
     * of tail (the records are visible before the position that covers them);
     * as seq_cst it is our half of the sleeping handshake (brk_wake,
     * brk_wake_consumers). */
    atomic_store_explicit(&r->hdr->tail, end, memory_order_seq_cst);
    brk_wake_consumers(r);
}

int brk_claim(brk_ring *r, uint64_t len)
{
    if (r->role != BRK_ROLE_PRODUCER || !r->hdr)
        return -EINVAL;
    if (r->claimed)
        return BRK_BUSY;
    int rc = brk_room(r, r->tail, len);
    if (rc)
        return rc;
    r->claimed = 1;
    r->claim_max = len;
    r->wptr = r->data + (r->claim_pos & r->mask) + BRK_REC_HDR;
    return 0;
}

int brk_commit(brk_ring *r, uint64_t len)
{
    if (!r->claimed || !r->hdr)
        return -EINVAL;
    if (len > r->claim_max)
        return BRK_TOOBIG;
    brk_write_headers(r, len);
    r->claimed = 0;
    r->seq++;
    r->records++;
    r->bytes += len;
    brk_publish(r, r->claim_pos + brk_rec_size(len));
    return 0;
}

int brk_abort(brk_ring *r)
{
    if (!r->claimed)
        return -EINVAL;
    /* Nothing was published: tail and seq are unchanged, so the claim leaves
     * no trace a consumer can see (lossy: reserve stays where the claim put
     * it, which only makes consumers more careful). */
    r->claimed = 0;
    return 0;
}

int brk_send(brk_ring *r, const void *data, uint64_t len)
{
    if (r->role != BRK_ROLE_PRODUCER || r->claimed || !r->hdr)
        return r->claimed ? BRK_BUSY : -EINVAL;
    int rc = brk_room(r, r->tail, len);
    if (rc)
        return rc;
    brk_write_headers(r, len);
    memcpy(r->data + (r->claim_pos & r->mask) + BRK_REC_HDR, data, len);
    r->seq++;
    r->records++;
    r->bytes += len;
    brk_publish(r, r->claim_pos + brk_rec_size(len));
    return 0;
}

/* Append n records, the i-th from src(i), publishing at least every half
 * ring and once at the end. Shared by brk_send_many and brk_send_vec. */
static int brk_put_many(brk_ring *r, const unsigned char *packed, const void *const *bufs, const uint64_t *lens,
                        uint64_t n)
{
    if (r->role != BRK_ROLE_PRODUCER || r->claimed || !r->hdr)
        return r->claimed ? BRK_BUSY : -EINVAL;
    uint64_t i = 0, end = r->tail, bytes = 0;
    int rc = 0;
    for (; i < n; i++) {
        rc = brk_room(r, end, lens[i]);
        if (rc)
            break;
        brk_write_headers(r, lens[i]);
        const void *src = packed ? (const void *)(packed + bytes) : bufs[i];
        memcpy(r->data + (r->claim_pos & r->mask) + BRK_REC_HDR, src, lens[i]);
        bytes += lens[i];
        end = r->claim_pos + brk_rec_size(lens[i]);
        r->seq++;
        /* Publish at least every half ring: the limits and the lossy walk are
         * reasoned from the published tail, and consumers need not wait. */
        if (end - r->tail >= r->capacity / 2)
            brk_publish(r, end);
    }
    r->records += i;
    r->bytes += bytes;
    r->count = i;
    r->count_bytes = bytes;
    if (end != r->tail)
        brk_publish(r, end);
    /* Some sent is success; the caller compares count with n. */
    return i ? 0 : rc;
}

int brk_send_many(brk_ring *r, const void *data, uint64_t data_len, const uint64_t *lens, uint64_t n)
{
    r->count = r->count_bytes = 0;
    /* The lengths must fit in the data before anything is written. */
    uint64_t total = 0;
    for (uint64_t k = 0; k < n; k++) {
        if (lens[k] > data_len - total)
            return -EINVAL;
        total += lens[k];
    }
    return brk_put_many(r, data, NULL, lens, n);
}

int brk_send_vec(brk_ring *r, const void *const *bufs, const uint64_t *lens, uint64_t n)
{
    r->count = r->count_bytes = 0;
    return brk_put_many(r, NULL, bufs, lens, n);
}

/* ---- consumer ---------------------------------------------------------- */

/* Lossy: after copying anything at pos, is it still what the producer wrote? */
static inline int brk_lossy_intact(brk_ring *r, uint64_t pos)
{
    /* acquire fence then acquire load: the reader half of the seqlock pattern
     * in brk_lossy_room. If our copy saw a byte of an overwrite, this load
     * sees the reserve that announced it. */
    atomic_thread_fence(memory_order_acquire);
    uint64_t rv = atomic_load_explicit(&r->hdr->reserve, memory_order_acquire);
    return rv - pos <= r->capacity;
}

/* Lossy: we were lapped; restart at the oldest record still in the ring. The
 * loss is counted, exactly, from the sequence number of the next record. */
static int brk_recover(brk_ring *r)
{
    /* A consistent snapshot: oldest and reserve, then tail, then both again.
     * The producer stores oldest, then reserve, then tail, for each record;
     * if neither moved while we read tail, the three belong together and the
     * bounds below must hold (a violation is corruption). If one moved, the
     * producer is busy: report a lap, and brk_find tries again.
     * Each load is acquire: it pairs with the producer's release (or
     * seq_cst) store of the same word in brk_lossy_room / brk_publish. */
    uint64_t o = atomic_load_explicit(&r->hdr->oldest, memory_order_acquire);
    uint64_t rv = atomic_load_explicit(&r->hdr->reserve, memory_order_acquire);
    uint64_t t = atomic_load_explicit(&r->hdr->tail, memory_order_acquire);
    if (atomic_load_explicit(&r->hdr->reserve, memory_order_acquire) != rv ||
        atomic_load_explicit(&r->hdr->oldest, memory_order_acquire) != o)
        return BRK_LAPPED;
    /* t <= rv and rv - t <= capacity: reserve runs at most one record ahead
     * of tail; t - o <= capacity: oldest is within a ring of the tail; and a
     * lapped consumer only ever moves forward. Anything else never happens on
     * a healthy ring, and would make every read look lapped, forever. */
    if ((o & 7) || t - o > r->capacity || rv - t > r->capacity || (int64_t)(o - r->head) < 0)
        return BRK_CORRUPT;
    r->head = o;
    r->avail = o;
    if (r->lap_pending != 2)
        r->lap_pending = 1;
    r->laps++;
    return 0;
}

/* Is our broadcast slot still ours? */
static inline int brk_slot_ours(brk_ring *r)
{
    /* acquire fence + relaxed load: if we read bytes the producer wrote after
     * evicting us, we also see the eviction (pairs with the release fence in
     * brk_bcast_evict). */
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(&r->slot->state, memory_order_relaxed) == r->slot_word;
}

/* Locate the next data record at r->head: sets held_pos, held_next, rptr, rlen
 * and the record's seq in *seq. Does not change r->head. */
static int brk_next(brk_ring *r, uint64_t *seq)
{
    uint64_t pos = r->head;
    int lossy = brk_is_lossy(r);
    for (int step = 0; step < 3; step++) {
        if (pos == r->avail) {
            /* acquire: pairs with the producer's seq_cst store in brk_publish */
            uint64_t t = atomic_load_explicit(&r->hdr->tail, memory_order_acquire);
            if ((int64_t)(t - pos) < 0 || (t & 7))
                return BRK_CORRUPT;
            if (t - pos > r->capacity)
                return lossy ? BRK_LAPPED : BRK_CORRUPT;
            r->avail = t;
            if (pos == t) {
                /* acquire: pairs with the seq_cst store in brk_ring_detach,
                 * which follows the producer's last tail store */
                if (atomic_load_explicit(&r->hdr->producer_pid, memory_order_acquire) == BRK_PID_CLOSED &&
                    atomic_load_explicit(&r->hdr->tail, memory_order_acquire) == t) /* same pairing as above */
                    return BRK_CLOSED;
                return BRK_EMPTY;
            }
        }
        uint64_t off = pos & r->mask, contig = r->capacity - off, have = r->avail - pos;
        if (contig < BRK_REC_HDR) {
            /* implicit pad: too little room for a header before the end */
            if (have <= contig)
                return BRK_CORRUPT;
            pos += contig;
            continue;
        }
        struct brk_rec h;
        memcpy(&h, r->data + off, sizeof h); /* copied once, then checked */
        if (lossy && !brk_lossy_intact(r, pos))
            return BRK_LAPPED;
        if (h.type == BRK_REC_PAD) {
            if ((uint64_t)h.len + BRK_REC_HDR != contig || have <= contig)
                return BRK_CORRUPT;
            pos += contig;
            continue;
        }
        uint64_t size = brk_rec_size(h.len);
        if (h.type != BRK_REC_DATA || h.len > r->max_record || size > contig || size > have)
            return BRK_CORRUPT;
        if (r->lap_pending == 0 && h.seq != r->expect)
            return BRK_CORRUPT;
        if (r->lap_pending == 1 && h.seq < r->expect)
            return BRK_CORRUPT;
        *seq = h.seq;
        r->held_pos = pos;
        r->held_next = pos + size;
        r->rptr = r->data + off + BRK_REC_HDR;
        r->rlen = h.len;
        return 0;
    }
    return BRK_CORRUPT;
}

/* The record at held_pos was read intact: count it and any loss before it.
 * Returns 0 or BRK_LOST (data good, last_lost records were lost before it). */
static inline int brk_accept(brk_ring *r, uint64_t seq)
{
    int rc = 0;
    r->last_lost = 0;
    if (r->lap_pending == 1 && seq > r->expect) {
        r->last_lost = seq - r->expect;
        r->lost += r->last_lost;
        /* relaxed: a statistic for other processes, ordered by nothing */
        if (r->slot)
            atomic_store_explicit(&r->slot->lost, r->lost, memory_order_relaxed);
        rc = BRK_LOST;
    }
    r->lap_pending = 0;
    r->expect = seq + 1;
    r->records++;
    r->bytes += r->rlen;
    r->head = r->held_next;
    return rc;
}

/* Publish our head: the space before it may be reused. Stored for every
 * record, so a consumer that has read always leaves room, whatever it does
 * next. */
static inline void brk_publish_head(brk_ring *r)
{
    if (r->kind == BRK_KIND_SPSC) {
        /* relaxed: a hint for the producer's waits (brk_plan), on the line the head store writes anyway */
        atomic_store_explicit(&r->hdr->consumer_cpu, brk_cpu_hint(), memory_order_relaxed);
        /* seq_cst store: as a release it pairs with the producer's acquire
         * load of head in brk_room (our reads happen-before its overwrite);
         * as seq_cst it is our half of the producer's sleeping-flag handshake. */
        atomic_store_explicit(&r->hdr->head, r->head, memory_order_seq_cst);
        brk_wake(r, &r->hdr->prod_wait);
        return;
    }
    /* An evicted consumer writes nothing more into its slot, which stays
     * EVICTED (not reusable) until it leaves or dies: a stale head can
     * never land in a new owner's slot. */
    if (!brk_slot_ours(r))
        return;
    if (brk_is_lossy(r)) {
        /* relaxed: nobody waits on a lossy consumer; the head is a statistic */
        atomic_store_explicit(&r->slot->head, r->head, memory_order_relaxed);
        return;
    }
    /* seq_cst: the same pairing as for SPSC, with brk_bcast_limit's acquire
     * load of the slot head and its seq_cst fence for the sleeping flag */
    atomic_store_explicit(&r->slot->head, r->head, memory_order_seq_cst);
    brk_wake(r, &r->hdr->prod_wait);
}

static inline int brk_consumer_ok(const brk_ring *r)
{
    return r->role == BRK_ROLE_CONSUMER && r->hdr && (r->kind == BRK_KIND_SPSC || r->slot);
}

/* One attempt to find a record, following laps (lossy) a bounded number of
 * times. An evicted broadcast consumer gets BRK_EVICTED, even if the
 * producer's overwrite made what it read look corrupt. */
static int brk_find(brk_ring *r, uint64_t *seq)
{
    for (int tries = 0; tries < 16; tries++) {
        int rc = brk_next(r, seq);
        if (rc == BRK_CORRUPT && r->kind == BRK_KIND_BCAST && !brk_slot_ours(r))
            return BRK_EVICTED;
        if (rc != BRK_LAPPED)
            return rc;
        rc = brk_recover(r);
        if (rc && rc != BRK_LAPPED)
            return rc;
    }
    return BRK_LAPPED;
}

int brk_peek(brk_ring *r)
{
    if (!brk_consumer_ok(r))
        return -EINVAL;
    if (r->held)
        return BRK_BUSY;
    if (r->kind == BRK_KIND_BCAST && !brk_slot_ours(r))
        return BRK_EVICTED;
    uint64_t seq;
    int rc = brk_find(r, &seq);
    if (rc)
        return rc;
    r->held = 1;
    r->held_seq = seq;
    /* Counted at release, when we know the bytes stayed intact; the loss in
     * front of this record is known now. */
    r->last_lost = (r->lap_pending == 1 && seq > r->expect) ? seq - r->expect : 0;
    return r->last_lost ? BRK_LOST : 0;
}

int brk_unpeek(brk_ring *r)
{
    if (!r->held)
        return -EINVAL;
    r->held = 0; /* nothing was counted or published: the record stays next */
    return 0;
}

int brk_release(brk_ring *r)
{
    if (!r->held || !brk_consumer_ok(r))
        return -EINVAL;
    r->held = 0;
    /* Torn (lossy) or evicted: the record is not counted and head stays; the
     * next call finds the lap and counts this record among the lost. */
    if (brk_is_lossy(r) && !brk_lossy_intact(r, r->held_pos))
        return BRK_LAPPED;
    if (r->kind == BRK_KIND_BCAST && !brk_slot_ours(r))
        return BRK_EVICTED;
    brk_accept(r, r->held_seq);
    brk_publish_head(r);
    return 0;
}

int brk_recv(brk_ring *r, void *dst, uint64_t cap)
{
    if (!brk_consumer_ok(r))
        return -EINVAL;
    if (r->held)
        return BRK_BUSY;
    for (int tries = 0; tries < 16; tries++) {
        if (r->kind == BRK_KIND_BCAST && !brk_slot_ours(r))
            return BRK_EVICTED;
        uint64_t seq;
        int rc = brk_find(r, &seq);
        if (rc)
            return rc;
        if (r->rlen > cap)
            return BRK_TOOBIG; /* left in place: r->rlen says how big (checked intact by brk_next) */
        memcpy(dst, r->rptr, r->rlen);
        if (brk_is_lossy(r) && !brk_lossy_intact(r, r->held_pos)) {
            if ((rc = brk_recover(r)) && rc != BRK_LAPPED)
                return rc;
            continue;
        }
        if (r->kind == BRK_KIND_BCAST && !brk_slot_ours(r))
            return BRK_EVICTED;
        rc = brk_accept(r, seq);
        brk_publish_head(r);
        return rc;
    }
    return BRK_LAPPED;
}

int brk_recv_many(brk_ring *r, void *dst, uint64_t cap, uint64_t *lens, uint64_t max)
{
    if (!brk_consumer_ok(r) || max == 0)
        return -EINVAL;
    if (r->held)
        return BRK_BUSY;
    unsigned char *out = dst;
    uint64_t n = 0, used = 0;
    int rc = 0, first_rc = 0;
    r->count = r->count_bytes = 0;
    while (n < max) {
        if (r->kind == BRK_KIND_BCAST && !brk_slot_ours(r)) {
            rc = BRK_EVICTED;
            break;
        }
        uint64_t seq, keep_head = r->head;
        rc = brk_find(r, &seq);
        if (rc)
            break;
        /* A loss is reported before the first record of a batch only: stop
         * here; the next call starts at the recovered head and reports it. */
        if (n && r->lap_pending == 1)
            break;
        if (r->rlen > cap - used) {
            rc = n ? 0 : BRK_TOOBIG;
            break;
        }
        memcpy(out + used, r->rptr, r->rlen);
        if (brk_is_lossy(r) && !brk_lossy_intact(r, r->held_pos)) {
            r->head = keep_head;
            if (n)
                break; /* keep the good ones; the next call recovers */
            if ((rc = brk_recover(r)) && rc != BRK_LAPPED)
                break;
            rc = 0;
            continue;
        }
        if (r->kind == BRK_KIND_BCAST && !brk_slot_ours(r)) {
            rc = BRK_EVICTED;
            break;
        }
        int arc = brk_accept(r, seq);
        if (n == 0)
            first_rc = arc;
        lens[n++] = r->rlen;
        used += r->rlen;
    }
    r->count = n;
    r->count_bytes = used;
    if (n) {
        brk_publish_head(r);
        return first_rc;
    }
    return rc;
}

/* ---- waiting ----------------------------------------------------------- */

/* Something for the consumer to look at: data, a lap, closure, eviction, an interrupt. */
static inline int brk_consumer_ready(brk_ring *r, memory_order mo)
{
    /* mo is acquire while spinning and seq_cst right after announcing that we
     * sleep: then each of these loads is the sleeper's half of a handshake
     * with a seq_cst store (interrupt: brk_interrupt; slot state:
     * brk_bcast_evict; tail: brk_publish; producer_pid: brk_ring_detach). */
    if (atomic_load_explicit(&r->interrupt, mo))
        return 1;
    if (r->kind == BRK_KIND_BCAST && r->slot && atomic_load_explicit(&r->slot->state, mo) != r->slot_word)
        return 1;
    if (atomic_load_explicit(&r->hdr->tail, mo) != r->head)
        return 1;
    return atomic_load_explicit(&r->hdr->producer_pid, mo) == BRK_PID_CLOSED;
}

static inline int brk_producer_ready(brk_ring *r, uint64_t len, memory_order mo)
{
    /* same handshakes as brk_consumer_ready, with brk_publish_head's store of head */
    if (atomic_load_explicit(&r->interrupt, mo) || brk_is_lossy(r))
        return 1;
    uint64_t size = brk_rec_size(len), contig = r->capacity - (r->tail & r->mask);
    uint64_t end = r->tail + (size > contig ? contig : 0) + size;
    if (r->kind == BRK_KIND_SPSC) {
        /* mo (acquire or seq_cst, as above); also the partner of the
         * consumer's release of head, as in brk_room */
        uint64_t h = atomic_load_explicit(&r->hdr->head, mo);
        /* a corrupt head is reported by the send that follows */
        return r->tail - h > r->capacity || end <= h + r->capacity;
    }
    /* brk_bcast_limit begins with a seq_cst fence: it is the sleeper's half
     * of the handshake with the consumers' seq_cst head stores. */
    return brk_bcast_limit(r) != 0 ? 0 : end <= r->limit;
}

static inline int brk_wait_result(brk_ring *r)
{
    /* relaxed: read by the thread that was interrupted, after waking up */
    return atomic_load_explicit(&r->interrupt, memory_order_relaxed) ? BRK_INTERRUPTED : 0;
}

/*
 * Spin for spin_ns, then sleep until ready or timeout_ns has passed.
 *
 * No lost wake-up: to sleep we (1) announce it with a seq_cst store (the
 * BRK_WAIT_* flag; broadcast consumers: an increment of cons_sleepers, and
 * then we read the epoch), (2) load the other side's position seq_cst, and
 * sleep only if it shows nothing new. The other side (3) stores its position
 * seq_cst, then (4) loads the flag or the sleeper count seq_cst (brk_wake,
 * brk_wake_consumers). Either (2) follows (3) in the seq_cst order, and we do
 * not sleep, or (4) follows (1) and it wakes us. The wake-up is not lost when
 * it comes before we block: FUTEX_WAIT returns at once when the word no
 * longer holds the value we saw, and an eventfd keeps its count until read.
 * tests/test_wakeup.py and the C test hand off thousands of times with the
 * sleeper never spinning.
 */
static int brk_wait(brk_ring *r, int consumer, uint64_t len, int64_t timeout_ns)
{
    if (timeout_ns < 0)
        return -EINVAL;
    uint64_t start = brk_now_ns(), deadline = start + (uint64_t)timeout_ns;
    uint64_t spin_end = start + (r->spin_ns < (uint64_t)timeout_ns ? r->spin_ns : (uint64_t)timeout_ns);
    /* Spin, yield or sleep at once: where the other side runs decides (brk_plan). */
    brk_spin_plan plan = brk_plan(r, brk_peer_cpu(r, consumer), start);
    plan.no_spin |= r->spin_ns == 0;
    for (uint64_t i = 0, now = start;; i++) {
        if (consumer ? brk_consumer_ready(r, memory_order_acquire) : brk_producer_ready(r, len, memory_order_acquire))
            return brk_wait_result(r);
        if (plan.no_spin)
            break;
        if ((i & 15) == 15) {
            if ((now = brk_now_ns()) >= spin_end)
                break;
            if (now - start >= plan.pure)
                sched_yield(); /* see BRK_PURE_SPIN_NS */
        }
        brk_cpu_relax();
    }
    int epoch = consumer && r->kind == BRK_KIND_BCAST;
    _Atomic uint32_t *word = consumer ? &r->hdr->cons_wait : &r->hdr->prod_wait;
    uint32_t how = !epoch && r->efd_wait >= 0 ? BRK_WAIT_EVENTFD : BRK_WAIT_FUTEX;
    for (;;) {
        uint32_t val = how;
        if (epoch) {
            /* (1) seq_cst: see above; the epoch is read after it */
            atomic_fetch_add_explicit(&r->hdr->cons_sleepers, 1, memory_order_seq_cst);
            val = atomic_load_explicit(word, memory_order_seq_cst);
        } else {
            /* (1) seq_cst: see above */
            atomic_store_explicit(word, how, memory_order_seq_cst);
        }
        int ready = consumer ? brk_consumer_ready(r, memory_order_seq_cst) /* (2) */
                             : brk_producer_ready(r, len, memory_order_seq_cst);
        uint64_t now = brk_now_ns();
        int rc = 0;
        if (!ready && now < deadline) {
            r->sleeps++;
            if (!consumer)
                r->full_waits++;
            rc = how == BRK_WAIT_EVENTFD ? brk_eventfd_wait(r->efd_wait, deadline - now)
                                         : brk_futex_wait(word, val, deadline - now);
        }
        if (epoch) /* seq_cst, like the increment it undoes */
            atomic_fetch_sub_explicit(&r->hdr->cons_sleepers, 1, memory_order_seq_cst);
        else if (ready)
            /* relaxed: nobody else sleeps on this flag; a stale value only
             * costs the other side one needless system call */
            atomic_store_explicit(word, BRK_WAIT_NONE, memory_order_relaxed);
        if (ready)
            return brk_wait_result(r);
        if (rc < 0)
            return rc;
        if (now >= deadline || rc == BRK_TIMEOUT) {
            if (!epoch) /* relaxed: as above */
                atomic_store_explicit(word, BRK_WAIT_NONE, memory_order_relaxed);
            return BRK_TIMEOUT;
        }
    }
}

int brk_wait_data(brk_ring *r, int64_t timeout_ns)
{
    if (!brk_consumer_ok(r))
        return -EINVAL;
    return brk_wait(r, 1, 0, timeout_ns);
}

int brk_spin_data(brk_ring *r, int64_t spin_ns)
{
    if (!brk_consumer_ok(r) || spin_ns < 0)
        return -EINVAL;
    /* Spin only, never sleep: 0 once there is something to read, else BRK_TIMEOUT. */
    if (spin_ns == 0) /* one look (a server polling many rings): no clock, no pause. acquire: pairs with the
                       * producer's publishing store of tail (brk_publish), as in the loop below */
        return brk_consumer_ready(r, memory_order_acquire) ? brk_wait_result(r) : BRK_TIMEOUT;
    uint64_t now = brk_now_ns(), end = now + (uint64_t)spin_ns;
    brk_spin_plan plan = brk_plan(r, brk_peer_cpu(r, 1), now); /* as in brk_wait */
    if (plan.no_spin)
        end = now;
    for (uint64_t i = 0;; i++) {
        if (brk_consumer_ready(r, memory_order_acquire))
            return brk_wait_result(r);
        if ((i & 15) == 15) {
            uint64_t t = brk_now_ns();
            if (t >= end)
                return BRK_TIMEOUT;
            if (t - now >= plan.pure)
                sched_yield(); /* see BRK_PURE_SPIN_NS */
        }
        brk_cpu_relax();
    }
}

int brk_wait_space(brk_ring *r, uint64_t len, int64_t timeout_ns)
{
    if (r->role != BRK_ROLE_PRODUCER || !r->hdr)
        return -EINVAL;
    if (len > r->max_record)
        return BRK_TOOBIG;
    return brk_wait(r, 0, len, timeout_ns);
}

int brk_recv_wait(brk_ring *r, void *dst, uint64_t cap, int64_t timeout_ns)
{
    int rc = brk_recv(r, dst, cap);
    if (rc != BRK_EMPTY || timeout_ns == 0)
        return rc;
    rc = brk_wait(r, 1, 0, timeout_ns);
    if (rc)
        return rc;
    return brk_recv(r, dst, cap);
}

int brk_arm(brk_ring *r)
{
    if (!brk_consumer_ok(r))
        return -EINVAL;
    if (r->kind != BRK_KIND_SPSC) {
        /* A broadcast consumer that will sleep in poll() on the producer's doorbell (its
         * efd_notify, given to the producer by whoever arranged it): (1) of brk_wait, counted
         * as a poller until brk_disarm, then (2). seq_cst: pairs with the producer's seq_cst
         * load of cons_pollers after its tail store (brk_wake_consumers). */
        atomic_fetch_add_explicit(&r->hdr->cons_pollers, 1, memory_order_seq_cst); /* (1) */
        return brk_consumer_ready(r, memory_order_seq_cst) ? BRK_BUSY : 0;        /* (2) */
    }
    /* (1) and (2) of brk_wait, for a caller that then polls efd_wait with
     * other descriptors. 0: armed, nothing to read; BRK_BUSY: do not sleep. */
    atomic_store_explicit(&r->hdr->cons_wait, BRK_WAIT_EVENTFD, memory_order_seq_cst); /* (1) */
    return brk_consumer_ready(r, memory_order_seq_cst) ? BRK_BUSY : 0;                 /* (2) */
}

int brk_disarm(brk_ring *r)
{
    if (!brk_consumer_ok(r) || r->kind == BRK_KIND_SPSC)
        return -EINVAL;
    /* seq_cst, like the increment of brk_arm it undoes (once per brk_arm: the caller keeps count) */
    atomic_fetch_sub_explicit(&r->hdr->cons_pollers, 1, memory_order_seq_cst);
    return 0;
}

int brk_interrupt(brk_ring *r)
{
    if (!r->hdr)
        return -EINVAL;
    /* seq_cst: the handshake with the sleeper's seq_cst loads in
     * brk_consumer_ready / brk_producer_ready, as for a position store. */
    atomic_store_explicit(&r->interrupt, 1, memory_order_seq_cst);
    if (r->role == BRK_ROLE_CONSUMER && r->kind == BRK_KIND_BCAST) {
        /* seq_cst, as in brk_wake_consumers: our sleeper waits for the epoch
         * to move (this wakes the others too; they look and sleep again) */
        atomic_fetch_add_explicit(&r->hdr->cons_wait, 1, memory_order_seq_cst);
        brk_futex_wake(&r->hdr->cons_wait);
    } else {
        _Atomic uint32_t *flag = r->role == BRK_ROLE_CONSUMER ? &r->hdr->cons_wait : &r->hdr->prod_wait;
        /* acq_rel, as in brk_wake: clearing the flag makes a FUTEX_WAIT that
         * has not started yet return at once */
        atomic_exchange_explicit(flag, BRK_WAIT_NONE, memory_order_acq_rel);
        brk_futex_wake(flag);
    }
    if (r->efd_wait >= 0) {
        uint64_t one = 1;
        ssize_t w = write(r->efd_wait, &one, sizeof one);
        (void)w; /* EAGAIN: the counter is non-zero, the sleeper wakes anyway */
    }
    return 0;
}

int64_t brk_backlog(brk_ring *r)
{
    if (!r->hdr)
        return -EINVAL;
    /* acquire: pairs with brk_publish (a statistic; any recent value will do) */
    uint64_t t = atomic_load_explicit(&r->hdr->tail, memory_order_acquire);
    uint64_t from = r->head;
    if (r->role == BRK_ROLE_PRODUCER)
        from = r->kind == BRK_KIND_SPSC ? atomic_load_explicit(&r->hdr->head, memory_order_acquire) /* as in brk_room */
                                        : r->limit - r->capacity;
    uint64_t d = t - from;
    return d > r->capacity ? -EIO : (int64_t)d;
}

/* ---- broadcast membership ---------------------------------------------- */

/* Lossy joiner: the sequence number of the next record, found by walking the
 * headers from oldest to tail; BRK_LAPPED if the producer overwrote them
 * meanwhile (the caller retries). */
static int brk_lossy_next_seq(brk_ring *r, uint64_t *tail, uint64_t *next)
{
    /* A consistent (oldest, tail), as in brk_recover: each load acquire,
     * pairing with the producer's stores of the same words. */
    uint64_t o = atomic_load_explicit(&r->hdr->oldest, memory_order_acquire);
    uint64_t t = atomic_load_explicit(&r->hdr->tail, memory_order_acquire);
    if (atomic_load_explicit(&r->hdr->oldest, memory_order_acquire) != o)
        return BRK_LAPPED;
    if ((o & 7) || (t & 7) || t - o > r->capacity)
        return BRK_CORRUPT;
    *tail = t;
    int found = 0;
    uint64_t pos = o;
    for (uint64_t steps = 0; pos != t; steps++) {
        if (steps > r->capacity / 8 || (int64_t)(t - pos) < 0)
            return BRK_CORRUPT;
        uint64_t off = pos & r->mask, contig = r->capacity - off;
        if (contig < BRK_REC_HDR) {
            pos += contig;
            continue;
        }
        struct brk_rec h;
        memcpy(&h, r->data + off, sizeof h);
        if (!brk_lossy_intact(r, o))
            return BRK_LAPPED;
        if (h.type == BRK_REC_PAD && (uint64_t)h.len + BRK_REC_HDR == contig) {
            pos += contig;
            continue;
        }
        if (h.type != BRK_REC_DATA || h.len > r->max_record || brk_rec_size(h.len) > contig)
            return BRK_CORRUPT;
        *next = h.seq + 1;
        found = 1;
        pos += brk_rec_size(h.len);
    }
    if (!found)
        *next = 0; /* nothing written yet: t == o == 0 */
    return found || t == 0 ? 0 : BRK_CORRUPT;
}

int brk_bcast_join(brk_ring *r, int32_t pid, uint64_t start)
{
    if (r->kind != BRK_KIND_BCAST || r->role != BRK_ROLE_CONSUMER || !r->hdr || r->slot)
        return -EINVAL;
    for (uint32_t i = 0; i < r->max_consumers; i++) {
        struct brk_slot *sl = brk_slot_at(r, i);
        /* relaxed: only a hint for the CAS below */
        uint32_t word = atomic_load_explicit(&sl->state, memory_order_relaxed);
        if ((word & BRK_SLOT_MASK) != BRK_SLOT_FREE)
            continue;
        uint32_t gen = (((word >> 8) + 1) << 8);
        /* acq_rel CAS: we own the slot from here; acquire orders us after the
         * previous owner's last writes, release publishes the claim. */
        if (!atomic_compare_exchange_strong_explicit(&sl->state, &word, gen | BRK_SLOT_JOINING, memory_order_acq_rel,
                                                     memory_order_relaxed))
            continue;
        /* relaxed: read by liveness checks only after they load the state
         * (acquire), which our release CAS to ACTIVE below publishes */
        atomic_store_explicit(&sl->pid, pid, memory_order_relaxed);
        sl->start = start;
        /* relaxed: a statistic */
        atomic_store_explicit(&sl->lost, 0, memory_order_relaxed);
        /* seq_cst fence: pairs with the fence in brk_bcast_limit (see there). */
        atomic_thread_fence(memory_order_seq_cst);
        /* acquire: pairs with brk_publish; we start with the next record. */
        uint64_t t = atomic_load_explicit(&r->hdr->tail, memory_order_acquire);
        int rc = (t & 7) ? BRK_CORRUPT : 0;
        uint64_t expect = 0;
        uint32_t lap = 2; /* lossless: the first record's seq starts our count */
        if (!rc && brk_is_lossy(r)) {
            /* lossy: a lap before our first record must count exactly, so we
             * need the next seq now */
            rc = BRK_LAPPED;
            for (int tries = 0; tries < 8 && rc == BRK_LAPPED; tries++)
                rc = brk_lossy_next_seq(r, &t, &expect);
            lap = 0;
        }
        if (!rc) {
            /* relaxed: published by the release CAS to ACTIVE below */
            atomic_store_explicit(&sl->head, t, memory_order_relaxed);
            uint32_t joining = gen | BRK_SLOT_JOINING;
            /* release CAS: pairs with the producer's acquire load of the
             * state in brk_bcast_limit, which then sees our head; fails if
             * the producer evicted us while we joined. */
            if (!atomic_compare_exchange_strong_explicit(&sl->state, &joining, gen | BRK_SLOT_ACTIVE,
                                                         memory_order_release, memory_order_relaxed))
                rc = -EAGAIN;
        }
        if (rc) {
            uint32_t mine = gen | BRK_SLOT_JOINING;
            /* release: hand the slot back (fails harmlessly if evicted: then
             * the evictor frees it) */
            atomic_compare_exchange_strong_explicit(&sl->state, &mine, gen | BRK_SLOT_FREE, memory_order_release,
                                                    memory_order_relaxed);
        } else {
            r->slot = sl;
            r->slot_index = i;
            r->slot_word = gen | BRK_SLOT_ACTIVE;
            r->head = r->avail = t;
            r->expect = expect;
            r->lap_pending = lap;
        }
        /* A producer that saw us JOINING may sleep, waiting for room: the
         * seq_cst fence orders our state change before brk_wake's flag load. */
        atomic_thread_fence(memory_order_seq_cst);
        brk_wake(r, &r->hdr->prod_wait);
        return rc;
    }
    return -ENOSPC;
}

int brk_bcast_leave(brk_ring *r)
{
    if (!r->slot)
        return -EINVAL;
    uint32_t word = r->slot_word, gen = word & ~(uint32_t)BRK_SLOT_MASK;
    /* release CAS: a later owner of the slot sees our writes finished. If we
     * were evicted, the slot is EVICTED with our generation, kept for us:
     * free it now. */
    if (!atomic_compare_exchange_strong_explicit(&r->slot->state, &word, gen | BRK_SLOT_FREE, memory_order_release,
                                                 memory_order_relaxed)) {
        word = gen | BRK_SLOT_EVICTED;
        /* release: as above */
        atomic_compare_exchange_strong_explicit(&r->slot->state, &word, gen | BRK_SLOT_FREE, memory_order_release,
                                                memory_order_relaxed);
    }
    r->slot = NULL;
    r->held = 0;
    /* the producer may be waiting for us (lossless): the seq_cst fence orders
     * our state change before brk_wake's flag load */
    atomic_thread_fence(memory_order_seq_cst);
    brk_wake(r, &r->hdr->prod_wait);
    return 0;
}

int brk_bcast_evict(brk_ring *r, uint32_t slot)
{
    if (r->kind != BRK_KIND_BCAST || !r->hdr || slot >= r->max_consumers)
        return -EINVAL;
    struct brk_slot *sl = brk_slot_at(r, slot);
    /* relaxed: the CAS below decides */
    uint32_t word = atomic_load_explicit(&sl->state, memory_order_relaxed);
    uint32_t st = word & BRK_SLOT_MASK;
    if (st != BRK_SLOT_ACTIVE && st != BRK_SLOT_JOINING)
        return -ENOENT;
    /* acq_rel CAS: only a live (joining or active) owner is evicted. The slot
     * stays EVICTED, not reusable, until its owner leaves or is found dead
     * (brk_bcast_reclaim), so it never writes into a new owner's slot. */
    if (!atomic_compare_exchange_strong_explicit(&sl->state, &word, (word & ~(uint32_t)BRK_SLOT_MASK) | BRK_SLOT_EVICTED,
                                                 memory_order_acq_rel, memory_order_relaxed))
        return BRK_BUSY;
    /* release fence: an evicted consumer that reads anything we write after
     * this also sees the eviction (pairs with the acquire fence in brk_slot_ours) */
    atomic_thread_fence(memory_order_release);
    /* seq_cst fence: orders the eviction before the sleeper-count and flag
     * loads of the wake-ups (the consumer may sleep; a producer may wait on it) */
    atomic_thread_fence(memory_order_seq_cst);
    brk_wake_consumers(r);
    brk_wake(r, &r->hdr->prod_wait);
    return 0;
}

int brk_bcast_reclaim(brk_ring *r, uint32_t slot)
{
    if (r->kind != BRK_KIND_BCAST || !r->hdr || slot >= r->max_consumers)
        return -EINVAL;
    struct brk_slot *sl = brk_slot_at(r, slot);
    /* relaxed: the CAS below decides */
    uint32_t word = atomic_load_explicit(&sl->state, memory_order_relaxed);
    if ((word & BRK_SLOT_MASK) != BRK_SLOT_EVICTED)
        return -ENOENT;
    /* release CAS: the caller has established that the owner is dead */
    if (!atomic_compare_exchange_strong_explicit(&sl->state, &word, (word & ~(uint32_t)BRK_SLOT_MASK) | BRK_SLOT_FREE,
                                                 memory_order_release, memory_order_relaxed))
        return BRK_BUSY;
    return 0;
}

int brk_bcast_slot_info(brk_ring *r, uint32_t slot, uint32_t *state, int32_t *pid, uint64_t *start, uint64_t *head)
{
    if (r->kind != BRK_KIND_BCAST || !r->hdr || slot >= r->max_consumers)
        return -EINVAL;
    struct brk_slot *sl = brk_slot_at(r, slot);
    /* acquire: pairs with the release CAS to ACTIVE in brk_bcast_join; the
     * pid and head of an active slot are then the joiner's */
    *state = atomic_load_explicit(&sl->state, memory_order_acquire);
    *pid = atomic_load_explicit(&sl->pid, memory_order_relaxed); /* ordered by the acquire above */
    *start = sl->start;
    *head = atomic_load_explicit(&sl->head, memory_order_relaxed); /* a statistic */
    return 0;
}

/* ---- waiting on several rings at once (a linked service's provider) ---- */

/*
 * A bell is a process-local word that another thread of this process rings
 * (brk_bell_ring) to end a brk_wait_any early: an epoch, incremented and woken.
 */
void brk_bell_ring(uint32_t *bell)
{
    /* seq_cst: pairs with brk_wait_any's seq_cst load of the bell after it
     * announced its sleep: either that load sees the new epoch, or the epoch
     * changed before futex_waitv compared it, which then returns at once. */
    atomic_fetch_add_explicit((_Atomic uint32_t *)bell, 1, memory_order_seq_cst);
    brk_futex_wake((_Atomic uint32_t *)bell);
}

static int brk_any_ready(brk_ring *const *rings, uint32_t n, _Atomic uint32_t *bell, uint32_t seen,
                         memory_order mo, uint32_t *which)
{
    for (uint32_t i = 0; i < n; i++) {
        if (brk_consumer_ready(rings[i], mo)) {
            *which = i;
            return 1;
        }
    }
    if (bell && atomic_load_explicit(bell, mo) != seen) {
        *which = n;
        return 1;
    }
    return 0;
}

/*
 * Spin, then sleep in one futex_waitv on every ring's cons_wait and the bell, until one has
 * something (*which) or timeout_ns has passed.
 *
 * No lost wake-up. Each ring is brk_wait's handshake, made for all of them before one look:
 * (1) for every ring, a seq_cst store of BRK_WAIT_FUTEX into its cons_wait; (2) one seq_cst look
 * at every ring's tail (and interrupt, producer_pid) and at the bell; sleep only if it shows
 * nothing. A producer (3) stores its tail seq_cst, then (4) loads that ring's flag seq_cst
 * (brk_wake). For each ring on its own, in the single total order of seq_cst operations either
 * (2)'s load of its tail follows (3), and we see the record and do not sleep, or (4) follows (1),
 * the producer sees BRK_WAIT_FUTEX, exchanges it for NONE and calls FUTEX_WAKE. That wake is not
 * lost when it comes before we block: futex_waitv compares every word with the value we gave it
 * (BRK_WAIT_FUTEX) under the futex bucket locks and returns at once (EAGAIN) if one moved.
 * The bell is the same with an epoch: brk_bell_ring increments it seq_cst, then wakes; (2)'s
 * seq_cst load sees the new epoch, or futex_waitv finds the word no longer bell_seen.
 *
 * The flags go back to NONE with relaxed stores after a sleep. Such a store can never hide a
 * later announcement: the next (1) is a later store by this same thread, so it follows in the
 * word's modification order, and a producer's seq_cst load that comes after that (1) in the
 * total order cannot read the older NONE (coherence). A producer that read an older
 * BRK_WAIT_FUTEX and wakes us late costs one spurious wake-up: we look again and sleep again.
 * Several rings need no more than one ring does: each ring's pair of handshakes is independent,
 * and one look after all announcements covers every ring at once.
 *
 * Kernels before 5.16 (ENOSYS) sleep on the first word only, for 1 ms at a time, and look at
 * all of them between: a wake-up on another ring or the bell then waits up to 1 ms, never more.
 *
 * tests: csrc/ring/tests/ring_test.c, the wakeup mode (a record or a bell put in the window just
 * before futex_waitv; a ping-pong between processes, with and without CPU hogs, in which any
 * lost wake-up sleeps to its timeout) and the threads mode under TSan (the same ping-pong).
 */
int brk_wait_any(brk_ring *const *rings, uint32_t n, uint32_t *bell_word, uint32_t bell_seen, int64_t spin_ns,
                 int64_t timeout_ns, uint32_t *which)
{
    if (n > BRK_WAIT_ANY_MAX || timeout_ns < 0 || spin_ns < 0 || !which)
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++) {
        /* SPSC consumers that sleep on the futex only: an eventfd sleeper's producer writes its fd */
        if (!rings[i] || !brk_consumer_ok(rings[i]) || rings[i]->kind != BRK_KIND_SPSC || rings[i]->efd_wait >= 0)
            return -EINVAL;
    }
    _Atomic uint32_t *bell = (_Atomic uint32_t *)bell_word;
    uint64_t start = brk_now_ns(), deadline = start + (uint64_t)timeout_ns;
    uint64_t spin_end = start + (uint64_t)(spin_ns < timeout_ns ? spin_ns : timeout_ns);
    /* Spin, yielding from the start if a producer's hint is our CPU (brk_plan). Unlike brk_wait,
     * never sleep at once: a provider that just answered one caller may hear from another. */
    uint64_t pure = n ? rings[0]->pure_spin_ns : 0;
    for (uint32_t i = 0; i < n && pure; i++)
        pure = brk_plan(rings[i], brk_peer_cpu(rings[i], 1), start).pure;
    for (uint64_t i = 0, now = start;; i++) {
        /* acquire: pairs with each producer's publishing store of tail (brk_publish) */
        if (brk_any_ready(rings, n, bell, bell_seen, memory_order_acquire, which))
            return 0;
        if ((i & 15) == 15) {
            if ((now = brk_now_ns()) >= spin_end)
                break;
            if (now - start >= pure)
                sched_yield(); /* see BRK_PURE_SPIN_NS */
        }
        brk_cpu_relax();
    }
    struct futex_waitv w[BRK_WAIT_ANY_MAX + 1];
    for (;;) {
        uint32_t k = 0;
        for (uint32_t i = 0; i < n; i++) {
            /* (1) seq_cst: the sleeper's half of brk_wake's handshake, as in brk_wait */
            atomic_store_explicit(&rings[i]->hdr->cons_wait, BRK_WAIT_FUTEX, memory_order_seq_cst);
            w[k++] = (struct futex_waitv){ .val = BRK_WAIT_FUTEX, .uaddr = (uintptr_t)&rings[i]->hdr->cons_wait,
                                           .flags = FUTEX_32 };
        }
        if (bell)
            w[k++] = (struct futex_waitv){ .val = bell_seen, .uaddr = (uintptr_t)bell, .flags = FUTEX_32 };
        /* (2) seq_cst: after the announcements above (see brk_wait) */
        int ready = brk_any_ready(rings, n, bell, bell_seen, memory_order_seq_cst, which);
        uint64_t now = brk_now_ns();
        int rc = 0;
        if (!ready && now < deadline) {
            for (uint32_t i = 0; i < n; i++)
                rings[i]->sleeps++;
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts); /* futex_waitv's timeout is absolute */
            uint64_t at = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + (deadline - now);
            ts.tv_sec = (time_t)(at / 1000000000u);
            ts.tv_nsec = (long)(at % 1000000000u);
            long s = syscall(SYS_futex_waitv, w, k, 0, &ts, CLOCK_MONOTONIC, 0);
            if (s < 0 && errno == ETIMEDOUT)
                rc = BRK_TIMEOUT;
            else if (s < 0 && errno == ENOSYS) {
                /* a kernel before 5.16: sleep on the first word for a short slice, then look again */
                uint64_t left = deadline - now;
                rc = k ? brk_futex_wait((_Atomic uint32_t *)(uintptr_t)w[0].uaddr, w[0].val,
                                        left < 1000000u ? left : 1000000u)
                       : 0;
                if (rc == BRK_TIMEOUT)
                    rc = 0;
            } else if (s < 0 && errno != EAGAIN && errno != EINTR)
                rc = -errno;
        }
        for (uint32_t i = 0; i < n; i++)
            /* relaxed: nobody else sleeps on this flag; a stale value only
             * costs the other side one needless system call (as in brk_wait) */
            atomic_store_explicit(&rings[i]->hdr->cons_wait, BRK_WAIT_NONE, memory_order_relaxed);
        if (ready || brk_any_ready(rings, n, bell, bell_seen, memory_order_acquire, which))
            return 0;
        if (rc < 0)
            return rc;
        if (rc == BRK_TIMEOUT || brk_now_ns() >= deadline)
            return BRK_TIMEOUT;
    }
}
