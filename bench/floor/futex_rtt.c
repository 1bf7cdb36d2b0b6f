/* futex_rtt.c: the floor of a sleeping round trip here: two processes hand a futex word back and forth, both sleeping every time. */
#define _GNU_SOURCE
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void fx(_Atomic uint32_t *w, int op, uint32_t v) { syscall(SYS_futex, (uint32_t *)w, op, v, NULL, NULL, 0); }

static uint64_t now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int gap_us = argc > 1 ? atoi(argv[1]) : 1000, n = 3000;
    _Atomic uint32_t *w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    _Atomic uint32_t *ping = w, *pong = w + 32;
    if (fork() == 0) {
        for (int i = 0; i < n; i++) {
            while (atomic_load(ping) == 0)
                fx(ping, FUTEX_WAIT, 0);
            atomic_store(ping, 0);
            atomic_store(pong, 1);
            fx(pong, FUTEX_WAKE, 1);
        }
        _exit(0);
    }
    uint64_t *lat = malloc(sizeof *lat * (size_t)n);
    for (int i = 0; i < n; i++) {
        usleep((useconds_t)gap_us);
        uint64_t t0 = now();
        atomic_store(ping, 1);
        fx(ping, FUTEX_WAKE, 1);
        while (atomic_load(pong) == 0)
            fx(pong, FUTEX_WAIT, 0);
        atomic_store(pong, 0);
        lat[i] = now() - t0;
    }
    wait(NULL);
    qsort(lat, (size_t)n, sizeof *lat, cmp);
    printf("C futex ping-pong, both sleep, %d us gaps: p50 %.1f us, p99 %.1f us\n", gap_us, lat[n / 2] / 1e3,
           lat[n * 99 / 100] / 1e3);
    return 0;
}
