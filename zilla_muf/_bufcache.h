/* A NumPy memory handler that keeps the large blocks it frees for reuse.
 *
 * A fresh block of memory is mapped by the system page by page on first
 * touch, and each page is zeroed then; for outputs of tens of megabytes that
 * costs about as much as a pass over them. Blocks of at least zm_min bytes
 * that arrays allocated with this handler free are kept, up to zm_limit
 * bytes in all (oldest evicted first), and handed to the next allocation
 * they fit with at most a quarter to spare.
 *
 * Every block carries a header just below its 64-byte aligned data: the
 * address the C allocator returned, and the capacity. Only zm_malloc takes
 * blocks from the cache (zm_calloc must return zeros); zm_realloc and
 * zm_free accept every block of this handler.
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
#define ZM_SLOTS 8
#define ZM_HUGE ((size_t)1 << 22)

typedef struct {
    void *base;     /* what malloc/calloc/realloc returned */
    size_t cap;     /* usable bytes from the aligned data address */
} zm_header;

typedef struct {
    char *data;
    size_t cap;
    unsigned long long stamp;
} zm_slot;

static PyThread_type_lock zm_lock = NULL;
static zm_slot zm_slots[ZM_SLOTS];
static size_t zm_cached = 0;
static size_t zm_limit = (size_t)256 << 20;
static size_t zm_min = (size_t)1 << 20;
static unsigned long long zm_clock = 0, zm_hits = 0, zm_misses = 0;

static inline zm_header *zm_head(void *data)
{
    return (zm_header *)((char *)data - sizeof(zm_header));
}

/* The aligned data address in a block from `base`, and its header. */
static char *zm_place(void *base, size_t cap)
{
    uintptr_t p = ((uintptr_t)base + sizeof(zm_header) + ZM_ALIGN - 1)
                  & ~(uintptr_t)(ZM_ALIGN - 1);
    zm_head((void *)p)->base = base;
    zm_head((void *)p)->cap = cap;
    return (char *)p;
}

/* Ask for transparent huge pages on a large block, as NumPy's own
   allocator does: a 2 MiB page faults in once instead of 512 times. */
static void zm_advise(char *data, size_t cap)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (cap >= ZM_HUGE) {
        uintptr_t lo = ((uintptr_t)data + 4095) & ~(uintptr_t)4095;
        uintptr_t hi = ((uintptr_t)data + cap) & ~(uintptr_t)4095;
        if (hi > lo)
            madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
    }
#else
    (void)data;
    (void)cap;
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

/* Remove and return a cached block of at least `size` bytes with at most a
   quarter to spare (the smallest such), or NULL. Lock held. */
static char *zm_take(size_t size)
{
    int i, best = -1;
    for (i = 0; i < ZM_SLOTS; i++) {
        size_t cap = zm_slots[i].cap;
        if (zm_slots[i].data != NULL && cap >= size && cap - size <= size / 4
                && (best < 0 || cap < zm_slots[best].cap))
            best = i;
    }
    if (best < 0)
        return NULL;
    char *data = zm_slots[best].data;
    zm_cached -= zm_slots[best].cap;
    zm_slots[best].data = NULL;
    zm_slots[best].cap = 0;
    return data;
}

/* Evict the oldest blocks until `need` more bytes fit under `limit` and a
   slot is free; the evicted bases go to `out` (ZM_SLOTS entries) to be freed
   after the lock is released. Returns the free slot, or -1. Lock held. */
static int zm_evict(size_t need, size_t limit, void **out, int *nout)
{
    for (;;) {
        int i, free_slot = -1, oldest = -1;
        for (i = 0; i < ZM_SLOTS; i++) {
            if (zm_slots[i].data == NULL) {
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
        out[(*nout)++] = zm_head(zm_slots[oldest].data)->base;
        zm_cached -= zm_slots[oldest].cap;
        zm_slots[oldest].data = NULL;
        zm_slots[oldest].cap = 0;
    }
}

static void *zm_malloc(void *ctx, size_t size)
{
    (void)ctx;
    if (size >= zm_min) {
        int held = zm_lock_acquire();
        char *data = zm_take(size);
        if (data != NULL)
            zm_hits++;
        else
            zm_misses++;
        zm_lock_release(held);
        if (data != NULL)
            return data;
    }
    if (size > SIZE_MAX - sizeof(zm_header) - ZM_ALIGN)
        return NULL;
    void *base = malloc(size + sizeof(zm_header) + ZM_ALIGN);
    if (base == NULL)
        return NULL;
    char *data = zm_place(base, size);
    zm_advise(data, size);
    return data;
}

static void *zm_calloc(void *ctx, size_t nelem, size_t elsize)
{
    (void)ctx;
    if (elsize != 0 && nelem > (SIZE_MAX - sizeof(zm_header) - ZM_ALIGN) / elsize)
        return NULL;
    size_t size = nelem * elsize;
    void *base = calloc(1, size + sizeof(zm_header) + ZM_ALIGN);
    if (base == NULL)
        return NULL;
    char *data = zm_place(base, size);
    zm_advise(data, size);
    return data;
}

static void *zm_realloc(void *ctx, void *ptr, size_t new_size)
{
    if (ptr == NULL)
        return zm_malloc(ctx, new_size);
    if (new_size > SIZE_MAX - sizeof(zm_header) - ZM_ALIGN)
        return NULL;
    zm_header h = *zm_head(ptr);
    size_t offset = (size_t)((char *)ptr - (char *)h.base);
    size_t keep = h.cap < new_size ? h.cap : new_size;
    void *base = realloc(h.base, new_size + sizeof(zm_header) + ZM_ALIGN);
    if (base == NULL)
        return NULL;
    /* the data moved with the block; its new address may be aligned
       differently, so move it to where zm_place puts it */
    char *moved = (char *)base + offset;
    char *data = (char *)(((uintptr_t)base + sizeof(zm_header) + ZM_ALIGN - 1)
                          & ~(uintptr_t)(ZM_ALIGN - 1));
    if (data != moved)
        memmove(data, moved, keep);
    zm_place(base, new_size);
    return data;
}

static void zm_free(void *ctx, void *ptr, size_t size)
{
    void *evicted[ZM_SLOTS + 1];
    int i, nev = 0, slot = -1;
    (void)ctx;
    (void)size;  /* the header has the capacity */
    if (ptr == NULL)
        return;
    zm_header *h = zm_head(ptr);
    if (h->cap >= zm_min && zm_lock != NULL) {
        int held = zm_lock_acquire();
        if (h->cap <= zm_limit) {
            slot = zm_evict(h->cap, zm_limit, evicted, &nev);
            if (slot >= 0) {
                zm_slots[slot].data = (char *)ptr;
                zm_slots[slot].cap = h->cap;
                zm_slots[slot].stamp = ++zm_clock;
                zm_cached += h->cap;
            }
        }
        zm_lock_release(held);
    }
    for (i = 0; i < nev; i++)
        free(evicted[i]);
    if (slot < 0)
        free(h->base);
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
        n += zm_slots[i].data != NULL;
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
