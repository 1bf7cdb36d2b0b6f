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
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <linux/futex.h>

#include "brk_ring.h"

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
_Static_assert(offsetof(struct brk_ring_hdr, head) == 256, "consumer line");
_Static_assert(offsetof(struct brk_ring_hdr, consumer_pid) == 264, "ring consumer_pid");
_Static_assert(offsetof(struct brk_ring_hdr, consumer_start) == 272, "ring consumer_start");
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

static inline int brk_is_lossless_bcast(const brk_ring *r) { return r->kind == BRK_KIND_BCAST && !(r->flags & BRK_FLAG_LOSSY); }

/* ---- futex and eventfd ------------------------------------------------- */

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

    if (role == BRK_ROLE_PRODUCER) {
        /* One producer for the ring's life: the pid word goes 0 -> pid once,
         * and to BRK_PID_CLOSED at detach. acq_rel: acquire sees the creator's
         * zeroed header, release publishes our claim. */
        int32_t expect = 0;
        if (!atomic_compare_exchange_strong_explicit(&h->producer_pid, &expect, pid, memory_order_acq_rel,
                                                     memory_order_acquire))
            return -EBUSY;
        h->producer_start = start;
        /* relaxed: we are the only writer of tail and it was 0 when we took the ring. */
        uint64_t t = atomic_load_explicit(&h->tail, memory_order_relaxed);
        if (t != 0)
            return BRK_CORRUPT;
        r->tail = 0;
        r->seq = 0;
        r->limit = s.capacity;
        if (brk_is_lossy(r))
            r->limit = s.capacity; /* lossy: limit is oldest + capacity */
        return 0;
    }

    if (s.kind == BRK_KIND_SPSC) {
        int32_t expect = 0;
        /* acq_rel, as for the producer: one consumer at a time. */
        if (!atomic_compare_exchange_strong_explicit(&h->consumer_pid, &expect, pid, memory_order_acq_rel,
                                                     memory_order_acquire))
            return -EBUSY;
        h->consumer_start = start;
        /* acquire: pairs with the previous consumer's release store of head. */
        uint64_t hd = atomic_load_explicit(&h->head, memory_order_acquire);
        uint64_t t = atomic_load_explicit(&h->tail, memory_order_acquire);
        if (t - hd > s.capacity || (hd & 7)) {
            atomic_store_explicit(&h->consumer_pid, 0, memory_order_release);
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
        /* seq_cst: like a tail store, consumers that sleep must see it (brk_wake). */
        atomic_store_explicit(&r->hdr->producer_pid, BRK_PID_CLOSED, memory_order_seq_cst);
        brk_wake(r, &r->hdr->cons_wait);
    } else if (r->kind == BRK_KIND_SPSC) {
        /* release: our last head store is visible to whoever attaches next. */
        atomic_store_explicit(&r->hdr->consumer_pid, 0, memory_order_release);
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

/* Lossless broadcast: the limit is the slowest active consumer plus capacity. */
static int brk_bcast_limit(brk_ring *r)
{
    /* seq_cst fence: pairs with the fence in brk_bcast_join. If this scan
     * does not see a joiner's slot, the joiner's later tail load sees at least
     * the tail we base the limit on, so it never starts behind our limit. */
    atomic_thread_fence(memory_order_seq_cst);
    uint64_t behind = 0; /* largest distance tail - head among consumers */
    for (uint32_t i = 0; i < r->max_consumers; i++) {
        struct brk_slot *sl = brk_slot_at(r, i);
        /* acquire: pairs with the release store of ACTIVE in brk_bcast_join,
         * so the head we load next is the joiner's. */
        uint32_t word = atomic_load_explicit(&sl->state, memory_order_acquire);
        uint32_t st = word & BRK_SLOT_MASK;
        if (st == BRK_SLOT_JOINING)
            return BRK_FULL; /* it wakes us when it is active */
        if (st != BRK_SLOT_ACTIVE)
            continue;
        /* acquire: pairs with the consumer's release store of its head: its
         * reads of the records before head happen-before we overwrite them. */
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

/* Lossy broadcast: move `oldest` past every record that [.., end) overwrites,
 * then announce the overwrite through `reserve` before writing a byte. */
static int brk_lossy_room(brk_ring *r, uint64_t end)
{
    uint64_t o = r->limit - r->capacity;
    for (uint64_t steps = 0; end > o + r->capacity; steps++) {
        if (steps > r->capacity / 8 || o >= r->tail)
            return BRK_CORRUPT;
        uint64_t off = o & r->mask, contig = r->capacity - off;
        if (contig < BRK_REC_HDR) {
            o += contig;
            continue;
        }
        struct brk_rec h;
        memcpy(&h, r->data + off, sizeof h);
        uint64_t size = h.type == BRK_REC_PAD ? (uint64_t)h.len + BRK_REC_HDR : brk_rec_size(h.len);
        if ((h.type != BRK_REC_PAD && h.type != BRK_REC_DATA) || size > contig || (h.type == BRK_REC_PAD && size != contig))
            return BRK_CORRUPT;
        o += size;
    }
    r->limit = o + r->capacity;
    /* release: a consumer that acquires oldest sees the record headers up to
     * it as we left them. Stored before reserve (below), so whoever acquires a
     * reserve value also sees an oldest at least this new. */
    atomic_store_explicit(&r->hdr->oldest, o, memory_order_release);
    /* release store, then a release fence before the data writes: the seqlock
     * pattern. A consumer that copies bytes we are about to write and then
     * (after an acquire fence) loads reserve sees this value, and knows its
     * copy may be torn. Pairs with the fence + load in brk_lossy_intact. */
    atomic_store_explicit(&r->hdr->reserve, end, memory_order_release);
    atomic_thread_fence(memory_order_release);
    return 0;
}

/* Find room for a payload of len bytes at the tail; sets claim_pos/claim_pad. */
static inline int brk_room(brk_ring *r, uint64_t len)
{
    if (len > r->max_record)
        return BRK_TOOBIG;
    uint64_t size = brk_rec_size(len);
    uint64_t pos = r->tail, contig = r->capacity - (pos & r->mask);
    uint64_t pad = size > contig ? contig : 0;
    uint64_t end = pos + pad + size;
    if (brk_is_lossy(r)) {
        int rc = brk_lossy_room(r, end);
        if (rc)
            return rc;
    } else if (end > r->limit) {
        if (r->kind == BRK_KIND_SPSC) {
            /* acquire: pairs with the consumer's release (seq_cst) store of
             * head in brk_release: its reads happen-before our overwrite. */
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

/* Write the pad (if any) and the record header of the claimed record. */
static inline void brk_write_headers(brk_ring *r, uint64_t len)
{
    if (r->claim_pad >= BRK_REC_HDR) {
        struct brk_rec p = { (uint32_t)(r->claim_pad - BRK_REC_HDR), BRK_REC_PAD, r->seq };
        memcpy(r->data + (r->tail & r->mask), &p, sizeof p);
    }
    struct brk_rec h = { (uint32_t)len, BRK_REC_DATA, r->seq };
    memcpy(r->data + (r->claim_pos & r->mask), &h, sizeof h);
}

static inline void brk_publish(brk_ring *r, uint64_t end)
{
    r->tail = end;
    /* seq_cst store: as a release it pairs with the consumer's acquire load
     * of tail (the records are visible before the position that covers them);
     * as seq_cst it is our half of the sleeping-flag handshake (brk_wake). */
    atomic_store_explicit(&r->hdr->tail, end, memory_order_seq_cst);
    brk_wake(r, &r->hdr->cons_wait);
}

int brk_claim(brk_ring *r, uint64_t len)
{
    if (r->role != BRK_ROLE_PRODUCER || !r->hdr)
        return -EINVAL;
    if (r->claimed)
        return BRK_BUSY;
    int rc = brk_room(r, len);
    if (rc)
        return rc;
    r->claimed = 1;
    r->claim_max = len;
    r->wptr = r->data + (r->claim_pos & r->mask) + BRK_REC_HDR;
    return 0;
}

int brk_commit(brk_ring *r, uint64_t len)
{
    if (!r->claimed)
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
     * no trace a consumer can see. */
    r->claimed = 0;
    return 0;
}

int brk_send(brk_ring *r, const void *data, uint64_t len)
{
    if (r->role != BRK_ROLE_PRODUCER || r->claimed || !r->hdr)
        return r->claimed ? BRK_BUSY : -EINVAL;
    int rc = brk_room(r, len);
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

int brk_send_many(brk_ring *r, const void *data, const uint64_t *lens, uint64_t n)
{
    if (r->role != BRK_ROLE_PRODUCER || r->claimed || !r->hdr)
        return r->claimed ? BRK_BUSY : -EINVAL;
    const unsigned char *src = data;
    uint64_t i = 0, end = r->tail;
    int rc = 0;
    for (; i < n; i++) {
        /* brk_room looks at r->tail: advance it privately, publish once. */
        r->tail = end;
        rc = brk_room(r, lens[i]);
        if (rc)
            break;
        brk_write_headers(r, lens[i]);
        memcpy(r->data + (r->claim_pos & r->mask) + BRK_REC_HDR, src, lens[i]);
        src += lens[i];
        end = r->claim_pos + brk_rec_size(lens[i]);
        r->seq++;
        r->bytes += lens[i];
    }
    r->records += i;
    r->count = i;
    if (i)
        brk_publish(r, end);
    else
        r->tail = end;
    /* Some sent is success; the caller compares count with n. */
    return i ? 0 : rc;
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
    /* acquire: pairs with the release store of oldest in brk_lossy_room. */
    uint64_t o = atomic_load_explicit(&r->hdr->oldest, memory_order_acquire);
    uint64_t t = atomic_load_explicit(&r->hdr->tail, memory_order_acquire);
    if ((o & 7) || t - o > r->capacity || (int64_t)(o - r->head) < 0)
        return BRK_CORRUPT;
    r->head = o;
    r->avail = o;
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
            /* acquire: pairs with the producer's seq_cst store in brk_publish. */
            uint64_t t = atomic_load_explicit(&r->hdr->tail, memory_order_acquire);
            if ((int64_t)(t - pos) < 0 || (t & 7))
                return BRK_CORRUPT;
            if (t - pos > r->capacity)
                return lossy ? BRK_LAPPED : BRK_CORRUPT;
            r->avail = t;
            if (pos == t) {
                if (atomic_load_explicit(&r->hdr->producer_pid, memory_order_acquire) == BRK_PID_CLOSED &&
                    atomic_load_explicit(&r->hdr->tail, memory_order_acquire) == t)
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
        /* relaxed: a statistic for other processes, ordered by nothing. */
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

/* Publish our head: the space before it may be reused. */
static inline void brk_publish_head(brk_ring *r)
{
    if (r->kind == BRK_KIND_SPSC) {
        /* seq_cst store: as a release it pairs with the producer's acquire
         * load of head in brk_room (our reads happen-before its overwrite);
         * as seq_cst it is our half of the producer's sleeping-flag handshake. */
        atomic_store_explicit(&r->hdr->head, r->head, memory_order_seq_cst);
        brk_wake(r, &r->hdr->prod_wait);
    } else {
        /* same pairing, with brk_bcast_limit's acquire load of the slot head */
        atomic_store_explicit(&r->slot->head, r->head, memory_order_seq_cst);
        if (!brk_is_lossy(r))
            brk_wake(r, &r->hdr->prod_wait);
    }
}

static inline int brk_consumer_ok(const brk_ring *r)
{
    return r->role == BRK_ROLE_CONSUMER && r->hdr && (r->kind == BRK_KIND_SPSC || r->slot);
}

/* One attempt to find a record, following laps (lossy) a bounded number of times. */
static int brk_find(brk_ring *r, uint64_t *seq)
{
    for (int tries = 0; tries < 16; tries++) {
        int rc = brk_next(r, seq);
        if (rc != BRK_LAPPED)
            return rc;
        rc = brk_recover(r);
        if (rc)
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
    if (!r->held)
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
            return BRK_TOOBIG; /* left in place: r->rlen says how big; use peek */
        memcpy(dst, r->rptr, r->rlen);
        if (brk_is_lossy(r) && !brk_lossy_intact(r, r->held_pos)) {
            if ((rc = brk_recover(r)))
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
    if (!brk_consumer_ok(r))
        return -EINVAL;
    if (r->held)
        return BRK_BUSY;
    unsigned char *out = dst;
    uint64_t n = 0, used = 0;
    int rc = 0, first_rc = 0;
    r->count = 0;
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
            if ((rc = brk_recover(r)))
                break;
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
    if (n) {
        brk_publish_head(r);
        return first_rc;
    }
    return rc;
}

/* ---- waiting ----------------------------------------------------------- */

/* Something for the consumer to look at: data, a lap, closure, eviction. */
static inline int brk_consumer_ready(brk_ring *r, memory_order mo)
{
    if (r->kind == BRK_KIND_BCAST && r->slot &&
        atomic_load_explicit(&r->slot->state, memory_order_relaxed) != r->slot_word)
        return 1;
    /* mo is acquire while spinning and seq_cst right after the flag store
     * (the sleeper's half of the handshake in brk_wake). */
    if (atomic_load_explicit(&r->hdr->tail, mo) != r->head)
        return 1;
    return atomic_load_explicit(&r->hdr->producer_pid, memory_order_acquire) == BRK_PID_CLOSED;
}

static inline int brk_producer_ready(brk_ring *r, uint64_t len, memory_order mo)
{
    if (brk_is_lossy(r))
        return 1;
    uint64_t size = brk_rec_size(len), contig = r->capacity - (r->tail & r->mask);
    uint64_t end = r->tail + (size > contig ? contig : 0) + size;
    if (r->kind == BRK_KIND_SPSC) {
        /* mo: acquire while spinning, seq_cst after the flag store (brk_wake).
         * Also the partner of the consumer's release of head, as in brk_room. */
        uint64_t h = atomic_load_explicit(&r->hdr->head, mo);
        return r->tail - h > r->capacity || end <= h + r->capacity; /* a corrupt head is reported by send */
    }
    if (mo == memory_order_seq_cst)
        atomic_thread_fence(memory_order_seq_cst);
    return brk_bcast_limit(r) != 0 ? 0 : end <= r->limit;
}

/*
 * Spin for spin_ns, then sleep until ready or timeout_ns has passed.
 *
 * No lost wake-up: to sleep we (1) store our BRK_WAIT_* flag seq_cst, (2)
 * load the other side's position seq_cst, and sleep only if it shows nothing
 * new. The other side (3) stores its position seq_cst, then (4) loads the
 * flag seq_cst (brk_wake). Either (2) follows (3) in the seq_cst order, and
 * we do not sleep, or (4) follows (1) and it wakes us. The wake is not lost
 * either when it comes before we actually block: FUTEX_WAIT returns at once
 * when the word no longer holds the flag value, and an eventfd keeps its
 * count until read. The fuzz test in tests/test_wakeup.py hands off thousands
 * of times with the sleeper never spinning.
 */
static int brk_wait(brk_ring *r, int consumer, uint64_t len, int64_t timeout_ns)
{
    if (timeout_ns < 0)
        return -EINVAL;
    uint64_t start = brk_now_ns(), deadline = start + (uint64_t)timeout_ns;
    uint64_t spin_end = start + (r->spin_ns < (uint64_t)timeout_ns ? r->spin_ns : (uint64_t)timeout_ns);
    _Atomic uint32_t *flag = consumer ? &r->hdr->cons_wait : &r->hdr->prod_wait;
    for (uint64_t now = start, i = 0;; i++) {
        if (consumer ? brk_consumer_ready(r, memory_order_acquire) : brk_producer_ready(r, len, memory_order_acquire))
            return 0;
        brk_cpu_relax();
        if ((i & 63) == 63 && (now = brk_now_ns()) >= spin_end)
            break;
        if (r->spin_ns == 0)
            break;
    }
    uint32_t how = r->efd_wait >= 0 ? BRK_WAIT_EVENTFD : BRK_WAIT_FUTEX;
    for (;;) {
        /* (1): seq_cst, see above. */
        atomic_store_explicit(flag, how, memory_order_seq_cst);
        /* (2) */
        if (consumer ? brk_consumer_ready(r, memory_order_seq_cst) : brk_producer_ready(r, len, memory_order_seq_cst)) {
            /* SPSC: nobody else uses the flag; clear it so the other side
             * skips the exchange (relaxed: a stale 1 only costs it a syscall). */
            if (r->kind == BRK_KIND_SPSC)
                atomic_store_explicit(flag, BRK_WAIT_NONE, memory_order_relaxed);
            return 0;
        }
        uint64_t now = brk_now_ns();
        if (now >= deadline)
            return BRK_TIMEOUT;
        r->sleeps++;
        int rc = how == BRK_WAIT_EVENTFD ? brk_eventfd_wait(r->efd_wait, deadline - now)
                                         : brk_futex_wait(flag, how, deadline - now);
        if (rc < 0)
            return rc;
        if (!consumer)
            r->full_waits++;
    }
}

int brk_wait_data(brk_ring *r, int64_t timeout_ns)
{
    if (!brk_consumer_ok(r))
        return -EINVAL;
    return brk_wait(r, 1, 0, timeout_ns);
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
    /* (1) and (2) of brk_wait, for a caller that then polls efd_wait with
     * other descriptors. 0: armed, nothing to read; BRK_BUSY: do not sleep. */
    atomic_store_explicit(&r->hdr->cons_wait, BRK_WAIT_EVENTFD, memory_order_seq_cst);
    return brk_consumer_ready(r, memory_order_seq_cst) ? BRK_BUSY : 0;
}

int64_t brk_backlog(brk_ring *r)
{
    if (!r->hdr)
        return -EINVAL;
    uint64_t t = atomic_load_explicit(&r->hdr->tail, memory_order_acquire);
    uint64_t from = r->role == BRK_ROLE_PRODUCER ? r->limit - r->capacity : r->head;
    if (r->role == BRK_ROLE_PRODUCER && r->kind == BRK_KIND_SPSC)
        from = atomic_load_explicit(&r->hdr->head, memory_order_acquire);
    uint64_t d = t - from;
    return d > r->capacity ? -EIO : (int64_t)d;
}

/* ---- broadcast membership ---------------------------------------------- */

int brk_bcast_join(brk_ring *r, int32_t pid, uint64_t start)
{
    if (r->kind != BRK_KIND_BCAST || r->role != BRK_ROLE_CONSUMER || !r->hdr || r->slot)
        return -EINVAL;
    for (uint32_t i = 0; i < r->max_consumers; i++) {
        struct brk_slot *sl = brk_slot_at(r, i);
        uint32_t word = atomic_load_explicit(&sl->state, memory_order_relaxed);
        uint32_t st = word & BRK_SLOT_MASK;
        if (st != BRK_SLOT_FREE && st != BRK_SLOT_EVICTED)
            continue;
        uint32_t mine = (((word >> 8) + 1) << 8);
        /* acq_rel: we own the slot from here; acquire orders us after the
         * previous owner's last writes. */
        if (!atomic_compare_exchange_strong_explicit(&sl->state, &word, mine | BRK_SLOT_JOINING, memory_order_acq_rel,
                                                     memory_order_relaxed))
            continue;
        atomic_store_explicit(&sl->pid, pid, memory_order_relaxed);
        sl->start = start;
        atomic_store_explicit(&sl->lost, 0, memory_order_relaxed);
        /* seq_cst fence: pairs with the fence in brk_bcast_limit (see there). */
        atomic_thread_fence(memory_order_seq_cst);
        /* acquire: pairs with brk_publish; we start with the next record. */
        uint64_t t = atomic_load_explicit(&r->hdr->tail, memory_order_acquire);
        if (t & 7) {
            atomic_store_explicit(&sl->state, mine | BRK_SLOT_FREE, memory_order_release);
            return BRK_CORRUPT;
        }
        /* relaxed: published by the release store of ACTIVE below */
        atomic_store_explicit(&sl->head, t, memory_order_relaxed);
        /* release: pairs with the producer's acquire load of the state in
         * brk_bcast_limit, which then sees our head. */
        atomic_store_explicit(&sl->state, mine | BRK_SLOT_ACTIVE, memory_order_release);
        r->slot = sl;
        r->slot_index = i;
        r->slot_word = mine | BRK_SLOT_ACTIVE;
        r->head = r->avail = t;
        r->lap_pending = 2; /* the first record's seq starts our count */
        /* A producer that saw us JOINING may sleep, waiting for room. The
         * fence orders our ACTIVE store before the flag load. */
        atomic_thread_fence(memory_order_seq_cst);
        brk_wake(r, &r->hdr->prod_wait);
        return 0;
    }
    return -ENOSPC;
}

int brk_bcast_leave(brk_ring *r)
{
    if (!r->slot)
        return -EINVAL;
    uint32_t word = r->slot_word;
    /* release: a later owner of the slot sees our writes finished. If the
     * CAS fails we were evicted and the slot is not ours to free. */
    atomic_compare_exchange_strong_explicit(&r->slot->state, &word, (word & ~(uint32_t)BRK_SLOT_MASK) | BRK_SLOT_FREE,
                                            memory_order_release, memory_order_relaxed);
    r->slot = NULL;
    r->held = 0;
    /* the producer may be waiting for us (lossless) */
    atomic_thread_fence(memory_order_seq_cst);
    brk_wake(r, &r->hdr->prod_wait);
    return 0;
}

int brk_bcast_evict(brk_ring *r, uint32_t slot)
{
    if (r->kind != BRK_KIND_BCAST || !r->hdr || slot >= r->max_consumers)
        return -EINVAL;
    struct brk_slot *sl = brk_slot_at(r, slot);
    uint32_t word = atomic_load_explicit(&sl->state, memory_order_relaxed);
    if ((word & BRK_SLOT_MASK) != BRK_SLOT_ACTIVE)
        return BRK_EMPTY;
    /* acq_rel CAS: only an ACTIVE owner is evicted; then a release fence so
     * that an evicted consumer that reads anything we write afterwards also
     * sees the eviction (pairs with brk_slot_ours). */
    if (!atomic_compare_exchange_strong_explicit(&sl->state, &word, (word & ~(uint32_t)BRK_SLOT_MASK) | BRK_SLOT_EVICTED,
                                                 memory_order_acq_rel, memory_order_relaxed))
        return BRK_BUSY;
    atomic_thread_fence(memory_order_release);
    /* wake every sleeping consumer so the evicted one notices */
    atomic_thread_fence(memory_order_seq_cst);
    brk_wake(r, &r->hdr->cons_wait);
    return 0;
}

int brk_bcast_slot_info(brk_ring *r, uint32_t slot, uint32_t *state, int32_t *pid, uint64_t *start, uint64_t *head)
{
    if (r->kind != BRK_KIND_BCAST || !r->hdr || slot >= r->max_consumers)
        return -EINVAL;
    struct brk_slot *sl = brk_slot_at(r, slot);
    /* acquire: the pid and head of an ACTIVE slot are the joiner's. */
    *state = atomic_load_explicit(&sl->state, memory_order_acquire) & BRK_SLOT_MASK;
    *pid = atomic_load_explicit(&sl->pid, memory_order_relaxed);
    *start = sl->start;
    *head = atomic_load_explicit(&sl->head, memory_order_relaxed);
    return 0;
}
