// The constants of dlkern's float32 exp, shared by its 8-lane (vec_avx2.h avx2::exp_ps_impl) and
// 16-lane (softmax_avx512.cpp exp_nonpos) forms, so both widths compute the same arithmetic.
#pragma once

namespace dlkern {
namespace expf32 {

constexpr float kLo = -87.3365478515625f;        // ln(FLT_MIN): n >= -126
constexpr float kHi = 88.0f;                     // n <= 127
constexpr float kMagic = 12582912.0f;            // 1.5 * 2^23
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;           // ln2 in two parts: n * kLn2Hi is exact
constexpr float kLn2Lo = -2.12194440e-4f;
// Cephes' degree-7 polynomial for exp(r), in Horner order (highest degree first)
constexpr float kPoly[8] = {1.9875691500E-4f, 1.3981999507E-3f, 8.3334519073E-3f,
                            4.1665795894E-2f, 1.6666665459E-1f, 5.0000001201E-1f,
                            1.0f,             1.0f};

}  // namespace expf32
}  // namespace dlkern
