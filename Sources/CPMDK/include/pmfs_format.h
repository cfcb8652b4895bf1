/*
 * pmfs on-media format, version 2 (version 1 plus the shared-block refcount tree).
 *
 * Every persistent structure of the metadata pool, with fixed-width fields so
 * the layout does not depend on the compiler. design/format.md explains each
 * field; keep the two in step. All references between objects are byte
 * offsets inside the pool (0 = none), not PMEMoids: the pool has one UUID, and
 * an offset is half the size and is checked against the pool size on use.
 * Integers are little-endian (the only byte order pmfs runs on).
 */
#ifndef PMFS_FORMAT_H
#define PMFS_FORMAT_H

#include <stdint.h>

#define PMFS_LAYOUT_NAME "pmfs"
#define PMFS_MAGIC 0x3153464d50ULL          /* "PMFS1" */
#define PMFS_FORMAT_VERSION 2u
/* Version 2 added superblock.refcount_root/refcount_records; a v1 pool is upgraded at open. */
#define PMFS_FORMAT_VERSION_REFCOUNT 2u
/* Feature bits: an incompatible bit this code does not know refuses the pool;
 * a read-only-compatible bit it does not know allows a read-only open. */
#define PMFS_INCOMPAT_KNOWN 0ull
/* Some inodes carry PMFS_INODE_READONLY (read-only snapshots): a writer that
 * does not know the flag would let them be changed. */
#define PMFS_ROCOMPAT_READONLY_INODES 0x1ull
#define PMFS_ROCOMPAT_KNOWN PMFS_ROCOMPAT_READONLY_INODES

#define PMFS_STATE_CLEAN 1u
#define PMFS_STATE_IN_USE 2u

#define PMFS_ROOT_INO 1ull

/* pmemobj type numbers, so fsck can classify every allocated object. */
enum pmfs_type_num {
    PMFS_T_SUPERBLOCK = 1,
    PMFS_T_INODE_TABLE = 2,
    PMFS_T_INODE_CHUNK = 3,
    PMFS_T_SPACE_BITMAP = 4,
    PMFS_T_DIRECTORY = 5,
    PMFS_T_DIRENT_CHUNK = 6,
    PMFS_T_BUCKET_CHUNK = 7,
    PMFS_T_NAME = 8,
    PMFS_T_SYMLINK = 9,
    PMFS_T_XATTRS = 10,
    PMFS_T_EXTENT_NODE = 11,
    PMFS_T_RESERVE = 12,
    PMFS_T_REFCOUNT_NODE = 13,
};

struct pmfs_timespec {
    int64_t sec;
    uint32_t nsec;
    uint32_t reserved;
};

/* The pool's root object. */
struct pmfs_superblock {
    uint64_t magic;
    uint32_t format_version;
    uint32_t state;                /* PMFS_STATE_* */
    uint64_t incompat_features;
    uint64_t rocompat_features;
    uint8_t uuid[16];              /* the file system's UUID */
    char label[64];                /* NUL-padded */
    uint32_t block_size;           /* bytes per data block (4096) */
    uint32_t inodes_per_chunk;     /* PMFS_INODES_PER_CHUNK */
    uint64_t data_blocks;          /* size of the data device in blocks */
    uint8_t data_uuid[16];         /* must match the data device header */
    uint64_t hash_seed;            /* secret seed of directory name hashes */
    uint64_t inode_table_off;      /* struct pmfs_inode_table */
    uint64_t space_bitmap_off;     /* struct pmfs_space_bitmap */
    uint64_t orphan_head;          /* first inode of the orphan list, 0 = empty */
    uint64_t mount_count;
    uint64_t unclean_count;        /* opens that found the pool not clean */
    struct pmfs_timespec created;
    struct pmfs_timespec last_open;
    uint64_t reserve_off;          /* pool space kept back for write-back (PMFS_T_RESERVE), 0 = none */
    /* v2: shared data blocks. A B+-tree of pmfs_extent_node (PMFS_T_REFCOUNT_NODE)
     * keyed by device block; a record { device_block = key, length, flags = count }
     * says device blocks [key, key+length) have `count` (>= 2) owners. A used
     * block with no record has one owner. 0 = no shared blocks. */
    uint64_t refcount_root;
    uint64_t refcount_records;     /* records in the refcount tree */
    uint8_t reserved[232];
};

/* Inode numbers are table positions: ino = chunk * PMFS_INODES_PER_CHUNK + slot.
 * Number 0 is never used, 1 is the root directory. */
#define PMFS_INODES_PER_CHUNK 4096u
#define PMFS_MAX_INODE_CHUNKS 16384u

struct pmfs_inode_table {
    uint64_t chunk_count;                       /* chunks allocated */
    uint64_t chunk_off[PMFS_MAX_INODE_CHUNKS];  /* struct pmfs_inode[4096] each */
};

/* Inode flags (pmfs_inode.flags). */
#define PMFS_INODE_ORPHAN 0x1u   /* on the orphan list (nlink == 0, still referenced) */
#define PMFS_INODE_READONLY 0x2u /* part of a read-only snapshot: no change through the file system (EROFS) */
#define PMFS_INODE_FLAGS_KNOWN (PMFS_INODE_ORPHAN | PMFS_INODE_READONLY)

/* One inode, 256 bytes. mode == 0 marks a free slot; generation survives
 * freeing and is bumped on reuse so (ino, generation) names one file forever. */
struct pmfs_inode {
    uint32_t mode;
    uint32_t nlink;
    uint32_t uid;
    uint32_t gid;
    uint64_t generation;
    uint64_t size;
    uint64_t blocks;            /* 512-byte units allocated on the data device */
    uint64_t rdev;              /* device number of a char/block special file */
    struct pmfs_timespec atime;
    struct pmfs_timespec mtime;
    struct pmfs_timespec ctime;
    struct pmfs_timespec btime; /* creation */
    uint64_t parent;            /* directories: the parent directory's ino */
    uint32_t flags;             /* PMFS_INODE_* */
    uint32_t attr_flags;        /* chattr-style flags, kept for the FUSE layer */
    uint64_t content_off;       /* dir: pmfs_directory; reg: extent tree root node; lnk: pmfs_blob */
    uint64_t xattr_off;         /* pmfs_blob holding packed xattr records, 0 = none */
    uint64_t orphan_next;       /* orphan list links (inode numbers) */
    uint64_t orphan_prev;
    uint64_t extent_count;      /* regular files: extents in the tree */
    uint8_t reserved[88];
};

/* Free-space map of the data device: one bit per block, 1 = in use. Blocks
 * [0, reserved_blocks) hold the data device header and are always in use. */
struct pmfs_space_bitmap {
    uint64_t block_count;
    uint64_t reserved_blocks;
    uint64_t word_count;
    uint64_t reserved;
    uint64_t words[];
};

/* A counted byte string: long names, symlink targets, xattr records. */
struct pmfs_blob {
    uint64_t length;
    uint8_t bytes[];
};

/*
 * Directories: linear hashing over chained entries.
 * Entries live in "slots"; a slot's index never changes while the entry
 * exists, so readdir cookies are slot positions and stay valid while the
 * directory changes. Slots and buckets are stored in chunks that grow
 * geometrically: chunk k holds PMFS_DIR_CHUNK0 << k items, so index i is in
 * chunk floor(log2(i / CHUNK0 + 1)).
 */
#define PMFS_DIR_CHUNK0 16u
#define PMFS_DIR_MAX_CHUNKS 27u   /* 16 * (2^27 - 1) slots: over 2 billion entries */
#define PMFS_DIR_INLINE_NAME 40u
#define PMFS_NAME_MAX 255u

struct pmfs_directory {
    uint64_t entry_count;       /* live entries (not counting . and ..) */
    uint64_t slot_count;        /* slots ever used (high-water mark) */
    uint64_t free_slot;         /* head of the free-slot list, slot index + 1, 0 = empty */
    uint64_t bucket_count;      /* buckets in use = (CHUNK0 << level) + split */
    uint32_t level;
    uint32_t reserved0;
    uint64_t split;             /* next bucket to split */
    uint64_t subdir_count;      /* entries that are directories (for nlink) */
    uint64_t slot_chunk_off[PMFS_DIR_MAX_CHUNKS];   /* struct pmfs_dirent[] */
    uint64_t bucket_chunk_off[PMFS_DIR_MAX_CHUNKS]; /* uint64_t[]: first slot + 1 of each chain */
};

/* One directory entry, 64 bytes. ino == 0 marks a free slot. */
struct pmfs_dirent {
    uint64_t ino;
    uint64_t next;              /* next slot + 1 in the bucket chain (or the free list) */
    uint32_t hash;              /* seeded hash of the name */
    uint8_t type;               /* DT_* of the target */
    uint8_t name_length;        /* 1..255 */
    uint16_t reserved;
    union {
        uint8_t inline_name[PMFS_DIR_INLINE_NAME]; /* names up to 40 bytes */
        uint64_t name_off;                          /* longer names: a pmfs_blob */
    } name;
};

/*
 * Extent maps: a B+-tree per regular file, keyed by file block.
 * A leaf value maps [key, key + length) to device blocks [device_block, +length).
 * Blocks not covered by any extent are holes.
 */
#define PMFS_EXTENT_FANOUT 30u
#define PMFS_EXTENT_UNWRITTEN 0x1u  /* allocated (fallocate) but reads as zeros */

struct pmfs_extent {
    uint64_t device_block;
    uint32_t length;
    uint32_t flags;
};

struct pmfs_extent_node {
    uint32_t key_count;
    uint32_t is_leaf;
    uint64_t reserved;
    uint64_t keys[PMFS_EXTENT_FANOUT];
    union {
        struct pmfs_extent extents[PMFS_EXTENT_FANOUT];   /* leaves */
        uint64_t children[PMFS_EXTENT_FANOUT + 1];        /* inner nodes: node offsets */
    } u;
};

/* Header of the data device, in its block 0. */
#define PMFS_DATA_MAGIC 0x41544144534d4650ULL  /* "PMFSDATA" */
struct pmfs_data_header {
    uint64_t magic;
    uint32_t format_version;
    uint32_t block_size;
    uint64_t block_count;
    uint8_t fs_uuid[16];
    uint8_t data_uuid[16];
    uint64_t checksum;          /* FNV-1a 64 of the bytes before this field */
};

/* The sizes design/format.md promises; a change here is a format change. */
_Static_assert(sizeof(struct pmfs_superblock) == 480, "superblock size");
_Static_assert(sizeof(struct pmfs_inode) == 256, "inode size");
_Static_assert(sizeof(struct pmfs_directory) == 488, "directory header size");
_Static_assert(sizeof(struct pmfs_dirent) == 64, "dirent size");
_Static_assert(sizeof(struct pmfs_extent_node) == 736, "extent node size");
_Static_assert(sizeof(struct pmfs_data_header) == 64, "data header size");

#endif
