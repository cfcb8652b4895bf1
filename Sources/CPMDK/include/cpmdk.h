/* Thin C shims over libpmemobj for Swift: the transaction entry point is
 * variadic and several constants are macros, neither of which Swift imports. */
#ifndef CPMDK_H
#define CPMDK_H

#define PMEMOBJ_DIRECT_NON_INLINE 1
#include <stddef.h>
#include <stdint.h>
#include <libpmemobj.h>
#include "pmfs_format.h"

/* Begins a transaction with no jmp_buf (errors come back as return codes)
 * and with failures returned to the caller instead of aborting the process. */
int cpmdk_tx_begin(PMEMobjpool *pop);
/* Commits if the transaction is still in its work stage, else aborts it;
 * always ends it. Returns 0 on commit, the error number otherwise. */
int cpmdk_tx_finish(int abort_with);
/* Snapshots [ptr, ptr+size) into the undo log. */
int cpmdk_tx_snapshot(void *ptr, size_t size);
/* Allocates a zeroed object of the given type in the transaction; 0 on failure. */
uint64_t cpmdk_tx_zalloc(size_t size, uint64_t type_num);
int cpmdk_tx_free_off(uint64_t uuid_lo, uint64_t off);
int cpmdk_tx_stage(void);

size_t cpmdk_min_pool_size(void);
uint64_t cpmdk_pool_uuid_lo(PMEMobjpool *pop);
/* The root object's offset, allocating it (zeroed) if needed. */
uint64_t cpmdk_root(PMEMobjpool *pop, size_t size);
/* Iterates every allocated object: returns the first/next offset or 0. */
uint64_t cpmdk_first(PMEMobjpool *pop);
uint64_t cpmdk_next(PMEMobjpool *pop, uint64_t off);
uint64_t cpmdk_type_num(PMEMobjpool *pop, uint64_t off);
size_t cpmdk_usable_size(PMEMobjpool *pop, uint64_t off);
/* Frees an object outside of any transaction (fsck repair of leaks). */
void cpmdk_free_off(PMEMobjpool *pop, uint64_t off);
const char *cpmdk_errormsg(void);
void cpmdk_persist(PMEMobjpool *pop, const void *addr, size_t len);

/* Swift does not import C arrays this large; hand it the element pointer. */
static inline uint64_t *cpmdk_inode_table_chunks(struct pmfs_inode_table *t) { return t->chunk_off; }

#endif
