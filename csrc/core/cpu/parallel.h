// A minimal OpenMP parallel-for for the core. Threads get contiguous, equal ranges (static
// schedule): every kernel here has uniform work per index, and contiguous ranges keep each
// thread's writes on its own cache lines.
#pragma once

#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace dlkern {

template <typename F>
inline void parallel_for(int64_t n, int num_threads, const F& body) {
  if (n <= 0) return;
#ifdef _OPENMP
  if (num_threads > 1) {
#pragma omp parallel num_threads(num_threads)
    {
      const int64_t nt = omp_get_num_threads();
      const int64_t tid = omp_get_thread_num();
      const int64_t chunk = n / nt, rem = n % nt;
      const int64_t begin = tid * chunk + (tid < rem ? tid : rem);
      const int64_t end = begin + chunk + (tid < rem ? 1 : 0);
      if (begin < end) body(begin, end);
    }
    return;
  }
#endif
  body(int64_t{0}, n);
}

// Runs body(tid, nth) on a team of `num_threads` threads (OpenMP may give fewer: nth says how
// many), or on the calling thread alone (0, 1) when num_threads <= 1. The team synchronises with
// team_barrier(nth).
template <typename F>
inline void run_team(int num_threads, const F& body) {
#ifdef _OPENMP
  if (num_threads > 1) {
#pragma omp parallel num_threads(num_threads)
    body(omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#endif
  body(0, 1);
}

// Waits for every thread of the team run_team started (nothing for a team of one).
inline void team_barrier(int nth) {
#ifdef _OPENMP
  if (nth > 1) {
#pragma omp barrier
  }
#endif
}

}  // namespace dlkern
