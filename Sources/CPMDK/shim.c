#include "cpmdk.h"
#include <errno.h>

int cpmdk_tx_begin(PMEMobjpool *pop) {
    int rc = pmemobj_tx_begin(pop, NULL, TX_PARAM_NONE);
    if (rc != 0) {
        /* A failed begin leaves the thread in ONABORT; it must still be ended. */
        pmemobj_tx_end();
        return rc;
    }
    pmemobj_tx_set_failure_behavior(POBJ_TX_FAILURE_RETURN);
    return 0;
}

int cpmdk_tx_finish(int abort_with) {
    if (pmemobj_tx_stage() == TX_STAGE_WORK) {
        if (abort_with != 0)
            pmemobj_tx_abort(abort_with);
        else
            pmemobj_tx_commit();
    }
    int err = pmemobj_tx_errno();
    if (pmemobj_tx_stage() != TX_STAGE_NONE) {
        int end_err = pmemobj_tx_end();
        if (err == 0) err = end_err;
    }
    if (err == 0 && abort_with != 0) err = abort_with;
    return err;
}

int cpmdk_tx_snapshot(void *ptr, size_t size) {
    return pmemobj_tx_add_range_direct(ptr, size);
}

uint64_t cpmdk_tx_zalloc(size_t size, uint64_t type_num) {
    PMEMoid oid = pmemobj_tx_xalloc(size, type_num, POBJ_XALLOC_ZERO);
    return oid.off;
}

int cpmdk_tx_free_off(uint64_t uuid_lo, uint64_t off) {
    PMEMoid oid = { uuid_lo, off };
    return pmemobj_tx_free(oid);
}

int cpmdk_tx_stage(void) { return (int)pmemobj_tx_stage(); }

size_t cpmdk_min_pool_size(void) { return PMEMOBJ_MIN_POOL; }

uint64_t cpmdk_pool_uuid_lo(PMEMobjpool *pop) {
    return pmemobj_root(pop, 0).pool_uuid_lo;
}

uint64_t cpmdk_root(PMEMobjpool *pop, size_t size) {
    PMEMoid oid = pmemobj_root(pop, size);
    return oid.off;
}

uint64_t cpmdk_first(PMEMobjpool *pop) { return pmemobj_first(pop).off; }

uint64_t cpmdk_next(PMEMobjpool *pop, uint64_t off) {
    PMEMoid oid = { cpmdk_pool_uuid_lo(pop), off };
    return pmemobj_next(oid).off;
}

uint64_t cpmdk_type_num(PMEMobjpool *pop, uint64_t off) {
    PMEMoid oid = { cpmdk_pool_uuid_lo(pop), off };
    return pmemobj_type_num(oid);
}

size_t cpmdk_usable_size(PMEMobjpool *pop, uint64_t off) {
    PMEMoid oid = { cpmdk_pool_uuid_lo(pop), off };
    return pmemobj_alloc_usable_size(oid);
}

void cpmdk_free_off(PMEMobjpool *pop, uint64_t off) {
    PMEMoid oid = { cpmdk_pool_uuid_lo(pop), off };
    pmemobj_free(&oid);
}

const char *cpmdk_errormsg(void) { return pmemobj_errormsg(); }

void cpmdk_persist(PMEMobjpool *pop, const void *addr, size_t len) {
    pmemobj_persist(pop, addr, len);
}
