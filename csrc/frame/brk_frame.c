/* brk_frame.c: the framework's frames as bytes, in plain C (no Python): the header, and a REQUEST.
 * src/shmbroker/protocol/frames.py defines the format (its module docstring); golden tests hold the two together. */

#include <string.h>

#include "brk_frame.h"

void brk_frame_header(unsigned char *p, unsigned type, unsigned flags, uint64_t length, uint64_t rid)
{
    memcpy(p, "BRK1", 4);
    p[4] = BRK_FRAME_VERSION;
    p[5] = (unsigned char)type;
    brk_frame_st(p + 6, flags, 2);
    brk_frame_st(p + 8, length, 4);
    brk_frame_st(p + 12, 0, 4);
    brk_frame_st(p + 16, rid, 8);
}

uint64_t brk_frame_request_size(const brk_frame_arg args[4])
{
    uint64_t size = BRK_FRAME_HEADER + BRK_FRAME_REQUEST_FIXED;
    for (int i = 0; i < 4; i++)
        size += args[i].kind == BRK_K_READ || args[i].kind == BRK_K_READWRITE ? args[i].len : 0;
    return size;
}

void brk_frame_put_request(unsigned char *p, uint64_t rid, int32_t code, uint32_t handle, int async,
                           const brk_frame_arg args[4])
{
    brk_frame_header(p, BRK_FRAME_REQUEST, async ? BRK_FRAME_FLAG_ASYNC : 0, brk_frame_request_size(args) - BRK_FRAME_HEADER,
                     rid);
    unsigned char *b = p + BRK_FRAME_HEADER, *pay = b + BRK_FRAME_REQUEST_FIXED;
    brk_frame_st(b, (uint64_t)(uint32_t)code, 4);
    brk_frame_st(b + 4, handle, 4);
    for (int i = 0; i < 4; i++) {
        unsigned char *d = b + 8 + 16 * i;
        memset(d, 0, 16);
        d[0] = (unsigned char)args[i].kind;
        if (args[i].kind == BRK_K_READ || args[i].kind == BRK_K_READWRITE) {
            brk_frame_st(d + 4, args[i].len, 4);
            brk_frame_st(d + 8, args[i].kind == BRK_K_READWRITE ? (uint64_t)args[i].value : 0, 8);
            if (args[i].len)
                memcpy(pay, args[i].data, (size_t)args[i].len);
            pay += args[i].len;
        } else {
            brk_frame_st(d + 8, (uint64_t)args[i].value, 8);
        }
    }
}

