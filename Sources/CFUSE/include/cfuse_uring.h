/* FUSE over io_uring (Linux 6.14+, protocol 7.41): the parts of the ABI that
 * linux/fuse.h from Debian 12's linux-libc-dev (6.1) lacks. Layout as in
 * include/uapi/linux/fuse.h and Documentation/filesystems/fuse-io-uring.rst;
 * own names (cfuse_) so a newer system header cannot clash. */
#ifndef CFUSE_URING_H
#define CFUSE_URING_H

#include <stdint.h>

/* INIT flag (bit 9 of flags2): the server takes requests from io_uring queues. */
static const uint64_t cfuse_over_io_uring = 1ULL << 41;

#define CFUSE_URING_IN_OUT_HEADER_SZ 128
#define CFUSE_URING_OP_IN_OUT_SZ 128
static const uint32_t cfuse_uring_op_in_size = CFUSE_URING_OP_IN_OUT_SZ;

/* IORING_OP_URING_CMD sub-commands on the /dev/fuse descriptor. */
static const uint32_t cfuse_io_uring_cmd_register = 1;          /* give the kernel an entry, fetch a request */
static const uint32_t cfuse_io_uring_cmd_commit_and_fetch = 2;  /* reply to the entry's request, fetch the next */

/* Kernel <-> server bookkeeping of one ring entry. */
struct cfuse_uring_ent_in_out {
    uint64_t flags;
    uint64_t commit_id;   /* the request's id, echoed in the commit */
    uint32_t payload_sz;  /* bytes of the payload buffer in use (request in, reply out) */
    uint32_t padding;
    uint64_t reserved;
};

/* The header buffer of a ring entry (iovec 0). */
struct cfuse_uring_req_header {
    uint8_t in_out[CFUSE_URING_IN_OUT_HEADER_SZ];  /* fuse_in_header in, fuse_out_header out */
    uint8_t op_in[CFUSE_URING_OP_IN_OUT_SZ];       /* the opcode's first argument (fuse_*_in) */
    struct cfuse_uring_ent_in_out ring_ent_in_out;
};

/* The 80-byte command area of a 128-byte SQE. */
struct cfuse_uring_cmd_req {
    uint64_t flags;
    uint64_t commit_id;
    uint16_t qid;
    uint8_t padding[6];
};

_Static_assert(sizeof(struct cfuse_uring_ent_in_out) == 32, "fuse_uring_ent_in_out layout");
_Static_assert(sizeof(struct cfuse_uring_req_header) == 288, "fuse_uring_req_header layout");
_Static_assert(sizeof(struct cfuse_uring_cmd_req) == 24, "fuse_uring_cmd_req layout");

#endif
