/* The FUSE kernel ABI (linux/fuse.h from linux-libc-dev, protocol 7.38) for
 * Swift, plus the few mount(2) and fcntl constants Swift's Glibc lacks. */
#ifndef CFUSE_H
#define CFUSE_H

#include <stdint.h>
#include <linux/fuse.h>
#include <sys/mount.h>
#include "cfuse_uring.h"

static const uint32_t cfuse_kernel_version = FUSE_KERNEL_VERSION;
static const uint32_t cfuse_kernel_minor_version = FUSE_KERNEL_MINOR_VERSION;
static const uint64_t cfuse_ms_nosuid = MS_NOSUID;
static const uint64_t cfuse_ms_nodev = MS_NODEV;
static const int cfuse_mnt_detach = MNT_DETACH;

#endif
