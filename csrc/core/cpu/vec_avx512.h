// The target of the avx512 path's translation units: every feature of the path (AVX-512 F, BW,
// DQ, VL and FMA), whatever the command line enabled already. Include it after the standard and
// project headers (the pragma applies to every function defined after it; an AVX-512-encoded
// inline std:: function would be a SIGILL hazard on the other paths), and end the file with
//   #ifdef DLKERN_AVX512_CLANG_PUSHED / #pragma clang attribute pop / #endif
#pragma once

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma"))), \
                             apply_to = function)
#define DLKERN_AVX512_CLANG_PUSHED 1
#elif defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma")
#endif
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's own intrinsics (_mm512_max_ps: an undefined pass-through operand) set this off
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
