// The transcendental functions of the gate math, for one float (the row loops, which the compiler
// vectorizes: the C library's expf is a call per element, which stops it) or for a vector of them
// (Vec: the LSTM's gate math over its sums, gate_sums.h), the same formulas lane by lane.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace recurrent_cpu {

// The vector width the compiler targets (-march=native): 16 floats with AVX-512, else 8.
#ifdef __AVX512F__
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t IntVec __attribute__((vector_size(kLanes * sizeof(int32_t))));

// The first `width` (<= kLanes) floats at `from`, the rest zero; and their store. Unaligned: no
// alignment is assumed anywhere. A whole vector is one instruction, a part a call.
[[gnu::always_inline]] inline Vec load(const float* from, int64_t width = kLanes) {
  Vec v = {};
  if (width == kLanes) {
    std::memcpy(&v, from, sizeof v);
  } else {
    std::memcpy(&v, from, width * sizeof(float));
  }
  return v;
}
[[gnu::always_inline]] inline void store(float* to, Vec v, int64_t width = kLanes) {
  if (width == kLanes) {
    std::memcpy(to, &v, sizeof v);
  } else {
    std::memcpy(to, &v, width * sizeof(float));
  }
}

// A store past the caches where the hardware has one for a whole, aligned vector (else a plain
// store): for what is written once and read back only after the whole sequence (the LSTM's saved
// gates), so that its cache lines are neither read in first nor crowd out the step's working set.
// The caller ends with stream_fence() before another thread reads them.
[[gnu::always_inline]] inline void stream(float* to, Vec v, int64_t width = kLanes) {
#ifdef __AVX512F__
  if (width == kLanes && reinterpret_cast<uintptr_t>(to) % sizeof(Vec) == 0) {
    _mm512_stream_ps(to, reinterpret_cast<__m512>(v));
    return;
  }
#endif
  store(to, v, width);
}
inline void stream_fence() {
#ifdef __AVX512F__
  _mm_sfence();
#endif
}

// max(x, bound) and min(x, bound), a NaN x kept: one instruction each on an AVX-512 vector (vmaxps
// returns its second operand where either is NaN).
template <typename T>
[[gnu::always_inline]] inline T at_least(T x, float bound) {
#ifdef __AVX512F__
  if constexpr (!std::is_same_v<T, float>) return reinterpret_cast<T>(_mm512_max_ps(_mm512_set1_ps(bound), x));
#endif
  return x < bound ? bound : x;
}
template <typename T>
[[gnu::always_inline]] inline T at_most(T x, float bound) {
#ifdef __AVX512F__
  if constexpr (!std::is_same_v<T, float>) return reinterpret_cast<T>(_mm512_min_ps(_mm512_set1_ps(bound), x));
#endif
  return x > bound ? bound : x;
}

// e^x in float32, branch-free: x = n ln2 + r with |r| <= ln2 / 2, e^r = 1 + r + r² P(r) with P of
// degree 4 fitted to e^r on that interval (least squares at Chebyshev nodes: 3.6e-9 relative, below
// float32's rounding), 2ⁿ written into the exponent bits. x is clamped to [-87, 89]: below, 2ⁿ stays
// a normal float; above 88.4, n = 128 writes infinity, so that σ(x) is exactly 0 where torch's
// underflows to 0 (0 · inf stays NaN in c' = f c + i g, as in ATen). A NaN passes both clamps.
// Always inlined: a call left in a row loop keeps the compiler from vectorizing it.
template <typename T>
[[gnu::always_inline]] inline T exp_(T x) {
  x = at_most(at_least(x, -87.0f), 89.0f);
  const T n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  T r = x - n * 0.693145751953125f;  // ln2's leading bits: n times it is exact
  r = r - n * 1.42860682030941723212e-6f;  // the rest of ln2
  T p = r * 1.37514074e-3f + 8.36891588e-3f;
  p = p * r + 4.16695327e-2f;
  p = p * r + 1.66665182e-1f;
  p = p * r + 4.99999881e-1f;
  p = (p * r) * r + r + 1.0f;
  if constexpr (std::is_same_v<T, float>) {
    return p * __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
  } else {
    return p * reinterpret_cast<T>((__builtin_convertvector(n, IntVec) + 127) << 23);
  }
}

template <typename T>
[[gnu::always_inline]] inline T sigmoid_(T x) {
  return 1.0f / (1.0f + exp_(-x));
}

// tanh(x), accurate relative to its value everywhere, as torch's is: for |x| < 0.625, x + x³ P(x²) with P
// of degree 4 fitted to (tanh x − x)/x³ there (least squares at Chebyshev nodes, weighted for relative
// error: at most 2.7 half-ulps in float32); above, 1 − 2/(e^{2|x|} + 1) with x's sign, where nothing
// cancels (it is 0.55 or more). 2σ(2x) − 1, the form before, lost the relative accuracy near 0: at
// |tanh x| ~ 1e-4 it was 1e-3 off. Infinities give ±1, a NaN stays NaN (both compares are false).
template <typename T>
[[gnu::always_inline]] inline T tanh_(T x) {
  const T u = x * x;
  T p = u * -5.691985600e-3f + 2.062629163e-2f;
  p = p * u + -5.373531953e-2f;
  p = p * u + 1.333138198e-1f;
  p = p * u + -3.333328068e-1f;
  const T near_zero = x + (x * u) * p;
  const T magnitude = x < 0.0f ? -x : x;
  const T far = 1.0f - 2.0f / (exp_(2.0f * magnitude) + 1.0f);
  return magnitude < 0.625f ? near_zero : (x < 0.0f ? -far : far);
}

}  // namespace recurrent_cpu
