// arena.h: laying out many tensors in one backend allocation (the U-Net's and the classifier's
// activation arenas).
//
// A planner function walks its tensors twice with the same calls to msd_arena_take: first with
// base == NULL, which only counts the floats needed, then with base pointing at one allocation of that
// many floats, which hands out the pointers. Every piece is rounded up to a multiple of 16 floats
// (64 bytes), so in an allocation that starts 64-byte aligned (fast's and cuda's do) every piece does.
#ifndef MSD_ARENA_H
#define MSD_ARENA_H

#include <stddef.h>

struct msd_arena_plan {
    float *base; // NULL while counting
    size_t used; // floats handed out so far (the arena's size once the walk is done)
};

// The next n floats of the arena (NULL while counting).
static inline float *msd_arena_take(struct msd_arena_plan *p, size_t n) {
    float *ptr = p->base ? p->base + p->used : NULL;
    p->used += (n + 15) & ~(size_t)15; // 64-byte aligned pieces
    return ptr;
}

#endif
