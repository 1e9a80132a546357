# OpenMP runtime queries that compile with or without OpenMP.
cdef extern from "_omp_shim.h" nogil:
    int ZM_HAVE_OPENMP
    int omp_get_thread_num()
    int omp_get_num_threads()
    int omp_get_max_threads()
