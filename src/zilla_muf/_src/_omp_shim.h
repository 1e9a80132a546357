/* OpenMP runtime calls that also compile without OpenMP (one thread then). */
#ifndef ZILLA_MUF_OMP_SHIM_H
#define ZILLA_MUF_OMP_SHIM_H

#ifdef _OPENMP
#include <omp.h>
#define ZM_HAVE_OPENMP 1
#else
#define ZM_HAVE_OPENMP 0
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
static inline int omp_get_max_threads(void) { return 1; }
#endif

#endif
