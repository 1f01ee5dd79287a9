// A minimal test harness for the torch-free core (no third-party test framework to install).
// Each test binary returns non-zero when any CHECK failed; ctest reads the exit code.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace dlkern_test {
inline int& failures() {
  static int n = 0;
  return n;
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
