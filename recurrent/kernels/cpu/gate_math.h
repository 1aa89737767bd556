// The transcendental functions of the gate math, written so that the compiler vectorizes the row
// loops that call them (the C library's expf is a call per element, which stops vectorization).
#pragma once

#include <cstdint>

namespace recurrent_cpu {

// e^x in float32, branch-free: x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor polynomial of
// degree 7 (truncation below 1e-8 relative), 2^n written into the exponent bits. x is clamped to
// [-87, 89]: below, 2^n stays a normal float; above 88.4, n = 128 writes infinity, so that σ(x) is
// exactly 0 where torch's underflows to 0 (0 · inf stays NaN in c' = f c + i g, as in ATen). A NaN
// passes both comparisons and stays NaN.
// Always inlined: a call left in a row loop keeps the compiler from vectorizing it.
[[gnu::always_inline]] inline float exp_(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 89.0f ? 89.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = x - n * 0.693145751953125f;  // ln2's leading bits: n times it is exact
  r = r - n * 1.42860682030941723212e-6f;  // the rest of ln2
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = (p * r) * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

[[gnu::always_inline]] inline float sigmoid_(float x) { return 1.0f / (1.0f + exp_(-x)); }

// tanh(x) = 2σ(2x) − 1: within float32's rounding of 1 (6e-8) of tanh, as the ATen fast path's tanh_.
[[gnu::always_inline]] inline float tanh_(float x) { return 2.0f * sigmoid_(2.0f * x) - 1.0f; }

}  // namespace recurrent_cpu
