/* brk_ring.h: the whole ABI of broker's shared-memory rings; cffi's cdef reads this file verbatim. */

/*
 * Rules for this file: no #include, no conditionals, no function-like macros,
 * because cffi parses it as it is. Integer #defines only. Every name starts
 * with brk_ / BRK_. Layout offsets are checked by _Static_assert in brk_ring.c.
 *
 * A segment is: struct brk_seg_hdr, then one or more rings. A ring is:
 * struct brk_ring_hdr, then (broadcast only) max_consumers slots of
 * struct brk_slot, then `capacity` bytes of records.
 *
 * A record is a 16-byte struct brk_rec followed by its payload, padded to
 * 8 bytes. Positions are 64-bit byte counters that only grow; the offset in
 * the data area is position & (capacity - 1). A record never wraps: if it
 * does not fit before the end, the producer writes a PAD record over the
 * rest (or, if fewer than 16 bytes are left, nothing: an implicit pad that
 * every reader skips).
 *
 * Return values: 0 on success, a positive BRK_* outcome below, or -errno.
 */

#define BRK_SEG_MAGIC      0x3147455352524b42
#define BRK_ABI_VERSION    1
#define BRK_MAX_RINGS      4
#define BRK_NONCE_BYTES    32

#define BRK_KIND_SPSC      1
#define BRK_KIND_BCAST     2

#define BRK_FLAG_LOSSY     1

#define BRK_ROLE_PRODUCER  1
#define BRK_ROLE_CONSUMER  2

#define BRK_REC_HDR        16
#define BRK_REC_DATA       0x41544144
#define BRK_REC_PAD        0x44415050

#define BRK_MIN_CAPACITY   256
#define BRK_MAX_CAPACITY   1099511627776
#define BRK_MAX_CONSUMERS  1024
#define BRK_WAIT_ANY_MAX   64
#define BRK_PY_BATCH_MAX   4096  /* records one recv_many call returns at most (csrc/py/ring.c) */
/* A topic publisher's ring record (src/shmbroker/services/topics/wire.py RECORD_HEAD reads these): its header's
 * bytes, and the most meta a message may have (a numpy array's dtype and shape). */
#define BRK_TOPIC_HEAD     20
#define BRK_TOPIC_META     4096

/* A slot's state word: the low 8 bits are the state, the rest a generation
 * that every join increments, so an evicted consumer never mistakes a new
 * owner of its slot for itself. */
#define BRK_SLOT_FREE      0
#define BRK_SLOT_JOINING   1
#define BRK_SLOT_ACTIVE    2
#define BRK_SLOT_EVICTED   3
#define BRK_SLOT_MASK      255
#define BRK_PID_CLOSED     -1

#define BRK_WAIT_NONE      0
#define BRK_WAIT_FUTEX     1
#define BRK_WAIT_EVENTFD   2

#define BRK_OK             0
#define BRK_EMPTY          1
#define BRK_FULL           2
#define BRK_TOOBIG         3
#define BRK_CORRUPT        4
#define BRK_LAPPED         5
#define BRK_TIMEOUT        6
#define BRK_EVICTED        7
#define BRK_BUSY           8
#define BRK_LOST           9
#define BRK_NOTREADY       10
#define BRK_BADSEG         11
#define BRK_CLOSED         12
#define BRK_INTERRUPTED    13
/* the session calls' own outcomes (csrc/py/client.c call_many) */
#define BRK_MANY_UNUSUAL   100 /* argsets[sent] is not for C (another kind, too big): Python sends it */
#define BRK_MANY_ODD       101 /* a record's rest that C did not take is the last item of `odd` */

/* The first bytes of every segment. Written once by the creator. */
struct brk_seg_hdr {
    uint64_t magic;                 /* BRK_SEG_MAGIC */
    uint32_t abi_version;           /* BRK_ABI_VERSION */
    uint32_t header_size;           /* sizeof(struct brk_seg_hdr) */
    uint64_t features;              /* reserved feature bits, 0 for now */
    uint64_t total_size;            /* bytes in the whole segment */
    int32_t  creator_pid;
    uint32_t n_rings;
    uint64_t creator_start;         /* creator's start time, clock ticks after boot */
    uint64_t ring_offset[4];        /* from the segment's start */
    uint64_t ring_size[4];          /* header + slots + data */
    uint8_t  nonce[32];             /* written by the creator for the session proof */
    _Atomic uint32_t ready;         /* 1 once the creator has formatted everything */
    uint32_t _pad0;
    uint8_t  _pad1[104];
};

/* Per-ring control block. Lines are 128 bytes apart so that the producer's
 * and the consumer's hot words never share an adjacent-line prefetch pair. */
struct brk_ring_hdr {
    /* line 0: fixed at creation, copied and checked by every attach */
    uint32_t kind;                  /* BRK_KIND_* */
    uint32_t flags;                 /* BRK_FLAG_* */
    uint64_t capacity;              /* data bytes, a power of two */
    uint64_t max_record;            /* largest payload in bytes */
    uint64_t data_offset;           /* from the start of this header */
    uint64_t slots_offset;          /* from the start of this header (broadcast) */
    uint32_t max_consumers;         /* broadcast slots, 0 for SPSC */
    uint32_t slot_size;             /* sizeof(struct brk_slot) */
    uint8_t  _pad0[80];
    /* line 1: written by the producer */
    _Atomic uint64_t tail;          /* end of the last committed record */
    _Atomic uint64_t reserve;       /* broadcast: end of the record being written */
    _Atomic uint64_t oldest;        /* broadcast lossy: oldest record not overwritten */
    _Atomic int32_t  producer_pid;
    uint32_t _pad1;
    uint64_t producer_start;
    _Atomic uint32_t producer_cpu;  /* 1 + the CPU of the producer's last publish, 0 unknown: a hint for waiters */
    uint32_t _pad7;
    uint8_t  _pad2[80];
    /* line 2: written by the consumer (SPSC) */
    _Atomic uint64_t head;          /* end of the last released record */
    _Atomic int32_t  consumer_pid;
    uint32_t _pad3;
    uint64_t consumer_start;
    _Atomic uint32_t consumer_cpu;  /* SPSC: 1 + the CPU of the consumer's last release, 0 unknown: a hint */
    uint32_t _pad8;
    uint8_t  _pad4[96];
    /* line 3: consumers' sleeping flag and futex word. SPSC: BRK_WAIT_* of
     * the one consumer. Broadcast: an epoch that wakers increment (so a
     * sleeper never mistakes an old wake-up for none), with a count of the
     * sleepers on it, and a count of those that poll the producer's eventfd. */
    _Atomic uint32_t cons_wait;
    _Atomic uint32_t cons_sleepers;
    _Atomic uint32_t cons_pollers;  /* broadcast: consumers asleep in poll() on the producer's doorbell (brk_arm) */
    uint8_t  _pad5[116];
    /* line 4: the producer's sleeping flag and futex word (BRK_WAIT_*) */
    _Atomic uint32_t prod_wait;
    uint8_t  _pad6[124];
};

/* One broadcast consumer's cursor, on its own pair of lines. */
struct brk_slot {
    _Atomic uint32_t state;         /* BRK_SLOT_* */
    _Atomic int32_t  pid;
    uint64_t start;                 /* the consumer's start time */
    _Atomic uint64_t head;          /* end of the last released record */
    _Atomic uint64_t lost;          /* records this consumer lost (lossy), for statistics */
    uint8_t  _pad[96];
};

/* A record header. */
struct brk_rec {
    uint32_t len;                   /* payload bytes (PAD: bytes after this header) */
    uint32_t type;                  /* BRK_REC_DATA or BRK_REC_PAD */
    uint64_t seq;                   /* record number; a PAD carries the next record's */
};

/* How to lay out one ring of a new segment. */
typedef struct brk_ring_spec {
    uint32_t kind;
    uint32_t flags;
    uint64_t capacity;
    uint32_t max_consumers;
    uint32_t _reserved;
} brk_ring_spec;

/* A process-local handle on one side of one ring. Never in shared memory:
 * everything here is trusted, copied from the segment and checked at attach. */
typedef struct brk_ring {
    struct brk_ring_hdr *hdr;
    unsigned char *data;
    struct brk_slot *slot;          /* broadcast consumer: our slot */
    uint64_t capacity;
    uint64_t mask;
    uint64_t max_record;
    uint32_t kind;
    uint32_t flags;
    uint32_t role;
    uint32_t slot_index;
    uint32_t max_consumers;
    int32_t  efd_notify;            /* eventfd written to wake the other side, or -1 */
    int32_t  efd_wait;              /* eventfd this side sleeps on, or -1 */
    uint32_t lap_pending;           /* consumer: 1 lapped (loss counted at the next record), 2 take the next seq as is */
    uint32_t slot_word;             /* broadcast consumer: our slot's state word while we own it */
    uint32_t pure_spin_ns;          /* a wait spins this long before it yields between looks (brk_wait) */
    /* producer */
    uint64_t tail;                  /* our committed end (mirrors hdr->tail) */
    uint64_t limit;                 /* cached: we may write below this without looking */
    uint64_t reserved;              /* lossy: highest reserve announced (never goes back) */
    uint64_t seq;                   /* sequence number of the next record */
    uint64_t claim_pos;             /* start of the claimed record (after any pad) */
    uint64_t claim_pad;             /* bytes of pad in front of it */
    uint64_t claim_max;             /* bytes claimed */
    uint32_t claimed;               /* 1 while a claim is outstanding */
    uint32_t _r0;
    unsigned char *wptr;            /* where the claimed payload goes */
    /* consumer */
    uint64_t head;                  /* start of the next record to read */
    uint64_t avail;                 /* cached tail */
    uint64_t expect;                /* sequence number expected next */
    uint64_t held_pos;              /* start of the record lent out by peek */
    uint64_t held_next;             /* position after it */
    uint64_t held_seq;              /* its sequence number */
    uint32_t held;                  /* 1 while a peeked record is lent out */
    uint32_t _r1;
    unsigned char *rptr;            /* the lent record's payload */
    uint64_t rlen;                  /* its length (also the length of the last copy) */
    uint64_t count;                 /* records moved by the last batch call */
    uint64_t count_bytes;           /* their payload bytes */
    uint64_t last_lost;             /* records lost just before the last one returned */
    /* waiting */
    uint64_t spin_ns;               /* how long to spin before sleeping */
    _Atomic uint32_t interrupt;     /* set by brk_interrupt (another thread): waits and sends return BRK_INTERRUPTED */
    int32_t  alive_fd1;             /* producer: 1 + a descriptor that hangs up when the reader's process dies
                                     * (a session's socket), looked at every BRK_ALIVE_NS by sends; 0: none */
    uint32_t _r2;
    uint64_t alive_next;            /* CLOCK_MONOTONIC_COARSE ns of its next look */
    uint32_t busy;                  /* calls in progress without the GIL (kept by the Python layer) */
    /* statistics, process-local */
    uint64_t records;
    uint64_t bytes;
    uint64_t lost;
    uint64_t laps;
    uint64_t sleeps;                /* times this side went to sleep */
    uint64_t wakeups;               /* wake-ups this side sent */
    uint64_t full_waits;            /* producer: waits for space */
    uint64_t shared_cpu_waits;      /* wait plans that found the other side last ran on this CPU (brk_plan) */
} brk_ring;

/* Segments */
int brk_seg_layout(const brk_ring_spec *specs, uint32_t n, uint64_t *offsets, uint64_t *sizes, uint64_t *total);
int brk_seg_format(void *base, uint64_t total, const brk_ring_spec *specs, uint32_t n, int32_t pid, uint64_t start, const uint8_t *nonce);
int brk_seg_check(const void *base, uint64_t mapped, struct brk_seg_hdr *out);

/* Attaching one side. A broadcast consumer also joins a slot (brk_bcast_join). */
int brk_ring_attach(brk_ring *r, void *base, uint64_t mapped, uint32_t index, uint32_t role, int32_t pid, uint64_t start);
int brk_ring_detach(brk_ring *r);

/* Producer */
int brk_claim(brk_ring *r, uint64_t len);
int brk_commit(brk_ring *r, uint64_t len);
int brk_abort(brk_ring *r);
int brk_send(brk_ring *r, const void *data, uint64_t len);
/* lens[0..n) are the lengths of the records packed back to back in data[0..data_len):
 * -EINVAL if they add up to more than data_len. count and count_bytes say what was sent. */
int brk_send_many(brk_ring *r, const void *data, uint64_t data_len, const uint64_t *lens, uint64_t n);
/* Gather: records bufs[i] of lens[i] bytes, published together; count says how many went. */
int brk_send_vec(brk_ring *r, const void *const *bufs, const uint64_t *lens, uint64_t n);
int brk_wait_space(brk_ring *r, uint64_t len, int64_t timeout_ns);

/* Consumer */
int brk_peek(brk_ring *r);
int brk_release(brk_ring *r);
int brk_unpeek(brk_ring *r);
int brk_recv(brk_ring *r, void *dst, uint64_t cap);
int brk_recv_wait(brk_ring *r, void *dst, uint64_t cap, int64_t timeout_ns);
int brk_recv_many(brk_ring *r, void *dst, uint64_t cap, uint64_t *lens, uint64_t max);
int brk_wait_data(brk_ring *r, int64_t timeout_ns);
int brk_spin_data(brk_ring *r, int64_t spin_ns);
/* SPSC: the consumer will sleep on efd_wait (0) or has records waiting (BRK_BUSY). Broadcast: the
 * consumer counts itself a sleeper, woken through the producer's efd_notify, until brk_disarm. */
int brk_arm(brk_ring *r);
int brk_disarm(brk_ring *r);
int brk_interrupt(brk_ring *r);
/* Bytes not yet consumed (>= 0), or -errno. */
int64_t brk_backlog(brk_ring *r);

/* Broadcast membership */
int brk_bcast_join(brk_ring *r, int32_t pid, uint64_t start);
int brk_bcast_leave(brk_ring *r);
int brk_bcast_evict(brk_ring *r, uint32_t slot);
int brk_bcast_reclaim(brk_ring *r, uint32_t slot);
/* *state is the whole state word: BRK_SLOT_* in the low 8 bits, the generation above. */
int brk_bcast_slot_info(brk_ring *r, uint32_t slot, uint32_t *state, int32_t *pid, uint64_t *start, uint64_t *head);

/* Several SPSC consumers (futex sleepers) of this process at once, and a bell: *which is the
 * index of a ring with something to look at, or n when the bell's word is no longer bell_seen
 * (bell_word may be NULL); 0, BRK_TIMEOUT, or -errno. brk_bell_ring moves the word on and wakes. */
int brk_wait_any(brk_ring *const *rings, uint32_t n, uint32_t *bell_word, uint32_t bell_seen, int64_t spin_ns,
                 int64_t timeout_ns, uint32_t *which);
void brk_bell_ring(uint32_t *bell);

/* Wake-ups: brk_eventfd returns a new non-blocking eventfd (>= 0) or -errno. */
int brk_eventfd(void);
int brk_close_fd(int fd);
