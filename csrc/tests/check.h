// A minimal test harness for the torch-free core (no third-party test framework to install).
// Each test binary returns non-zero when any CHECK failed; ctest reads the exit code.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace dlkern_test {
inline int& failures() {
  static int n = 0;
  return n;
}

struct Err {
  double max_abs = 0, max_rel = 0;
};

// Elementwise |a - r| <= atol + rtol * |r|; NaN positions must agree (a NaN where r is finite,
// or a number where r is NaN, fails). The worst errors go to *err.
inline bool close(const std::vector<float>& a, const std::vector<float>& r, double atol,
                  double rtol, Err* err) {
  bool ok = a.size() == r.size();
  for (size_t i = 0; i < a.size() && i < r.size(); ++i) {
    if (a[i] == r[i]) continue;  // equal infinities too
    const bool an = std::isnan(a[i]), rn = std::isnan(r[i]);
    if (an || rn) {
      ok &= an == rn;
      continue;
    }
    const double d = std::fabs(double(a[i]) - double(r[i]));
    err->max_abs = std::max(err->max_abs, d);
    if (r[i] != 0) err->max_rel = std::max(err->max_rel, d / std::fabs(double(r[i])));
    ok &= d <= atol + rtol * std::fabs(double(r[i]));
  }
  return ok;
}
}  // namespace dlkern_test

#define CHECK(cond, ...)                                                     \
  do {                                                                       \
    if (!(cond)) {                                                           \
      ++dlkern_test::failures();                                             \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                     \
      std::fprintf(stderr, "\n");                                            \
    }                                                                        \
  } while (0)

#define TEST_MAIN_END()                                                      \
  do {                                                                       \
    if (dlkern_test::failures()) {                                           \
      std::fprintf(stderr, "%d check(s) failed\n", dlkern_test::failures()); \
      return 1;                                                              \
    }                                                                        \
    std::printf("all checks passed\n");                                      \
    return 0;                                                                \
  } while (0)
