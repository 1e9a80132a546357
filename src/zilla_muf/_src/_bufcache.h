/* A NumPy memory handler that keeps the large blocks it frees for reuse.
 *
 * A fresh block of memory is mapped by the system page by page on first
 * touch, and each page is zeroed then; for outputs of tens of megabytes that
 * costs about as much as a pass over them. Blocks of at least zm_min bytes
 * that arrays allocated with this handler free are kept, up to zm_limit
 * bytes in all (oldest evicted first), and handed to the next allocation
 * they fit with at most a quarter to spare. The limit starts at 0 (nothing
 * kept): the cache is opt-in.
 *
 * Every block carries a header just below its 64-byte aligned data: the
 * address the C allocator returned, and the block's size. A block has room
 * to place its data at any 64-byte offset in a page, so that an output can
 * be put where the stores into it do not alias the loads of its inputs
 * (zm_pick). Only zm_malloc takes blocks from the cache (zm_calloc must
 * return zeros); zm_realloc and zm_free accept every block of this handler.
 */
#ifndef ZILLA_MUF_BUFCACHE_H
#define ZILLA_MUF_BUFCACHE_H

#include <Python.h>
#include <pythread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <numpy/ndarraytypes.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#define ZM_ALIGN 64
#define ZM_PAGE 4096
#define ZM_SLOTS 8
#define ZM_HUGE ((size_t)1 << 22)
/* A kernel's loads of an input run a little ahead of its stores into the
   output. When the output sits 0 to ZM_NEAR - 1 bytes past the input
   modulo the page, a load shares the low 12 address bits of a store still
   pending, and the processor may take it to depend on the store and wait
   (4K aliasing). */
#define ZM_NEAR 256

typedef struct {
    void *base;     /* what malloc/calloc/realloc returned */
    size_t total;   /* bytes from base */
} zm_header;

/* Bytes a block has beyond its data: the header, and room to put the data
   at any 64-byte offset in a page. */
#define ZM_EXTRA (sizeof(zm_header) + ZM_PAGE - 1)

typedef struct {
    void *base;
    size_t total;
    unsigned long long stamp;
} zm_slot;

static PyThread_type_lock zm_lock = NULL;
static zm_slot zm_slots[ZM_SLOTS];
static size_t zm_cached = 0;
static size_t zm_limit = 0;
static size_t zm_min = (size_t)1 << 20;
static unsigned long long zm_clock = 0, zm_hits = 0, zm_misses = 0;
/* The page offset wanted for the next block (-1: any). Set and cleared
   around one allocation by a caller holding the GIL. */
static long zm_want = -1;

static inline zm_header *zm_head(void *data)
{
    return (zm_header *)((char *)data - sizeof(zm_header));
}

static inline size_t zm_usable(size_t total)
{
    return total - ZM_EXTRA;
}

/* The data address in the block at `base`: 64-byte aligned, at page offset
   `want` when that is not negative. */
static inline char *zm_addr(void *base, long want)
{
    uintptr_t p = ((uintptr_t)base + sizeof(zm_header) + ZM_ALIGN - 1)
                  & ~(uintptr_t)(ZM_ALIGN - 1);
    if (want >= 0)
        p += ((uintptr_t)want - p) & (uintptr_t)(ZM_PAGE - 1);
    return (char *)p;
}

/* zm_addr, with the block's header written just below the data. */
static char *zm_place(void *base, size_t total, long want)
{
    char *p = zm_addr(base, want);
    zm_head(p)->base = base;
    zm_head(p)->total = total;
    return p;
}

/* A page offset for an output that none of the `k` inputs at `near` has a
   load 0 to ZM_NEAR - 1 bytes ahead of, as the output's stores trail the
   inputs' loads; about half a page away from the first if that is free. */
static long zm_pick(const size_t *near, int k)
{
    long c, o, d;
    int i, ok;
    for (c = 0; c < ZM_PAGE / ZM_ALIGN; c++) {
        o = (long)((near[0] + ZM_PAGE / 2 + (uintptr_t)c * ZM_ALIGN)
                   & (uintptr_t)(ZM_PAGE - ZM_ALIGN));
        ok = 1;
        for (i = 0; i < k; i++) {
            d = (long)(((uintptr_t)o - near[i]) & (uintptr_t)(ZM_PAGE - 1));
            if (d < ZM_NEAR)
                ok = 0;
        }
        if (ok)
            return o;
    }
    return -1;
}

/* Whether to ask for huge pages: NumPy's switch
   (np._core.multiarray._set_madvise_hugepage), read by the caller that
   sets zm_want, before each allocation. */
static int zm_hugepage = 1;

/* Ask for transparent huge pages on a large block, as NumPy's own
   allocator does (when its switch is on): a 2 MiB page faults in once
   instead of 512 times. */
static void zm_advise(void *base, size_t total)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (zm_hugepage && total >= ZM_HUGE) {
        uintptr_t lo = ((uintptr_t)base + 4095) & ~(uintptr_t)4095;
        uintptr_t hi = ((uintptr_t)base + total) & ~(uintptr_t)4095;
        if (hi > lo)
            madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
    }
#else
    (void)base;
    (void)total;
#endif
}

static int zm_lock_acquire(void)
{
    if (zm_lock == NULL)
        return 0;
    PyThread_acquire_lock(zm_lock, WAIT_LOCK);
    return 1;
}

static void zm_lock_release(int held)
{
    if (held)
        PyThread_release_lock(zm_lock);
}

/* Remove and return the slot of a cached block with room for `size` bytes
   and at most a quarter to spare (the smallest such), or -1. Lock held. */
static int zm_take(size_t size, zm_slot *got)
{
    int i, best = -1;
    for (i = 0; i < ZM_SLOTS; i++) {
        size_t cap = zm_slots[i].base ? zm_usable(zm_slots[i].total) : 0;
        if (zm_slots[i].base != NULL && cap >= size && cap - size <= size / 4
                && (best < 0 || zm_slots[i].total < zm_slots[best].total))
            best = i;
    }
    if (best < 0)
        return -1;
    *got = zm_slots[best];
    zm_cached -= zm_usable(got->total);
    zm_slots[best].base = NULL;
    zm_slots[best].total = 0;
    return best;
}

/* Evict the oldest blocks until `need` more bytes fit under `limit` and a
   slot is free; the evicted bases go to `out` (ZM_SLOTS entries) to be freed
   after the lock is released. Returns the free slot, or -1. Lock held. */
static int zm_evict(size_t need, size_t limit, void **out, int *nout)
{
    for (;;) {
        int i, free_slot = -1, oldest = -1;
        for (i = 0; i < ZM_SLOTS; i++) {
            if (zm_slots[i].base == NULL) {
                if (free_slot < 0)
                    free_slot = i;
            } else if (oldest < 0 || zm_slots[i].stamp < zm_slots[oldest].stamp) {
                oldest = i;
            }
        }
        if (zm_cached + need <= limit && (free_slot >= 0 || need == 0))
            return free_slot;
        if (oldest < 0)
            return -1;
        out[(*nout)++] = zm_slots[oldest].base;
        zm_cached -= zm_usable(zm_slots[oldest].total);
        zm_slots[oldest].base = NULL;
        zm_slots[oldest].total = 0;
    }
}

static void *zm_malloc(void *ctx, size_t size)
{
    zm_slot got;
    (void)ctx;
    if (size >= zm_min) {
        int held = zm_lock_acquire();
        int slot = zm_take(size, &got);
        if (slot >= 0)
            zm_hits++;
        else
            zm_misses++;
        zm_lock_release(held);
        if (slot >= 0)
            return zm_place(got.base, got.total, zm_want);
    }
    if (size > SIZE_MAX - ZM_EXTRA)
        return NULL;
    void *base = malloc(size + ZM_EXTRA);
    if (base == NULL)
        return NULL;
    zm_advise(base, size + ZM_EXTRA);
    return zm_place(base, size + ZM_EXTRA, zm_want);
}

static void *zm_calloc(void *ctx, size_t nelem, size_t elsize)
{
    (void)ctx;
    if (elsize != 0 && nelem > (SIZE_MAX - ZM_EXTRA) / elsize)
        return NULL;
    size_t size = nelem * elsize;
    void *base = calloc(1, size + ZM_EXTRA);
    if (base == NULL)
        return NULL;
    zm_advise(base, size + ZM_EXTRA);
    return zm_place(base, size + ZM_EXTRA, -1);
}

static void *zm_realloc(void *ctx, void *ptr, size_t new_size)
{
    if (ptr == NULL)
        return zm_malloc(ctx, new_size);
    if (new_size > SIZE_MAX - ZM_EXTRA)
        return NULL;
    zm_header h = *zm_head(ptr);
    size_t offset = (size_t)((char *)ptr - (char *)h.base);
    size_t keep = h.total - offset < new_size ? h.total - offset : new_size;
    long want = (long)((uintptr_t)ptr & (uintptr_t)(ZM_PAGE - 1));
    void *base = realloc(h.base, new_size + ZM_EXTRA);
    if (base == NULL)
        return NULL;
    /* the data moved with the block; put it back at its page offset */
    char *moved = (char *)base + offset;
    char *data = zm_addr(base, want);
    if (data != moved)
        memmove(data, moved, keep);
    return zm_place(base, new_size + ZM_EXTRA, want);
}

static void zm_free(void *ctx, void *ptr, size_t size)
{
    void *evicted[ZM_SLOTS + 1];
    int i, nev = 0, slot = -1;
    (void)ctx;
    (void)size;  /* the header has the block's size */
    if (ptr == NULL)
        return;
    zm_header h = *zm_head(ptr);
    size_t cap = zm_usable(h.total);
    if (cap >= zm_min && zm_lock != NULL) {
        int held = zm_lock_acquire();
        if (cap <= zm_limit) {
            slot = zm_evict(cap, zm_limit, evicted, &nev);
            if (slot >= 0) {
                zm_slots[slot].base = h.base;
                zm_slots[slot].total = h.total;
                zm_slots[slot].stamp = ++zm_clock;
                zm_cached += cap;
            }
        }
        zm_lock_release(held);
    }
    for (i = 0; i < nev; i++)
        free(evicted[i]);
    if (slot < 0)
        free(h.base);
}

/* Set the limit (bytes; 0 disables the cache) and evict what exceeds it. */
static void zm_set_limit(size_t limit)
{
    void *evicted[ZM_SLOTS + 1];
    int i, nev = 0;
    int held = zm_lock_acquire();
    zm_limit = limit;
    zm_evict(0, limit, evicted, &nev);
    zm_lock_release(held);
    for (i = 0; i < nev; i++)
        free(evicted[i]);
}

/* Blocks held. */
static int zm_blocks(void)
{
    int i, n = 0;
    int held = zm_lock_acquire();
    for (i = 0; i < ZM_SLOTS; i++)
        n += zm_slots[i].base != NULL;
    zm_lock_release(held);
    return n;
}

/* A fresh lock in a forked child: the parent's may have been held by a
   thread that does not exist in the child. */
static int zm_reset_lock(void)
{
    zm_lock = PyThread_allocate_lock();
    return zm_lock == NULL ? -1 : 0;
}

static PyDataMem_Handler zm_handler = {
    "zilla_muf_buffer_cache",
    1,
    {
        NULL,
        zm_malloc,
        zm_calloc,
        zm_realloc,
        zm_free,
    },
};

#endif
