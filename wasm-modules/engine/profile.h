/* Per-phase wall time inside the guest, read by the host with ei_profile(slot). */
#ifndef EI_PROFILE_H
#define EI_PROFILE_H

#include <time.h>

enum { PROF_GEMM, PROF_ATTENTION, PROF_GELU, PROF_LAYERNORM, PROF_EMBED, PROF_OTHER, PROF_SLOTS };
extern double ei_prof_ms[PROF_SLOTS];

static inline double ei_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

#endif
