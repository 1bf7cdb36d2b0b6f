/* memcpy_bw.c: the floor of a copying send or receive here: one core copying 1 MiB blocks into an 8 MiB region. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(void)
{
    size_t n = 1 << 20;
    int reps = 4000;
    char *ring = malloc(8 << 20), *src = malloc(n);
    memset(ring, 1, 8 << 20);
    memset(src, 2, n);
    double t0 = now();
    for (int i = 0; i < reps; i++)
        memcpy(ring + (size_t)(i % 8) * n, src, n);
    double t = now() - t0;
    printf("C memcpy of 1 MiB into an 8 MiB region, one core: %.1f GB/s (checksum %d)\n", reps * (double)n / t / 1e9,
           ring[12345]);
    return 0;
}
