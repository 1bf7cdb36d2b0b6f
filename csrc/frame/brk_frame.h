/* brk_frame.h: the framework's frame layout as C sees it, its constants and its plain-C encoders (brk_frame.c).
 * src/shmbroker/protocol/frames.py defines the format; csrc/py/ uses this. */
#ifndef BRK_FRAME_H
#define BRK_FRAME_H

#include <stdint.h>

#define BRK_FRAME_HEADER 24
#define BRK_FRAME_VERSION 1
#define BRK_FRAME_REQUEST 4
#define BRK_FRAME_COMPLETE 5
#define BRK_FRAME_FLAG_ASYNC 1
#define BRK_FRAME_REQUEST_FIXED (8 + 4 * 16) /* code, handle, four descriptors */
#define BRK_FRAME_COMPLETE_FIXED 8
#define BRK_FRAME_WRITE_HDR 8
#define BRK_FRAME_MAX_TEXT 4096
/* The most bytes of requests a client packs into one ring record, and the most the server's C takes in one look */
#define BRK_FRAME_BATCH_BYTES 4096

enum { BRK_K_NONE = 0, BRK_K_INT = 1, BRK_K_READ = 2, BRK_K_WRITE = 3, BRK_K_READWRITE = 4, BRK_K_HANDLE = 5,
       BRK_K_COUNT = 6 };

/* One argument of a REQUEST as it is written: its kind, its value (INT and
 * HANDLE: the value; WRITE and READWRITE: the max length) and its payload
 * (READ and READWRITE). */
typedef struct {
    int kind;
    int64_t value;
    const void *data;
    uint64_t len;
} brk_frame_arg;

/* Write a frame header at p (BRK_FRAME_HEADER bytes). */
void brk_frame_header(unsigned char *p, unsigned type, unsigned flags, uint64_t length, uint64_t rid);
/* Bytes of a REQUEST frame with these four arguments. */
uint64_t brk_frame_request_size(const brk_frame_arg args[4]);
/* Write it at p (brk_frame_request_size(args) bytes). */
void brk_frame_put_request(unsigned char *p, uint64_t rid, int32_t code, uint32_t handle, int async,
                           const brk_frame_arg args[4]);

/* Little-endian loads and stores, whatever the host. */
static inline uint64_t brk_frame_ld(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static inline void brk_frame_st(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

#endif
