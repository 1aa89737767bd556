// The micro-kernels of the native ops' own products (recurrent/kernels/cpu/sequences.cpp): a few rows
// by kGroup columns, summed in vector registers. gate_sums: the LSTM step's pre-activations of kLanes
// hidden units' four gates over x Wᵢₕᵀ and h Wₕₕᵀ together, handed to the gate math while in cache
// (one call does what oneDNN's brgemm needed a bias copy and two calls per 32 columns for), at about
// the core's peak; weight_sums: a tile of a weight gradient Σᵢ xᵢᵀ gᵢ.
#pragma once

#include <cstdint>

#include "gate_math.h"

namespace recurrent_cpu {

// `Rows` rows' four gate vectors are 4·Rows sums, which with the four weight vectors and a broadcast
// must fit the vector registers: 32 with AVX-512, 16 with AVX2 and NEON.
#ifdef __AVX512F__
constexpr int kMaxRows = 6;
#else
constexpr int kMaxRows = 2;
#endif
constexpr int kGroup = 4 * kLanes;  // one row of a panel: kLanes hidden units' i, f, g, o columns

// sum[r] += a[r · lda] w for r < Rows: one step of a product, w a row of kGroup floats.
template <int Rows>
[[gnu::always_inline]] inline void add_products(Vec (&sum)[Rows][4], const float* a, int64_t lda, const float* w) {
  const Vec w0 = load(w), w1 = load(w + kLanes), w2 = load(w + 2 * kLanes), w3 = load(w + 3 * kLanes);
#pragma GCC unroll 8
  for (int r = 0; r < Rows; ++r) {
    const float x = a[r * lda];
    sum[r][0] += x * w0;
    sum[r][1] += x * w1;
    sum[r][2] += x * w2;
    sum[r][3] += x * w3;
  }
}

// sum[r] += Σₖ a[r][k] w[k] over the K columns of a (leading dimension lda), w holding K rows of kGroup.
template <int Rows>
[[gnu::always_inline]] inline void accumulate(Vec (&sum)[Rows][4], const float* a, int64_t lda, int64_t K,
                                              const float* w) {
#pragma GCC unroll 2
  for (int64_t k = 0; k < K; ++k) add_products<Rows>(sum, a + k, lda, w + k * kGroup);
}

// out (Rows, kGroup) = start + Σₖ a[r][k] w[k]: k runs over the K1 columns of a1 (leading dimension
// lda1), then the K2 of a2, w holding the K1 + K2 rows of kGroup weights in that order.
// Not inlined: alone, its sums keep every register to themselves.
template <int Rows>
[[gnu::noinline]] void gate_sums(const float* start, const float* a1, int64_t lda1, int64_t K1, const float* a2,
                                 int64_t lda2, int64_t K2, const float* w, float* out) {
  Vec sum[Rows][4];
  for (int q = 0; q < 4; ++q) {
    const Vec s = load(start + q * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r) sum[r][q] = s;
  }
  accumulate<Rows>(sum, a1, lda1, K1, w);
  accumulate<Rows>(sum, a2, lda2, K2, w + K1 * kGroup);
  for (int r = 0; r < Rows; ++r) std::memcpy(out + r * kGroup, sum[r], sizeof sum[r]);
}

// sums (Rows, kGroup) += Σᵢ x[i] g[i] over `count` rows i, x's of Rows floats and g's of kGroup (both
// packed: consecutive rows): a tile of a weight gradient Σᵢ xᵢᵀ gᵢ, kept transposed (Rows columns of x
// by kGroup columns of g). The rows' sum starts from zero and is added to `sums` at the end: summed
// block by block, a sum over many rows keeps its rounding error near a blocked product's.
template <int Rows>
[[gnu::noinline]] void weight_sums(const float* x, int64_t count, const float* g, float* sums) {
  Vec sum[Rows][4] = {};
#pragma GCC unroll 2
  for (int64_t i = 0; i < count; ++i) add_products<Rows>(sum, x + i * Rows, 1, g + i * kGroup);
  for (int r = 0; r < Rows; ++r) {
    for (int q = 0; q < 4; ++q) store(sums + r * kGroup + q * kLanes, load(sums + r * kGroup + q * kLanes) + sum[r][q]);
  }
}

// Calls call.template operator()<rows>(), for 1 <= rows <= kMaxRows: a call of a templated lambda
// with its count of rows as a constant, for the code it calls to be compiled for that count.
template <typename Call>
void by_rows(int64_t rows, const Call& call) {
  static_assert(kMaxRows <= 6);
  switch (rows) {
    case 1: return call.template operator()<1>();
    case 2: return call.template operator()<2>();
    case 3: return call.template operator()<3>();
    case 4: return call.template operator()<4>();
    case 5: return call.template operator()<5>();
    default: return call.template operator()<6>();
  }
}

}  // namespace recurrent_cpu
