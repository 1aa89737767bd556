// Each cell kind's whole layer-direction, forward and backward, as one op, and the layer's weight
// gradients: the native CPU kernels (recurrent/kernels/cpu). build.py compiles this file on the
// user's machine, for its own vector units (-march=native), and loads it into torch.ops.recurrent_cpu.
//
// The rows of a recurrence are independent of each other, so the batch is cut into one block of rows
// per thread (per direction too), and each block runs the whole sequence alone: no synchronisation
// between steps, and a block's states stay in its core's cache. Per step, a block takes its rows
// kTile at a time: the tile's input projections and W_hh h are summed (the LSTM's by its own
// micro-kernel, gate_sums.h; the others' by oneDNN's brgemm, at::native::cpublas), and the gate math
// runs over them while they are still in cache.
//
// Tensors are float32 on the CPU and contiguous: sequences (D, R, W) hold the packed rows of every
// step (step t's rows start at offset[t]; batch_sizes as in PackedSequence, a padded batch being all
// equal sizes), states (D, N, W), weights as the layer stacks them, (D, G, W). The row loops are plain
// C++ that the compiler vectorizes (`omp simd`: the gate blocks of one row are distinct, which the
// compiler cannot prove).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "gate_math.h"
#include "gate_sums.h"

#ifndef CPUBLAS_BRGEMM_F32F32F32
#error "this torch has no float32 brgemm (at::native::cpublas::brgemm): the ATen fast path runs instead"
#endif

// BLAS's product, which torch exports from its MKL (or OpenBLAS): weak, so that a torch without it still loads
// this library (product() then takes ATen's).
extern "C" void sgemm_(char* transa, char* transb, int* m, int* n, int* k, float* alpha, const float* a, int* lda,
                       const float* b, int* ldb, float* beta, float* c, int* ldc) __attribute__((weak));

namespace {

using at::Tensor;
using recurrent_cpu::by_rows;
using recurrent_cpu::gate_sums;
using recurrent_cpu::kGroup;
using recurrent_cpu::kLanes;
using recurrent_cpu::kMaxRows;
using recurrent_cpu::load;
using recurrent_cpu::store;
using recurrent_cpu::stream;
using recurrent_cpu::Vec;
using recurrent_cpu::sigmoid_;
using recurrent_cpu::tanh_;
using recurrent_cpu::weight_sums;

// Rows per product and gate-math pass: a tile's gates (64 x 4H floats) stay in L2 between the two.
constexpr int64_t kTile = 64;

// Where each step's rows lie in a sequence: step t's rows are offset[t] .. offset[t] + size[t].
struct Steps {
  std::vector<int64_t> size, offset;
  int64_t rows = 0;
  explicit Steps(at::IntArrayRef batch_sizes) {
    for (const int64_t s : batch_sizes) {
      TORCH_CHECK(s >= 0 && (size.empty() || s <= size.back()), "recurrent_cpu: batch_sizes must not increase, got ",
                  batch_sizes);
      size.push_back(s);
      offset.push_back(rows);
      rows += s;
    }
  }
  int64_t count() const { return static_cast<int64_t>(size.size()); }
};

void check(const Tensor& t, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu() && t.is_contiguous() && t.sizes() == shape,
              "recurrent_cpu: ", name, " must be a contiguous float32 CPU tensor of shape ", shape, ", got ", t.sizes(),
              " ", t.scalar_type(), " on ", t.device(), t.is_contiguous() ? "" : " (not contiguous)");
}

float* data(const Tensor& t) { return t.data_ptr<float>(); }

// A weight cut into panels of kPanel columns of (K, N), each stored as its own (K, kPanel) rows, so
// that the product's pass over a panel reads consecutive memory: in the plain layout each of the K
// rows it reads lies N floats from the last, a page apart at N = 1024. 32 columns (a K = 256 panel
// fits L1) beat 64 by 3 to 6% at H = 256 and 512, and tied at 128 (AMD EPYC, 2 threads). Made from
// w (D, K, N), or from w (D, N, K) when `transposed` (W_ih and W_hh as the layer stacks them, for x Wᵀ).
// A call of one step (a generation's, a decoder's) does not pack: packing W_ih and W_hh cost more than the
// step's products, which then run on the weights as they are (`plain`: BLAS's product, MKL's).
constexpr int64_t kPanel = 32;

struct Panels {
  int64_t K, N, count;
  std::vector<float> data;
  const float* plain = nullptr;  // where not packed: the weight's data, (D, N, K) where `transposed`, else (D, K, N)
  bool transposed;
  Panels(const Tensor& w, bool transposed, const Steps& steps)
      : K(w.size(transposed ? 2 : 1)), N(w.size(transposed ? 1 : 2)), count((N + kPanel - 1) / kPanel),
        transposed(transposed) {
    if (steps.count() == 1) {
      plain = w.data_ptr<float>();
      return;
    }
    const int64_t D = w.size(0);
    const float* from = w.data_ptr<float>();
    data.resize(D * count * K * kPanel);
    at::parallel_for(0, D * count, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t d = p / count, n0 = (p % count) * kPanel, width = std::min(kPanel, N - n0);
        float* to = data.data() + p * K * kPanel;
        for (int64_t k = 0; k < K; ++k) {
          for (int64_t n = 0; n < width; ++n) {
            to[k * kPanel + n] = transposed ? from[(d * N + n0 + n) * K + k] : from[(d * K + k) * N + n0 + n];
          }
        }
      }
    });
  }
  const float* panel(int64_t d, int64_t p) const { return data.data() + (d * count + p) * K * kPanel; }
};

// c (M, N) = op(a) · op(b) (+ c when `add`), row-major, a being (M, K) or, `ta`, stored as (K, M); b (K, N)
// or, `tb`, stored as (N, K): BLAS's product called on the pointers, for the one-step calls and the stack's
// backward (ATen's product cost 10 µs a call at M = 1, H = 200, its views and dispatch as much as the
// product). Fortran BLAS is column-major: row-major c is cᵀ there, so it computes cᵀ = op(b)ᵀ op(a)ᵀ. Where
// torch exports no sgemm_ (a torch without MKL or OpenBLAS: the weak symbol is null), ATen's product runs
// on views of the pointers.
void matmul(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b,
            int64_t ldb, float* c, int64_t ldc, bool add) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty product: c stays, or is zero
    for (int64_t r = 0; r < M && !add; ++r) std::fill_n(c + r * ldc, N, 0.0f);
    return;
  }
  if (sgemm_ != nullptr) {
    char op_a = ta ? 'T' : 'N', op_b = tb ? 'T' : 'N';
    int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
    int ld_a = static_cast<int>(lda), ld_b = static_cast<int>(ldb), ld_c = static_cast<int>(ldc);
    float one = 1.0f, beta = add ? 1.0f : 0.0f;
    sgemm_(&op_b, &op_a, &m, &n, &k, &one, b, &ld_b, a, &ld_a, &beta, c, &ld_c);
    return;
  }
  const at::NoGradGuard no_grad;  // ATen's out= products refuse tensors that require grad
  const auto options = at::TensorOptions().dtype(at::kFloat);
  const auto view = [&](const float* p, int64_t rows, int64_t cols, int64_t ld, bool t) {
    return at::from_blob(const_cast<float*>(p), {rows, cols}, t ? at::IntArrayRef{1, ld} : at::IntArrayRef{ld, 1},
                         options);
  };
  Tensor c_ = view(c, M, N, ldc, false);
  if (add) {
    c_.addmm_(view(a, M, K, lda, ta), view(b, K, N, ldb, tb));
  } else {
    at::mm_out(c_, view(a, M, K, lda, ta), view(b, K, N, ldb, tb));
  }
}

// c (m, N) = a (m, K) · direction d's weight (+ c when `add`), one brgemm micro-kernel call per panel, or
// one BLAS product where the weight is not packed.
void product(int64_t m, const float* a, int64_t lda, const Panels& w, int64_t d, float* c, int64_t ldc, bool add) {
  if (w.plain != nullptr) {
    matmul(false, w.transposed, m, w.N, w.K, a, lda, w.plain + d * w.K * w.N, w.transposed ? w.K : w.N, c, ldc, add);
    return;
  }
  for (int64_t p = 0; m > 0 && p < w.count; ++p) {
    const int64_t n0 = p * kPanel, width = std::min(kPanel, w.N - n0);
    if (w.K == 0) {  // an empty product: c stays, or is zero
      for (int64_t r = 0; r < m && !add; ++r) std::fill_n(c + r * ldc + n0, width, 0.0f);
      continue;
    }
    at::native::cpublas::brgemm(m, width, w.K, lda, kPanel, ldc, add, a, w.panel(d, p), c + n0, false);
  }
}

// Runs block(d, r0, r1) for each direction d and block of batch rows [r0, r1): about one block per
// thread, each running the whole sequence for its rows.
template <typename Block>
void for_blocks(int64_t D, int64_t N, const Block& block) {
  const int64_t per_direction = std::max<int64_t>(1, (at::get_num_threads() + D - 1) / D);
  const int64_t rows = std::max<int64_t>(1, (N + per_direction - 1) / per_direction);
  const int64_t blocks = (N + rows - 1) / rows;
  at::parallel_for(0, D * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) block(b / blocks, (b % blocks) * rows, std::min(N, (b % blocks + 1) * rows));
  });
}

// Calls tile(t, a, b) for every step t of the sequence (backwards when `reverse`) and every tile
// [a, b) of the block's rows that step t updates (those below its batch size).
template <typename Tile>
void for_tiles(const Steps& steps, int64_t r0, int64_t r1, bool reverse, const Tile& tile) {
  for (int64_t i = 0; i < steps.count(); ++i) {
    const int64_t t = reverse ? steps.count() - 1 - i : i;
    const int64_t end = std::min(r1, steps.size[t]);
    for (int64_t a = r0; a < end; a += kTile) tile(t, a, std::min(end, a + kTile));
  }
}

void copy_row(float* to, const float* from, int64_t H) { std::memcpy(to, from, H * sizeof(float)); }

// Row r's state before step t, of a state written into the sequence buffer `seq` (D = 1 slice) step
// by step: the initial state's row at t = 0.
const float* before(const Steps& steps, const float* seq, const float* initial, int64_t t, int64_t r, int64_t W) {
  return t > 0 ? seq + (steps.offset[t - 1] + r) * W : initial + r * W;
}

// The input side of a tile's pre-activations, into out (m rows, leading dimension G): its rows of x
// (one direction's, I wide) times W_ihᵀ, plus the bias where there is one.
void input_side(int64_t m, const float* x, const Panels& w_ih, int64_t d, const float* bias, float* out, int64_t G) {
  for (int64_t r = 0; bias != nullptr && r < m; ++r) copy_row(out + r * G, bias, G);
  product(m, x, w_ih.K, w_ih, d, out, G, bias != nullptr);
}

// Direction d's bias (width G) of an optional (D, G) one: null where there is none.
const float* bias_of(const std::optional<Tensor>& bias, int64_t d, int64_t G) {
  return bias ? data(*bias) + d * G : nullptr;
}

// The incoming gradient of the layer's output rows (R, D·H), as each direction reads it: row i of
// direction 0 is row i, of direction 1 row reverse[i] (its rows run backwards in time), from column
// d·H on. Read in place: no per-direction copy of a buffer the size of the output.
struct GradRows {
  const float* base;
  int64_t width, H;
  const int64_t* reverse;
  const float* operator()(int64_t d, int64_t i) const { return base + (d == 0 ? i : reverse[i]) * width + d * H; }
};

GradRows grad_rows(const Tensor& grad, const std::optional<Tensor>& reverse, int64_t D, int64_t R, int64_t H) {
  check(grad, {R, D * H}, "grad_out");
  TORCH_CHECK(D == 1 || reverse.has_value(), "recurrent_cpu: two directions need the reverse index");
  if (reverse) {
    TORCH_CHECK(reverse->scalar_type() == at::kLong && reverse->device().is_cpu() && reverse->is_contiguous() &&
                    reverse->sizes() == at::IntArrayRef{R},
                "recurrent_cpu: reverse must be a contiguous int64 CPU tensor of shape [", R, "], got ",
                reverse->sizes(), " ", reverse->scalar_type());
    const int64_t* rows = reverse->data_ptr<int64_t>();
    TORCH_CHECK(std::all_of(rows, rows + R, [R](int64_t i) { return 0 <= i && i < R; }),
                "recurrent_cpu: reverse must hold row numbers below ", R);
  }
  return {data(grad), D * H, H, reverse ? reverse->data_ptr<int64_t>() : nullptr};
}

// Copies into `finals` (one direction's (N, W)) each of the rows [r0, r1) at its last step in `seq`.
void last_rows(const Steps& steps, const float* seq, float* finals, int64_t r0, int64_t r1, int64_t W) {
  int64_t t = steps.count() - 1;
  for (int64_t r = r0; r < r1; ++r) {
    while (t > 0 && steps.size[t] <= r) --t;  // the later a row, the sooner it ends: r's last step
    copy_row(finals + r * W, seq + (steps.offset[t] + r) * W, W);
  }
}

// Calls piece(first, count) for [begin, end) cut into as few pieces of at most kMaxRows as can be,
// as even as can be (32 = 6 + 6 + 5 · 4): a micro-kernel call of a row or two would be bound by its
// loads of the weights. Shared by the LSTM step's rows and the weight gradient's columns.
template <typename Piece>
void for_even_pieces(int64_t begin, int64_t end, const Piece& piece) {
  for (int64_t calls = (end - begin + kMaxRows - 1) / kMaxRows, first = begin, count; calls > 0; --calls) {
    count = (end - first + calls - 1) / calls;
    piece(first, count);
    first += count;
  }
}

// The LSTM's weights for gate_sums: per direction, panel p holds hidden units p·kLanes to
// p·kLanes + kLanes (zero past H) as K = I + H rows (W_ih's columns, then W_hh's) of their i, f, g, o
// weights, kLanes each; `start` holds the panel's bias (b_ih + b_hh, or zero) in the same order.
struct GatePanels {
  int64_t I, H, K, count;
  std::vector<float> weights, start;
  GatePanels(const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& bias)
      : I(w_ih.size(2)), H(w_hh.size(2)), K(I + H), count((H + kLanes - 1) / kLanes) {
    const int64_t D = w_ih.size(0);
    weights.assign(D * count * K * kGroup, 0.0f), start.assign(D * count * kGroup, 0.0f);
    at::parallel_for(0, D * count, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const int64_t d = n / count, j0 = (n % count) * kLanes, width = std::min<int64_t>(kLanes, H - j0);
        float* to = weights.data() + n * K * kGroup;
        // k outer: the panel is written in order, and the 4·width weight rows it gathers from stay
        // in L1 while k walks along them (k inner strides through the whole panel for each of them,
        // 4 times slower at H = 256).
        for (int64_t k = 0; k < K; ++k, to += kGroup) {
          const int64_t row_length = k < I ? I : H;
          const float* from = k < I ? data(w_ih) + d * 4 * H * I + k : data(w_hh) + d * 4 * H * H + k - I;
          for (int64_t q = 0; q < 4; ++q) {
            for (int64_t l = 0; l < width; ++l) to[q * kLanes + l] = from[(q * H + j0 + l) * row_length];
          }
        }
        for (int64_t q = 0; bias && q < 4; ++q) {
          std::memcpy(start.data() + n * kGroup + q * kLanes, data(*bias) + d * 4 * H + q * H + j0, width * 4);
        }
      }
    });
  }
  const float* panel(int64_t d, int64_t p) const { return weights.data() + (d * count + p) * K * kGroup; }
  const float* bias(int64_t d, int64_t p) const { return start.data() + (d * count + p) * kGroup; }
};

// LSTM, gate order (i, f, g, o), from a = W_ih x + b_ih + W_hh h + b_hh: gates (σ(a_i), σ(a_f),
// tanh(a_g), σ(a_o)), c' = f c + i g, h' = o tanh(c'), for `Rows` rows of gate_sums' sums (each its
// four gate vectors) and `width` hidden units: their c, c' and h' rows lie `stride` apart (c' may go
// over c), and the gates go into `saved` (rows 4·stride apart, gate blocks stride apart) unless null.
// Written gate by gate over all rows, so that the rows' chains of dependent operations interleave:
// 30% faster than row after row (the gate math alone, 6 rows, AMD EPYC).
template <int Rows>
[[gnu::always_inline]] inline void lstm_lanes(const float* a, const float* c, float* c_new, float* h, float* saved,
                                              int64_t stride, int64_t width) {
  Vec gates[Rows][4], cell[Rows];
#pragma GCC unroll 6
  for (int r = 0; r < Rows; ++r) {
    const float* sums = a + r * kGroup;
    gates[r][0] = sigmoid_(load(sums)), gates[r][1] = sigmoid_(load(sums + kLanes));
    gates[r][2] = tanh_(load(sums + 2 * kLanes)), gates[r][3] = sigmoid_(load(sums + 3 * kLanes));
  }
#pragma GCC unroll 6
  for (int r = 0; r < Rows; ++r) {
    const Vec i = gates[r][0], f = gates[r][1], g = gates[r][2];
    cell[r] = f * load(c + r * stride, width) + i * g;
    store(c_new + r * stride, cell[r], width);
    for (int q = 0; saved != nullptr && q < 4; ++q) stream(saved + (4 * r + q) * stride, gates[r][q], width);
  }
#pragma GCC unroll 6
  for (int r = 0; r < Rows; ++r) store(h + r * stride, gates[r][3] * tanh_(cell[r]), width);
}

// One LSTM row from its sums a = (a_i, a_f, a_g, a_o) (4H, in BLAS's layout): the gates written over a,
// c' = f c + i g and h' = o tanh(c').
void lstm_row(float* __restrict a, const float* c, float* c_new, float* __restrict h, int64_t H) {
  float *i = a, *f = a + H, *g = a + 2 * H, *o = a + 3 * H;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    i[j] = sigmoid_(i[j]), f[j] = sigmoid_(f[j]), g[j] = tanh_(g[j]), o[j] = sigmoid_(o[j]);
    c_new[j] = f[j] * c[j] + i[j] * g[j];
    h[j] = o[j] * tanh_(c_new[j]);
  }
}

// One step of every row (R = N), as Panels says: a = x W_ihᵀ + b + h0 W_hhᵀ by BLAS's products on the
// weights as they are, then the gate math of lstm_lanes on each row, written where lstm_sequence keeps it:
// h' into hs, c' into cs (with `save`; c_n is copied from it) or c_n (which holds c0), the gates into
// gates (with `save`: a is computed there and the activations written over it).
void lstm_one_step(const Tensor& x, const Tensor& w_ih, const std::optional<Tensor>& bias, const Tensor& h0,
                   const Tensor& c0, const Tensor& w_hh, const Steps& steps, Tensor& hs, Tensor& c_n, Tensor& gates,
                   Tensor& cs, bool save) {
  const int64_t D = h0.size(0), N = h0.size(1), H = h0.size(2), G = 4 * H, I = x.size(2);
  const Panels w_i(w_ih, true, steps), w_h(w_hh, true, steps);
  std::vector<float> scratch(save ? 0 : N * G);
  for (int64_t d = 0; d < D; ++d) {
    float* a_ = save ? data(gates) + d * N * G : scratch.data();
    input_side(N, data(x) + d * N * I, w_i, d, bias_of(bias, d, G), a_, G);
    product(N, data(h0) + d * N * H, H, w_h, d, a_, G, true);
    float *h_ = data(hs) + d * N * H, *c_new = data(save ? cs : c_n) + d * N * H;
    const float* c_ = data(c0) + d * N * H;
    at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {  // a large batch's rows over the threads
      for (int64_t r = begin; r < end; ++r) lstm_row(a_ + r * G, c_ + r * H, c_new + r * H, h_ + r * H, H);
    });
  }
  if (save) c_n.copy_(cs);
}

// x: each direction's input rows (D, R, I); bias: b_ih + b_hh (D, G). Returns (hs, h_n, c_n, gates,
// cs), gates and cs for every row when `save`, else empty (the cell state then lives in c_n).
// Per step and tile of rows, panel by panel (its weights stay in cache for the tile), kMaxRows rows
// at a time: gate_sums, then the gate math on its sums.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_sequence(const Tensor& x, const Tensor& w_ih,
                                                                 const std::optional<Tensor>& bias, const Tensor& h0,
                                                                 const Tensor& c0, const Tensor& w_hh,
                                                                 at::IntArrayRef batch_sizes, bool save) {
  const Steps steps(batch_sizes);
  const int64_t D = h0.size(0), N = h0.size(1), H = h0.size(2), G = 4 * H, R = steps.rows, I = x.size(-1);
  check(x, {D, R, I}, "x"), check(w_ih, {D, G, I}, "w_ih"), check(h0, {D, N, H}, "h0"), check(c0, {D, N, H}, "c0");
  check(w_hh, {D, G, H}, "w_hh");
  if (bias) check(*bias, {D, G}, "bias");
  const auto options = x.options();
  Tensor hs = at::empty({D, R, H}, options), gates = at::empty({D, save ? R : 0, G}, options);
  Tensor cs = at::empty({D, save ? R : 0, H}, options), h_n = at::empty({D, N, H}, options);
  Tensor c_n = save ? at::empty({D, N, H}, options) : c0.clone();
  if (steps.count() == 1) {
    lstm_one_step(x, w_ih, bias, h0, c0, w_hh, steps, hs, c_n, gates, cs, save);
    h_n.copy_(hs);
    return {hs, h_n, c_n, gates, cs};
  }
  const GatePanels w(w_ih, w_hh, bias);
  for_blocks(D, N, [&](int64_t d, int64_t r0, int64_t r1) {
    float sums[kMaxRows * kGroup];
    const float *h0_ = data(h0) + d * N * H, *c0_ = data(c0) + d * N * H, *x_ = data(x) + d * R * I;
    float *hs_ = data(hs) + d * R * H, *c_seq = save ? data(cs) + d * R * H : nullptr, *c_state = data(c_n) + d * N * H;
    for_tiles(steps, r0, r1, false, [&](int64_t t, int64_t a, int64_t b) {
      for (int64_t p = 0, j0 = 0; p < w.count; ++p, j0 += kLanes) {
        for_even_pieces(a, b, [&](int64_t r, int64_t rows) {
          const int64_t row = steps.offset[t] + r, width = std::min<int64_t>(kLanes, H - j0);
          const float* c = (save ? before(steps, c_seq, c0_, t, r, H) : c_state + r * H) + j0;
          float* c_new = (save ? c_seq + row * H : c_state + r * H) + j0;
          float* saved = save ? data(gates) + (d * R + row) * G + j0 : nullptr;
          by_rows(rows, [&]<int Rows>() {
            gate_sums<Rows>(w.bias(d, p), x_ + row * I, I, I, before(steps, hs_, h0_, t, r, H), H, H, w.panel(d, p), sums);
            lstm_lanes<Rows>(sums, c, c_new, hs_ + row * H + j0, saved, H, width);
          });
        });
      }
    });
    last_rows(steps, hs_, data(h_n) + d * N * H, r0, r1, H);
    if (save) last_rows(steps, c_seq, data(c_n) + d * N * H, r0, r1, H);
    recurrent_cpu::stream_fence();
  });
  return {hs, h_n, c_n, gates, cs};
}

// The LSTM step's gradients from dh' = dh + grad_h and dc', with the saved gates and c, c' (t = tanh(c')):
// dc = dc' + dh' o (1 − t²); da = (dc g i(1 − i), dc c f(1 − f), dc i (1 − g²), dh' t o(1 − o)); dc_prev = dc f,
// over dc. da goes over the gates (each column's gates are read before its da is written).
void lstm_backward_row(const float* __restrict dh, const float* __restrict grad_h, float* __restrict dc,
                       float* __restrict gates, const float* __restrict c_prev, const float* __restrict c, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float i = gates[j], f = gates[H + j], g = gates[2 * H + j], o = gates[3 * H + j];
    const float d_h = dh[j] + grad_h[j];
    const float t = tanh_(c[j]);
    const float d_c = dc[j] + d_h * o * (1.0f - t * t);
    gates[j] = d_c * g * i * (1.0f - i);
    gates[H + j] = d_c * c_prev[j] * f * (1.0f - f);
    gates[2 * H + j] = d_c * i * (1.0f - g * g);
    gates[3 * H + j] = d_h * t * o * (1.0f - o);
    dc[j] = d_c * f;
  }
}

// Returns (dgates, dh0, dc0), dgates written over the saved gates (the layer's own buffer: one the
// size of the sequence less); gates and cs as lstm_sequence saved them, dh' = dgates W_hh per step.
std::tuple<Tensor, Tensor, Tensor> lstm_sequence_backward(const Tensor& grad_out, const std::optional<Tensor>& reverse,
                                                          const Tensor& dh_n, const Tensor& dc_n,
                                                          const Tensor& gates, const Tensor& cs, const Tensor& c0,
                                                          const Tensor& w_hh, at::IntArrayRef batch_sizes) {
  const Steps steps(batch_sizes);
  const int64_t D = c0.size(0), N = c0.size(1), H = c0.size(2), G = 4 * H, R = steps.rows;
  const GradRows grad = grad_rows(grad_out, reverse, D, R, H);
  check(dh_n, {D, N, H}, "dh_n"), check(dc_n, {D, N, H}, "dc_n");
  check(gates, {D, R, G}, "gates"), check(cs, {D, R, H}, "cs"), check(c0, {D, N, H}, "c0");
  check(w_hh, {D, G, H}, "w_hh");
  Tensor dh = dh_n.clone(), dc = dc_n.clone();
  const Panels w(w_hh, false, steps);
  for_blocks(D, N, [&](int64_t d, int64_t r0, int64_t r1) {
    float *dh_ = data(dh) + d * N * H, *dc_ = data(dc) + d * N * H;
    const float* c_seq = data(cs) + d * R * H;
    for_tiles(steps, r0, r1, true, [&](int64_t t, int64_t a, int64_t b) {
      const int64_t row = d * R + steps.offset[t];
      for (int64_t r = a; r < b; ++r) {
        const float* c_prev = before(steps, c_seq, data(c0) + d * N * H, t, r, H);
        lstm_backward_row(dh_ + r * H, grad(d, steps.offset[t] + r), dc_ + r * H, data(gates) + (row + r) * G, c_prev,
                          data(cs) + (row + r) * H, H);
      }
      product(b - a, data(gates) + (row + a) * G, G, w, d, dh_ + a * H, H, false);
    });
  });
  return {gates, dh, dc};
}

// GRU, gate order (r, z, n), gh = W_hh h + b_hh: r = σ(gi_r + gh_r), z = σ(gi_z + gh_z),
// n = tanh(gi_n + r gh_n), h' = n + z (h − n); (r, z, n) go into gi.
void gru_row(const float* __restrict gh, float* __restrict gi, const float* __restrict h, float* __restrict h_new,
             int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float r = sigmoid_(gh[j] + gi[j]);
    const float z = sigmoid_(gh[H + j] + gi[H + j]);
    const float n = tanh_(gi[2 * H + j] + r * gh[2 * H + j]);
    gi[j] = r;
    gi[H + j] = z;
    gi[2 * H + j] = n;
    h_new[j] = n + z * (h[j] - n);
  }
}

// x: each direction's input rows (D, R, I). Returns (hs, h_n, gates, ghn): with `save`, the gates
// (r, z, n) and ghn = W_hn h + b_hn for every row, else both empty.
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_sequence(const Tensor& x, const Tensor& w_ih,
                                                        const std::optional<Tensor>& b_ih, const Tensor& h0,
                                                        const Tensor& w_hh, const std::optional<Tensor>& b_hh,
                                                        at::IntArrayRef batch_sizes, bool save) {
  const Steps steps(batch_sizes);
  const int64_t D = h0.size(0), N = h0.size(1), H = h0.size(2), G = 3 * H, R = steps.rows, I = x.size(-1);
  check(x, {D, R, I}, "x"), check(w_ih, {D, G, I}, "w_ih"), check(h0, {D, N, H}, "h0"), check(w_hh, {D, G, H}, "w_hh");
  if (b_ih) check(*b_ih, {D, G}, "b_ih");
  if (b_hh) check(*b_hh, {D, G}, "b_hh");
  const auto options = x.options();
  Tensor hs = at::empty({D, R, H}, options), h_n = at::empty({D, N, H}, options);
  Tensor gates = at::empty({D, save ? R : 0, G}, options), ghn = at::empty({D, save ? R : 0, H}, options);
  const Panels w_i(w_ih, true, steps), w_h(w_hh, true, steps);
  for_blocks(D, N, [&](int64_t d, int64_t r0, int64_t r1) {
    std::vector<float> gh(kTile * G), scratch(save ? 0 : kTile * G);
    const float *h0_ = data(h0) + d * N * H, *x_ = data(x) + d * R * I;
    float* hs_ = data(hs) + d * R * H;
    for_tiles(steps, r0, r1, false, [&](int64_t t, int64_t a, int64_t b) {
      const int64_t row = steps.offset[t] + a;
      float* gi = save ? data(gates) + (d * R + row) * G : scratch.data();
      input_side(b - a, x_ + row * I, w_i, d, bias_of(b_ih, d, G), gi, G);
      input_side(b - a, before(steps, hs_, h0_, t, a, H), w_h, d, bias_of(b_hh, d, G), gh.data(), G);
      for (int64_t r = a; r < b; ++r) {
        const float* gh_row = gh.data() + (r - a) * G;
        const int64_t here = steps.offset[t] + r;
        gru_row(gh_row, gi + (r - a) * G, before(steps, hs_, h0_, t, r, H), hs_ + here * H, H);
        if (save) copy_row(data(ghn) + (d * R + here) * H, gh_row + 2 * H, H);
      }
    });
    last_rows(steps, hs_, data(h_n) + d * N * H, r0, r1, H);
  });
  return {hs, h_n, gates, ghn};
}

// The GRU step's gradients from dh' = dh + grad_h: da_n = dh' (1 − z)(1 − n²), da_z = dh' (h − n) z(1 − z),
// da_r = da_n gh_n r(1 − r); dgi = (da_r, da_z, da_n) over the gates, dgh = (da_r, da_z, da_n r), of
// which dghn = da_n r over ghn (each column is read before it is written); dh becomes dh' z, the part
// of dh_prev that does not go through W_hh.
void gru_backward_row(float* __restrict dh, const float* __restrict grad_h, float* __restrict gates,
                      float* __restrict ghn_, const float* __restrict h_prev, float* __restrict dgh, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float r = gates[j], z = gates[H + j], n = gates[2 * H + j], ghn = ghn_[j];
    const float d_h = dh[j] + grad_h[j];
    const float da_n = d_h * (1.0f - z) * (1.0f - n * n);
    const float da_z = d_h * (h_prev[j] - n) * z * (1.0f - z);
    const float da_r = da_n * ghn * r * (1.0f - r);
    gates[j] = da_r;
    gates[H + j] = da_z;
    gates[2 * H + j] = da_n;
    dgh[j] = da_r;
    dgh[H + j] = da_z;
    dgh[2 * H + j] = da_n * r;
    ghn_[j] = da_n * r;
    dh[j] = d_h * z;
  }
}

// Returns (dgi, dghn, dh0), written over the saved gates and ghn (the layer's own buffers): the
// hidden gates' gradient dgh equals dgi but in its n block, which is dghn (D, R, H);
// dh_prev = dh' z + dgh W_hh per step.
std::tuple<Tensor, Tensor, Tensor> gru_sequence_backward(const Tensor& grad_out, const std::optional<Tensor>& reverse,
                                                         const Tensor& dh_n, const Tensor& gates,
                                                         const Tensor& ghn, const Tensor& hs, const Tensor& h0,
                                                         const Tensor& w_hh, at::IntArrayRef batch_sizes) {
  const Steps steps(batch_sizes);
  const int64_t D = h0.size(0), N = h0.size(1), H = h0.size(2), G = 3 * H, R = steps.rows;
  const GradRows grad = grad_rows(grad_out, reverse, D, R, H);
  check(dh_n, {D, N, H}, "dh_n"), check(gates, {D, R, G}, "gates");
  check(ghn, {D, R, H}, "ghn"), check(hs, {D, R, H}, "hs"), check(h0, {D, N, H}, "h0"), check(w_hh, {D, G, H}, "w_hh");
  Tensor dh = dh_n.clone();
  const Panels w(w_hh, false, steps);
  for_blocks(D, N, [&](int64_t d, int64_t r0, int64_t r1) {
    std::vector<float> dgh(kTile * G);
    float* dh_ = data(dh) + d * N * H;
    for_tiles(steps, r0, r1, true, [&](int64_t t, int64_t a, int64_t b) {
      const int64_t row = d * R + steps.offset[t];
      for (int64_t r = a; r < b; ++r) {
        const float* h_prev = before(steps, data(hs) + d * R * H, data(h0) + d * N * H, t, r, H);
        gru_backward_row(dh_ + r * H, grad(d, steps.offset[t] + r), data(gates) + (row + r) * G,
                         data(ghn) + (row + r) * H, h_prev, dgh.data() + (r - a) * G, H);
      }
      product(b - a, dgh.data(), G, w, d, dh_ + a * H, H, true);
    });
  });
  return {gates, ghn, dh};
}

// Elman: h' = tanh(a) or relu(a) over a = gh + gi.
void rnn_row(float* __restrict a, int64_t H, bool relu) {
  if (relu) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) a[j] = a[j] > 0.0f ? a[j] : (a[j] == a[j] ? 0.0f : a[j]);  // NaN kept, as torch.relu
  } else {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) a[j] = tanh_(a[j]);
  }
}

// x: each direction's input rows (D, R, I); bias: b_ih + b_hh (D, H). Returns (hs, h_n).
std::tuple<Tensor, Tensor> rnn_sequence(const Tensor& x, const Tensor& w_ih, const std::optional<Tensor>& bias,
                                        const Tensor& h0, const Tensor& w_hh, at::IntArrayRef batch_sizes, bool relu) {
  const Steps steps(batch_sizes);
  const int64_t D = h0.size(0), N = h0.size(1), H = h0.size(2), R = steps.rows, I = x.size(-1);
  check(x, {D, R, I}, "x"), check(w_ih, {D, H, I}, "w_ih"), check(h0, {D, N, H}, "h0"), check(w_hh, {D, H, H}, "w_hh");
  if (bias) check(*bias, {D, H}, "bias");
  Tensor hs = at::empty({D, R, H}, x.options()), h_n = at::empty({D, N, H}, x.options());
  const Panels w_i(w_ih, true, steps), w_h(w_hh, true, steps);
  for_blocks(D, N, [&](int64_t d, int64_t r0, int64_t r1) {
    const float *h0_ = data(h0) + d * N * H, *x_ = data(x) + d * R * I;
    float* hs_ = data(hs) + d * R * H;
    for_tiles(steps, r0, r1, false, [&](int64_t t, int64_t a, int64_t b) {
      const int64_t row = steps.offset[t] + a;
      float* tile = hs_ + row * H;
      input_side(b - a, x_ + row * I, w_i, d, bias_of(bias, d, H), tile, H);
      product(b - a, before(steps, hs_, h0_, t, a, H), H, w_h, d, tile, H, true);
      for (int64_t r = a; r < b; ++r) rnn_row(tile + (r - a) * H, H, relu);
    });
    last_rows(steps, hs_, data(h_n) + d * N * H, r0, r1, H);
  });
  return {hs, h_n};
}

// da = (dh + grad_h) act'(a) over the output h': act' is 1 − h'² for tanh, [h' > 0] for relu (torch's
// threshold_backward: the gradient passes unless h' <= 0).
void rnn_backward_row(const float* __restrict dh, const float* __restrict grad_h, float* __restrict h, int64_t H,
                      bool relu) {
  if (relu) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) h[j] = h[j] <= 0.0f ? 0.0f : dh[j] + grad_h[j];
  } else {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) h[j] = (dh[j] + grad_h[j]) * (1.0f - h[j] * h[j]);
  }
}

// Writes da over the outputs hs, the layer's own buffer (its callers got copies): one sequence-sized
// buffer less. So dW_hh = Σ_t da_tᵀ h_{t−1} is summed here, step by step, while h_{t−1} is still
// there (step t−1 comes later in the backward), each block of rows into its own sum.
// Returns (dh0, dW_hh (D, H, H)); dh_prev = da W_hh per step.
std::tuple<Tensor, Tensor> rnn_sequence_backward(const Tensor& grad_out, const std::optional<Tensor>& reverse,
                                                 const Tensor& dh_n, const Tensor& hs,
                                                 const Tensor& h0, const Tensor& w_hh, at::IntArrayRef batch_sizes,
                                                 bool relu) {
  const Steps steps(batch_sizes);
  const int64_t D = dh_n.size(0), N = dh_n.size(1), H = dh_n.size(2), R = steps.rows;
  const GradRows grad = grad_rows(grad_out, reverse, D, R, H);
  check(dh_n, {D, N, H}, "dh_n"), check(hs, {D, R, H}, "hs");
  check(h0, {D, N, H}, "h0"), check(w_hh, {D, H, H}, "w_hh");
  // A one-step call sums dW_hh = daᵀ h0 after the step, one BLAS product per direction: the per-block sums
  // (their zeroed buffers, transposed copies and adding up) cost more than the product at H = 200.
  const bool one_step = steps.count() == 1;
  Tensor dh = dh_n.clone(), dw = one_step ? at::empty({D, H, H}, hs.options()) : at::zeros({D, H, H}, hs.options());
  const Panels w(w_hh, false, steps);
  std::mutex adding;
  for_blocks(D, N, [&](int64_t d, int64_t r0, int64_t r1) {
    std::vector<float> sum(one_step ? 0 : H * H), da_t(one_step ? 0 : H * kTile);
    float *dh_ = data(dh) + d * N * H, *hs_ = data(hs) + d * R * H;
    for_tiles(steps, r0, r1, true, [&](int64_t t, int64_t a, int64_t b) {
      float* da = hs_ + (steps.offset[t] + a) * H;
      for (int64_t r = a; r < b; ++r) {
        rnn_backward_row(dh_ + r * H, grad(d, steps.offset[t] + r), da + (r - a) * H, H, relu);
      }
      if (!one_step) {
        for (int64_t j = 0; j < H; ++j) {  // the tile's da transposed: (H, b − a)
          for (int64_t r = 0; r < b - a; ++r) da_t[j * kTile + r] = da[r * H + j];
        }
        const float* h_prev = before(steps, hs_, data(h0) + d * N * H, t, a, H);
        at::native::cpublas::brgemm(H, H, b - a, kTile, H, H, true, da_t.data(), h_prev, sum.data(), false);
      }
      product(b - a, da, H, w, d, dh_ + a * H, H, false);
    });
    if (one_step) return;
    const std::lock_guard<std::mutex> lock(adding);
    float* total = data(dw) + d * H * H;
    for (int64_t i = 0; i < H * H; ++i) total[i] += sum[i];
  });
  for (int64_t d = 0; one_step && d < D; ++d) {  // da (N, H) is the step's rows of hs
    matmul(true, false, H, H, N, data(hs) + d * R * H, H, data(h0) + d * N * H, H, data(dw) + d * H * H, H, false);
  }
  return {dh, dw};
}

// Rows of a weight gradient's sum per pass over its columns: a panel's rows of grad (128 x kGroup
// floats) stay in L1 for all of x's columns, those of x (128 x K) in L2 for all of the panels.
constexpr int64_t kRowBlock = 128;

// Each direction's R rows, in order, from row blocks (D, ·, K) that cover them.
std::vector<const float*> row_table(at::TensorList blocks, int64_t D, int64_t R, int64_t K, const char* name) {
  std::vector<const float*> rows;
  for (int64_t d = 0; d < D; ++d) {
    for (const Tensor& block : blocks) {
      TORCH_CHECK(block.scalar_type() == at::kFloat && block.device().is_cpu() && block.dim() == 3 &&
                      block.size(0) == D && block.size(2) == K && block.stride(2) == 1,
                  "recurrent_cpu: ", name, " must be float32 CPU tensors (", D, ", ·, ", K,
                  ") with unit column stride, got ", block.sizes());
      for (int64_t i = 0; i < block.size(1); ++i) rows.push_back(data(block) + d * block.stride(0) + i * block.stride(1));
    }
  }
  TORCH_CHECK(blocks.empty() || static_cast<int64_t>(rows.size()) == D * R, "recurrent_cpu: ", name,
              " must hold ", R, " rows");
  return rows;
}

// The columns whose products with grad weight_grad sums, cut into tiles (for_even_pieces) that do
// not straddle its parts: x's columns, h's, and the bias's one
// column of ones. A tile's rows are packed together from x + column · count.
struct ColumnTiles {
  struct Tile {
    int part;  // 0: x, 1: h, 2: ones
    int64_t k0, width, column;  // its columns k0.. of the part; `column` of all of them
  };
  std::vector<Tile> tiles;
  int64_t columns = 0;
  explicit ColumnTiles(std::initializer_list<int64_t> part_widths) {
    int part = 0;
    for (const int64_t K : part_widths) {
      for_even_pieces(0, K, [&](int64_t k0, int64_t width) { tiles.push_back({part, k0, width, columns + k0}); });
      columns += K, ++part;
    }
  }
};

// Packs the rows [r0, r0 + count) of direction d's parts (x_rows, h_rows: each direction's R rows).
void pack_rows(const ColumnTiles& columns, const std::vector<const float*>* parts[2], int64_t first, int64_t count,
               float* x) {
  for (const auto& tile : columns.tiles) {
    float* to = x + tile.column * count;
    if (tile.part == 2) {
      std::fill_n(to, count, 1.0f);
      continue;
    }
    const std::vector<const float*>& rows = *parts[tile.part];
    by_rows(tile.width, [&]<int Rows>() {  // a copy of a constant few floats: inlined, no call
      for (int64_t i = 0; i < count; ++i) std::memcpy(to + i * Rows, rows[first + i] + tile.k0, Rows * 4);
    });
  }
}

// Σ over rows of gradᵀ [x, h, 1] for each direction: grad (D, R, G) (its rows may be a column slice
// of wider ones), x and h as row blocks (D, ·, I) and (D, ·, H) that cover the R rows in order (h's
// may be none). Returns (Σ gradᵀ x (D, G, I), Σ gradᵀ h (D, G, H), Σ grad (D, G) where `bias`): the
// input and hidden weights' and the bias's gradients in one pass over grad, without the transposed
// copies oneDNN's product needed. Each thread takes a share of grad's kGroup-column panels and sums
// them (transposed: (columns, kGroup) a panel) a block of rows at a time, the block's x and h and
// each panel's grad rows packed first: read in place, rows a power of two floats apart fall into the
// same few cache sets (L1 held 12 of 128 such grad rows: 30% slower at G = 1024).
std::tuple<Tensor, Tensor, Tensor> weight_grad(const Tensor& grad, at::TensorList x_blocks, at::TensorList h_blocks,
                                               bool bias) {
  TORCH_CHECK(grad.scalar_type() == at::kFloat && grad.device().is_cpu() && grad.dim() == 3 && grad.stride(2) == 1,
              "recurrent_cpu: grad must be a float32 CPU tensor (D, R, G) with unit column stride, got ", grad.sizes());
  const int64_t D = grad.size(0), R = grad.size(1), G = grad.size(2);
  const int64_t I = x_blocks.empty() ? 0 : x_blocks[0].size(2), H = h_blocks.empty() ? 0 : h_blocks[0].size(2);
  const std::vector<const float*> x_rows = row_table(x_blocks, D, R, I, "x_blocks");
  const std::vector<const float*> h_rows = row_table(h_blocks, D, R, H, "h_blocks");
  const std::vector<const float*>* parts[2] = {&x_rows, &h_rows};
  const ColumnTiles columns({I, H, bias ? 1 : 0});
  const int64_t K = columns.columns, panels = (G + kGroup - 1) / kGroup, threads = at::get_num_threads();
  Tensor dw_x = at::empty({D, G, I}, grad.options()), dw_h = at::empty({D, G, H}, grad.options());
  Tensor db = at::empty({D, bias ? G : 0}, grad.options());
  at::parallel_for(0, D * panels, (D * panels + threads - 1) / threads, [&](int64_t begin, int64_t end) {
    std::vector<float> sums((end - begin) * K * kGroup, 0.0f), x(kRowBlock * K), g(kRowBlock * kGroup, 0.0f);
    for (int64_t r0 = 0; r0 < R; r0 += kRowBlock) {
      const int64_t count = std::min(kRowBlock, R - r0);
      for (int64_t n = begin; n < end; ++n) {
        const int64_t d = n / panels, g0 = (n % panels) * kGroup, width = std::min<int64_t>(kGroup, G - g0);
        if (n == begin || n % panels == 0) pack_rows(columns, parts, d * R + r0, count, x.data());  // a new direction
        const float* from = data(grad) + d * grad.stride(0) + r0 * grad.stride(1) + g0;
        // A part panel's columns past `width` keep what an earlier panel left there: summed into its
        // columns past `width` too, which are never written out.
        for (int64_t i = 0; i < count; ++i) std::memcpy(g.data() + i * kGroup, from + i * grad.stride(1), width * 4);
        float* tile = sums.data() + (n - begin) * K * kGroup;
        for (const auto& t : columns.tiles) {
          by_rows(t.width, [&]<int Rows>() {
            weight_sums<Rows>(x.data() + t.column * count, count, g.data(), tile + t.column * kGroup);
          });
        }
      }
    }
    // (The pointers once: data_ptr's checks in these loops took 0.8 ms of a one-row call's 1.1, G = 600.)
    float *dw_x_ = data(dw_x), *dw_h_ = data(dw_h), *db_ = data(db);
    for (int64_t n = begin; n < end; ++n) {  // each panel's sums, transposed, into the three gradients
      const int64_t d = n / panels, g0 = (n % panels) * kGroup, width = std::min<int64_t>(kGroup, G - g0);
      const float* tile = sums.data() + (n - begin) * K * kGroup;
      for (int64_t j = 0; j < width; ++j) {
        for (int64_t k = 0; k < I; ++k) dw_x_[(d * G + g0 + j) * I + k] = tile[k * kGroup + j];
        for (int64_t k = 0; k < H; ++k) dw_h_[(d * G + g0 + j) * H + k] = tile[(I + k) * kGroup + j];
        if (bias) db_[d * G + g0 + j] = tile[(I + H) * kGroup + j];
      }
    }
  });
  return {dw_x, dw_h, db};
}

// The row order of the second direction (an involution, as common.reverse_index): row (t, n) reads row
// (length(n) − 1 − t, n), every sequence reversed in time within its own length.
Tensor reverse_index(const Steps& steps, const at::TensorOptions& options) {
  std::vector<int64_t> length(steps.count() > 0 ? steps.size[0] : 0);
  for (int64_t t = 0; t < steps.count(); ++t) std::fill_n(length.begin(), steps.size[t], t + 1);
  Tensor index = at::empty({steps.rows}, options.dtype(at::kLong));
  int64_t* to = index.data_ptr<int64_t>();
  for (int64_t t = 0; t < steps.count(); ++t) {
    for (int64_t n = 0; n < steps.size[t]; ++n) to[steps.offset[t] + n] = steps.offset[length[n] - 1 - t] + n;
  }
  return index;
}

// A whole stack, every layer and direction in one call (the eager layers' route where a layer's Python cost
// more than its op: a one-step call): each layer runs the kind's sequence op on its weights stacked by
// direction, as the Python layer stacks them (b_hh folded into b_ih for RNN and LSTM), the second direction
// on its rows reversed, dropout between layers where `train` (without gradients only). Its own ops run
// below autograd: views of the weights (parameters) made through autograd's kernels cost a fifth of a
// one-step call (H = 200).
struct Stack {
  bool lstm, gru, relu;
  int64_t D, per;
  at::TensorList weights;
  Steps steps;
  Tensor reverse;  // the second direction's row order (two directions)
  std::vector<Tensor> state0;  // as given; zeros (layers·D, N, H) where none were given (an empty list)
  Stack(const std::string& mode, at::TensorList weights, at::TensorList state0, int64_t num_layers,
        bool bidirectional, at::IntArrayRef batch_sizes, const Tensor& rows)
      : lstm(mode == "LSTM"), gru(mode == "GRU"), relu(mode == "RNN_RELU"), D(bidirectional ? 2 : 1),
        per(static_cast<int64_t>(weights.size()) / std::max<int64_t>(1, num_layers * D)), weights(weights),
        steps(batch_sizes) {
    TORCH_CHECK(lstm || gru || relu || mode == "RNN_TANH", "recurrent_cpu: no native stack for mode ", mode);
    TORCH_CHECK(num_layers > 0 && (per == 2 || per == 4) && per * num_layers * D == static_cast<int64_t>(weights.size()),
                "recurrent_cpu: expected 2 or 4 weights per layer and direction, got ", weights.size(), " for ",
                num_layers, " layers of ", D, " directions");
    const size_t states = lstm ? 2 : 1;
    TORCH_CHECK(state0.empty() || state0.size() == states, "recurrent_cpu: ", mode, " takes ", states, " states");
    if (D == 2) reverse = reverse_index(steps, rows.options());
    const int64_t N = steps.count() > 0 ? steps.size[0] : 0, H = weights[1].size(1);
    for (size_t i = 0; i < states; ++i) {  // zeros made here cost less than the caller's, a one-step call's share
      this->state0.push_back(state0.empty() ? at::zeros({num_layers * D, N, H}, rows.options()) : state0[i]);
    }
  }
  // Parameter i (0: W_ih, 1: W_hh, 2: b_ih, 3: b_hh) of `layer`, stacked by direction: (D, ...).
  Tensor stacked(int64_t layer, int64_t i) const {
    const Tensor& first = weights[layer * D * per + i];
    return (D == 1 ? first.unsqueeze(0) : at::stack({first, weights[(layer * D + 1) * per + i]})).contiguous();
  }
  // b_ih + b_hh (D, G), one rounding as torch's add: the folded bias of RNN and LSTM; none without biases.
  std::optional<Tensor> folded_bias(int64_t layer) const {
    if (per != 4) return std::nullopt;
    const Tensor b_ih = stacked(layer, 2), b_hh = stacked(layer, 3);
    Tensor sum = at::empty({D, b_ih.size(-1)}, b_ih.options());
    const float *b_i = data(b_ih), *b_h = data(b_hh);
    float* to = data(sum);
    for (int64_t j = 0; j < sum.numel(); ++j) to[j] = b_i[j] + b_h[j];
    return sum;
  }
  // A layer's slice (D, N, ·) of a stack's state (layers·D, N, ·).
  Tensor slice(const Tensor& state, int64_t layer) const { return state.slice(0, layer * D, (layer + 1) * D).contiguous(); }
  // Each direction's input rows (D, R, I) from the layer's (R, I), the second one reversed in time.
  Tensor per_direction(const Tensor& x) const {
    return (D == 1 ? x.unsqueeze(0) : at::stack({x, x.index_select(0, reverse)})).contiguous();
  }
  // The output rows (R, D·H) from hs (D, R, H).
  Tensor joined(const Tensor& hs) const { return D == 1 ? hs[0] : at::cat({hs[0], hs[1].index_select(0, reverse)}, 1); }
  // What a layer's forward saves, after its hs: the GRU's gates and ghn, the LSTM's gates and cs.
  int64_t saved_per_layer() const { return lstm || gru ? 3 : 1; }
};

// weights: torch.nn's flat list (per layer and direction W_ih, W_hh[, b_ih, b_hh]); rows (R, I); state0:
// [h0] or [h0, c0], each (layers·D, N, H), or none for zeros. Returns (output rows (R, D·H), final states, saved):
// with `save`, per layer hs and what its kind saves (stack_backward's input), then, for two directions,
// each layer's output rows but the last's (the next layer's input), and the output is a copy of the last
// hs (the caller may modify it in place).
std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>> stack_forward(
    const std::string& mode, const Tensor& rows, at::TensorList state0, at::TensorList weights, int64_t num_layers,
    bool bidirectional, at::IntArrayRef batch_sizes, double dropout, bool train, bool save) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Stack stack(mode, weights, state0, num_layers, bidirectional, batch_sizes, rows);
  TORCH_CHECK(!save || dropout == 0 || !train, "recurrent_cpu: the saving stack runs no dropout");
  Tensor x = rows;
  std::vector<std::vector<Tensor>> finals(stack.state0.size());
  std::vector<Tensor> saved, outputs;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const Tensor w_ih = stack.stacked(layer, 0), w_hh = stack.stacked(layer, 1), xs = stack.per_direction(x);
    const Tensor h0 = stack.slice(stack.state0[0], layer);
    Tensor hs;
    if (stack.lstm) {
      auto [h, h_n, c_n, gates, cs] =
          lstm_sequence(xs, w_ih, stack.folded_bias(layer), h0, stack.slice(stack.state0[1], layer), w_hh, batch_sizes,
                        save);
      hs = h, finals[0].push_back(h_n), finals[1].push_back(c_n);
      if (save) saved.insert(saved.end(), {h, gates, cs});
    } else if (stack.gru) {
      std::optional<Tensor> b_ih, b_hh;
      if (stack.per == 4) b_ih = stack.stacked(layer, 2), b_hh = stack.stacked(layer, 3);
      auto [h, h_n, gates, ghn] = gru_sequence(xs, w_ih, b_ih, h0, w_hh, b_hh, batch_sizes, save);
      hs = h, finals[0].push_back(h_n);
      if (save) saved.insert(saved.end(), {h, gates, ghn});
    } else {
      auto [h, h_n] = rnn_sequence(xs, w_ih, stack.folded_bias(layer), h0, w_hh, batch_sizes, stack.relu);
      hs = h, finals[0].push_back(h_n);
      if (save) saved.push_back(h);
    }
    x = stack.joined(hs);
    if (save && stack.D == 2 && layer < num_layers - 1) outputs.push_back(x);
    if (dropout > 0 && train && layer < num_layers - 1) x = at::dropout(x, dropout, true);
  }
  std::vector<Tensor> states;
  for (const auto& f : finals) states.push_back(f.size() == 1 ? f[0] : at::cat(f, 0));
  saved.insert(saved.end(), outputs.begin(), outputs.end());
  return {save && stack.D == 1 ? x.clone() : x, states, saved};
}

// Σ over rows of gradᵀ x, gradᵀ h and grad per direction: grad (D, R, G) with unit column stride, x and h as
// row blocks (D, ·, ·) covering the rows in order (h's may be none). As the layer's backward chooses: from
// 192 gate columns and 128 rows on, weight_grad's one pass; below, BLAS's products per block and direction.
std::tuple<Tensor, Tensor, Tensor> sums(const Tensor& grad, const std::vector<Tensor>& x, const std::vector<Tensor>& h,
                                        bool bias) {
  const int64_t D = grad.size(0), R = grad.size(1), G = grad.size(2);
  if (G > 128 && R >= 128) return weight_grad(grad, x, h, bias);
  const int64_t I = x[0].size(2), H = h.empty() ? 0 : h[0].size(2);
  Tensor dw_x = at::empty({D, G, I}, grad.options()), dw_h = at::empty({D, G, H}, grad.options());
  Tensor db = at::zeros({D, bias ? G : 0}, grad.options());
  for (int64_t d = 0; d < D; ++d) {
    const float* g = data(grad) + d * grad.stride(0);
    const auto blocks_into = [&](const std::vector<Tensor>& blocks, float* out, int64_t K) {
      int64_t start = 0;
      for (size_t i = 0; i < blocks.size(); ++i) {
        const Tensor& block = blocks[i];
        const int64_t rows = block.size(1);
        matmul(true, false, G, K, rows, g + start * grad.stride(1), grad.stride(1),
               data(block) + d * block.stride(0), block.stride(1), out, K, i > 0);
        start += rows;
      }
      if (blocks.empty() || start == 0) std::fill_n(out, G * K, 0.0f);
    };
    blocks_into(x, data(dw_x) + d * G * I, I);
    if (!h.empty()) blocks_into(h, data(dw_h) + d * G * H, H);
    float* b = data(db) + d * G;
    for (int64_t r = 0; bias && r < R; ++r) {
      const float* row = g + r * grad.stride(1);
#pragma omp simd
      for (int64_t j = 0; j < G; ++j) b[j] += row[j];
    }
  }
  return {dw_x, dw_h, db};
}

// The state before every row, as row blocks (D, ·, H) covering the rows in order: h0, then hs one step
// behind (two views) for a padded batch; gathered for a packed one.
std::vector<Tensor> previous_states(const Steps& steps, const Tensor& h0, const Tensor& hs) {
  const int64_t N = h0.size(1), R = steps.rows;
  if (steps.count() == 0) return {hs};  // no rows: an empty block
  if (steps.size.back() == N) return {h0, hs.slice(1, 0, R - N)};
  const int64_t D = hs.size(0), H = hs.size(2);
  Tensor prev = at::empty({D, R, H}, hs.options());
  for (int64_t d = 0; d < D; ++d) {
    for (int64_t t = 0; t < steps.count(); ++t) {
      for (int64_t r = 0; r < steps.size[t]; ++r) {
        copy_row(data(prev) + (d * R + steps.offset[t] + r) * H,
                 before(steps, data(hs) + d * R * H, data(h0) + d * N * H, t, r, H), H);
      }
    }
  }
  return {prev};
}

// One layer's part of stack_backward, from its output rows' gradient `grad` (R, D·H), its input rows x and
// what its forward saved (`saved`: hs and its kind's): the kind's sequence backward, then the input, weight
// and bias gradients as the layer's backward makes them (autograd.py). Writes its weights' gradients into
// `grads` (the flat order) and its initial states' into `dstates` ([dh0, dc0], each (D, N, H)); returns
// the gradient of x (R, I) where `input_grad`.
Tensor layer_backward(const Stack& stack, int64_t layer, const Tensor& grad, const Tensor& x, const Tensor* saved,
                      at::TensorList state0, at::TensorList grad_finals, bool input_grad, std::vector<Tensor>& grads,
                      std::vector<Tensor>& dstates) {
  const int64_t D = stack.D;
  const std::optional<Tensor> reverse = D == 2 ? std::optional<Tensor>(stack.reverse) : std::nullopt;
  const at::IntArrayRef batch_sizes = stack.steps.size;
  const Tensor hs = saved[0], w_ih = stack.stacked(layer, 0), w_hh = stack.stacked(layer, 1);
  const Tensor h0 = stack.slice(state0[0], layer), dh_n = stack.slice(grad_finals[0], layer);
  const bool bias = stack.per == 4;
  Tensor dgi, dw_hh, db_hh;
  std::vector<Tensor> h_prev;
  if (stack.lstm) {
    h_prev = previous_states(stack.steps, h0, hs);
    auto [dgates, dh0, dc0] = lstm_sequence_backward(grad, reverse, dh_n, stack.slice(grad_finals[1], layer), saved[1],
                                                     saved[2], stack.slice(state0[1], layer), w_hh, batch_sizes);
    dgi = dgates, dstates = {dh0, dc0};
  } else if (stack.gru) {
    h_prev = previous_states(stack.steps, h0, hs);
    auto [dg, dghn, dh0] = gru_sequence_backward(grad, reverse, dh_n, saved[1], saved[2], hs, h0, w_hh, batch_sizes);
    dgi = dg, dstates = {dh0};
    // dgh = (dgi's r and z blocks, dghn): joined where it has few rows; else each part summed apart and the
    // sums joined (no sequence-sized copy: peak memory as the layer's backward).
    const Tensor rz = dgi.slice(2, 0, 2 * hs.size(2));
    if (dgi.size(1) < 128) {
      auto [dw_h, none, db_h] = sums(at::cat({rz, dghn}, 2), h_prev, {}, bias);
      dw_hh = dw_h, db_hh = db_h;
    } else {
      auto [dw_rz, none_rz, db_rz] = sums(rz, h_prev, {}, bias);
      auto [dw_n, none_n, db_n] = sums(dghn, h_prev, {}, bias);
      dw_hh = at::cat({dw_rz, dw_n}, 1), db_hh = at::cat({db_rz, db_n}, 1);
    }
  } else {
    auto [dh0, dw] = rnn_sequence_backward(grad, reverse, dh_n, hs, h0, w_hh, batch_sizes, stack.relu);
    dgi = hs, dw_hh = dw, dstates = {dh0};  // da, written over hs
  }
  Tensor dx;
  if (input_grad) {  // dx = Σ_d dgi_d W_ih,d, the second direction's rows put back in order
    const int64_t R = dgi.size(1), G = dgi.size(2), I = w_ih.size(2);
    dx = at::empty({R, I}, grad.options());
    matmul(false, false, R, I, G, data(dgi), G, data(w_ih), I, data(dx), I, false);
    if (D == 2) {
      Tensor back = at::empty({R, I}, grad.options());
      matmul(false, false, R, I, G, data(dgi) + R * G, G, data(w_ih) + G * I, I, data(back), I, false);
      dx.index_add_(0, stack.reverse, back);
    }
  }
  // The LSTM's hidden gates' gradient is dgi: dW_hh comes from the same pass.
  auto [dw_ih, dw_h, db_ih] = sums(dgi, {stack.per_direction(x)}, stack.lstm ? h_prev : std::vector<Tensor>{}, bias);
  if (stack.lstm) dw_hh = dw_h;
  if (bias && !stack.gru) db_hh = db_ih.clone();  // b_hh folded: its gradient is b_ih's, a copy
  const Tensor layer_grads[4] = {dw_ih, dw_hh, db_ih, db_hh};
  for (int64_t d = 0; d < D; ++d) {  // each parameter's gradient its own tensor
    for (int64_t i = 0; i < stack.per; ++i) {
      grads[(layer * D + d) * stack.per + i] = D == 1 ? layer_grads[i][0] : layer_grads[i][d].clone();
    }
  }
  return dx;
}

// The gradients of stack_forward(save=true): from the output rows' gradient (R, D·H) and the final states'
// [(layers·D, N, H)], with what it saved, layer by layer from the last, each layer's input gradient being
// the previous layer's output's. A layer's input is the previous one's output: for one direction, a view of
// its hs, which that layer's backward (the RNN's) writes over only after. Returns (dx (R, I), or empty
// without `input_grad`; dstate0 as state0, none where it was none; each weight's gradient, in the flat order).
std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>> stack_backward(
    const std::string& mode, const Tensor& grad_out, at::TensorList grad_finals, const Tensor& rows,
    at::TensorList state0, at::TensorList weights, at::TensorList saved, int64_t num_layers, bool bidirectional,
    at::IntArrayRef batch_sizes, bool input_grad) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Stack stack(mode, weights, state0, num_layers, bidirectional, batch_sizes, rows);
  const int64_t D = stack.D, L = num_layers, k = stack.saved_per_layer();
  TORCH_CHECK(static_cast<int64_t>(saved.size()) == L * k + (D == 2 ? L - 1 : 0),
              "recurrent_cpu: stack_backward got ", saved.size(), " saved tensors");
  std::vector<Tensor> grads(weights.size());
  std::vector<std::vector<Tensor>> dstates(stack.state0.size(), std::vector<Tensor>(L));
  Tensor grad = grad_out.contiguous();
  for (int64_t layer = L - 1; layer >= 0; --layer) {
    const Tensor x = layer == 0 ? rows : D == 1 ? saved[(layer - 1) * k][0] : saved[L * k + layer - 1];
    std::vector<Tensor> dlayer;
    grad = layer_backward(stack, layer, grad, x, saved.data() + layer * k, stack.state0, grad_finals,
                          layer > 0 || input_grad, grads, dlayer);
    for (size_t i = 0; i < dlayer.size(); ++i) dstates[i][layer] = dlayer[i];
  }
  std::vector<Tensor> dstate0;
  for (const auto& per_layer : state0.empty() ? std::vector<std::vector<Tensor>>{} : dstates) {
    dstate0.push_back(at::cat(per_layer, 0));
  }
  return {input_grad ? grad : Tensor(), dstate0, grads};
}

// A cell's step (RNNCell, GRUCell, LSTMCell: one layer, one direction, one step of N rows) as two ops with flat
// arguments: as a one-layer stack (stack_forward) a cell call cost 36 µs before any arithmetic (views of the
// stacked weights, zero states, the lists its binding converts), three times what these take. The products are
// BLAS's on the weights as they are, the row math the sequence ops'. x (N, I); h and c (N, H), zeros where not
// given; the weights and biases as the cell holds them: W_ih (G, I), W_hh (G, H), b_ih and b_hh (G).
struct Cell {
  bool relu, gru, lstm;
  int64_t N, I, H, G;
  Tensor x, h, c, w_ih, w_hh;
  std::optional<Tensor> b_ih, b_hh;
  Cell(const std::string& mode, const Tensor& x_, const std::optional<Tensor>& h_, const std::optional<Tensor>& c_,
       const Tensor& w_ih_, const Tensor& w_hh_, const std::optional<Tensor>& b_ih_,
       const std::optional<Tensor>& b_hh_)
      : relu(mode == "RNN_RELU"), gru(mode == "GRU"), lstm(mode == "LSTM"), N(x_.size(0)), I(x_.size(-1)),
        H(w_hh_.size(-1)), G(w_hh_.size(0)), x(x_.contiguous()), w_ih(w_ih_.contiguous()),
        w_hh(w_hh_.contiguous()) {
    TORCH_CHECK(relu || gru || lstm || mode == "RNN_TANH", "recurrent_cpu: no native cell for mode ", mode);
    const int64_t gates = gru ? 3 : lstm ? 4 : 1;
    TORCH_CHECK(G == gates * H, "recurrent_cpu: a ", mode, " cell's W_hh has ", gates, "·H rows, got ", w_hh_.sizes());
    check(x, {N, I}, "x"), check(w_ih, {G, I}, "w_ih"), check(w_hh, {G, H}, "w_hh");
    h = state(h_, "h"), c = lstm ? state(c_, "c") : Tensor();
    TORCH_CHECK(b_ih_.has_value() == b_hh_.has_value(), "recurrent_cpu: a cell has both biases or neither");
    if (b_ih_) b_ih = b_ih_->contiguous(), b_hh = b_hh_->contiguous(), check(*b_ih, {G}, "b_ih"), check(*b_hh, {G}, "b_hh");
  }
  Tensor state(const std::optional<Tensor>& given, const char* name) const {
    if (!given) return at::zeros({N, H}, x.options());
    Tensor s = given->contiguous();
    check(s, {N, H}, name);
    return s;
  }
  // out (N, G) = the bias rows, then + x W_ihᵀ (`input`) and + h W_hhᵀ (`hidden`); the bias b_ih, b_hh, their
  // sum (RNN and LSTM fold b_hh into b_ih, one rounding as torch's add), or none.
  Tensor sums(bool input, bool hidden, const float* b_i, const float* b_h) const {
    Tensor out = at::empty({N, G}, x.options());
    float* o = data(out);
    for (int64_t r = 0; r < N; ++r) {
      float* row = o + r * G;
      if (b_i && b_h) {
#pragma omp simd
        for (int64_t j = 0; j < G; ++j) row[j] = b_i[j] + b_h[j];
      } else if (b_i || b_h) {
        std::memcpy(row, b_i ? b_i : b_h, G * sizeof(float));
      } else {
        std::fill_n(row, G, 0.0f);
      }
    }
    if (input) matmul(false, true, N, G, I, data(x), I, data(w_ih), I, o, G, true);
    if (hidden) matmul(false, true, N, G, H, data(h), H, data(w_hh), H, o, G, true);
    return out;
  }
  const float* bias(const std::optional<Tensor>& b) const { return b ? data(*b) : nullptr; }
};

// Returns [h'] (RNN: what its backward reads, the caller keeping the output itself), [h', gates (r, z, n),
// W_hn h + b_hn] (GRU), [h', c', gates (i, f, g, o), c' again] (LSTM: a copy for the backward, the caller may
// change its c').
std::vector<Tensor> cell_forward(const std::string& mode, const Tensor& x, const std::optional<Tensor>& h,
                                 const std::optional<Tensor>& c, const Tensor& w_ih, const Tensor& w_hh,
                                 const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Cell cell(mode, x, h, c, w_ih, w_hh, b_ih, b_hh);
  const int64_t N = cell.N, H = cell.H, G = cell.G;
  Tensor out = at::empty({N, H}, cell.x.options());
  if (cell.gru) {
    Tensor gates = cell.sums(true, false, cell.bias(cell.b_ih), nullptr);
    const Tensor gh = cell.sums(false, true, nullptr, cell.bias(cell.b_hh));
    Tensor ghn = at::empty({N, H}, cell.x.options());
    for (int64_t r = 0; r < N; ++r) {
      gru_row(data(gh) + r * G, data(gates) + r * G, data(cell.h) + r * H, data(out) + r * H, H);
      copy_row(data(ghn) + r * H, data(gh) + r * G + 2 * H, H);
    }
    return {out, gates, ghn};
  }
  Tensor a = cell.sums(true, true, cell.bias(cell.b_ih), cell.bias(cell.b_hh));
  if (!cell.lstm) {
    for (int64_t r = 0; r < N; ++r) rnn_row(data(a) + r * H, H, cell.relu);
    return {a};
  }
  Tensor c_new = at::empty({N, H}, cell.x.options());
  for (int64_t r = 0; r < N; ++r) {
    lstm_row(data(a) + r * G, data(cell.c) + r * H, data(c_new) + r * H, data(out) + r * H, H);
  }
  return {out, c_new, a, c_new.clone()};
}

// A block of columns [first, first + width) of the hidden side's gate gradient, as rows `ld` floats apart.
struct Columns {
  int64_t first, width;
  const float* rows;
  int64_t ld;
};

// Σ over the N rows of `block`, into out[first, first + width).
void column_sums(int64_t N, const Columns& block, float* out) {
  float* b = out + block.first;
  std::fill_n(b, block.width, 0.0f);
  for (int64_t r = 0; r < N; ++r) {
    const float* row = block.rows + r * block.ld;
#pragma omp simd
    for (int64_t j = 0; j < block.width; ++j) b[j] += row[j];
  }
}

// cell_backward's gate gradients, written over what the forward saved: dg_i (N, G), the input side's, and the
// hidden side's as column blocks (RNN, LSTM: dg_i; GRU: dg_i's r and z blocks, and da_n r written over ghn);
// where `state_grad`, dh and dc get the parts of the states' gradients that do not go through W_hh (the GRU's
// dh' z, the LSTM's dc' f).
std::vector<Columns> cell_gate_grads(const Cell& cell, const Tensor& grad, const std::optional<Tensor>& grad_c,
                                     at::TensorList saved, bool state_grad, Tensor& dh, Tensor& dc, Tensor& dg_i) {
  const int64_t N = cell.N, H = cell.H, G = cell.G;
  const auto options = cell.x.options();
  dh = state_grad ? at::zeros({N, H}, options) : at::empty({0, H}, options);
  std::vector<float> zero(H), dgh(G);  // a zero row (no later step: dh = 0); a GRU row's dgh, read from its parts
  if (cell.lstm) {
    dc = grad_c ? grad_c->contiguous().clone() : at::zeros({N, H}, options);
    check(dc, {N, H}, "grad_c"), check(saved[0], {N, G}, "gates"), check(saved[1], {N, H}, "c'");
    for (int64_t r = 0; r < N; ++r) {
      lstm_backward_row(zero.data(), data(grad) + r * H, data(dc) + r * H, data(saved[0]) + r * G,
                        data(cell.c) + r * H, data(saved[1]) + r * H, H);
    }
    dg_i = saved[0];
    return {{0, G, data(dg_i), G}};
  }
  if (cell.gru) {
    check(saved[0], {N, G}, "gates"), check(saved[1], {N, H}, "ghn");
    for (int64_t r = 0; r < N; ++r) {
      if (!state_grad) std::fill(zero.begin(), zero.end(), 0.0f);  // dh' z, not asked for: written and dropped
      gru_backward_row(state_grad ? data(dh) + r * H : zero.data(), data(grad) + r * H, data(saved[0]) + r * G,
                       data(saved[1]) + r * H, data(cell.h) + r * H, dgh.data(), H);
    }
    dg_i = saved[0];
    return {{0, 2 * H, data(dg_i), G}, {2 * H, H, data(saved[1]), H}};
  }
  check(saved[0], {N, H}, "h'");
  dg_i = saved[0].clone();  // da over a copy of h': the caller's output, which autograd saved
  for (int64_t r = 0; r < N; ++r) rnn_backward_row(zero.data(), data(grad) + r * H, data(dg_i) + r * H, H, cell.relu);
  return {{0, G, data(dg_i), G}};
}

// The gradients of cell_forward from grad_h (N, H) and, for the LSTM, grad_c (N, H) or none, with what it
// saved (`saved`: the RNN's h', read; the GRU's gates and ghn, the LSTM's gates and c', written over). Returns
// [dx, dh, dc (LSTM), dW_ih, dW_hh, db_ih, db_hh (with biases)]; dx, dh and dc empty where not asked for.
std::vector<Tensor> cell_backward(const std::string& mode, const Tensor& grad_h, const std::optional<Tensor>& grad_c,
                                  const Tensor& x, const std::optional<Tensor>& h, const std::optional<Tensor>& c,
                                  const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                  const std::optional<Tensor>& b_hh, at::TensorList saved, bool input_grad,
                                  bool state_grad) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Cell cell(mode, x, h, c, w_ih, w_hh, b_ih, b_hh);
  const int64_t N = cell.N, I = cell.I, H = cell.H, G = cell.G;
  const auto options = cell.x.options();
  TORCH_CHECK(saved.size() == (cell.gru || cell.lstm ? 2u : 1u), "recurrent_cpu: cell_backward got ", saved.size(),
              " saved tensors");
  const Tensor grad = grad_h.contiguous();
  check(grad, {N, H}, "grad_h");
  Tensor dh, dc, dg_i;
  const std::vector<Columns> hidden = cell_gate_grads(cell, grad, grad_c, saved, state_grad, dh, dc, dg_i);
  Tensor dx = at::empty({input_grad ? N : 0, I}, options);
  if (input_grad) matmul(false, false, N, I, G, data(dg_i), G, data(cell.w_ih), I, data(dx), I, false);
  Tensor dw_ih = at::empty({G, I}, options), dw_hh = at::empty({G, H}, options);
  matmul(true, false, G, I, N, data(dg_i), G, data(cell.x), I, data(dw_ih), I, false);
  for (const Columns& block : hidden) {  // dW_hh = dghᵀ h, dh += dgh W_hh, block by block
    matmul(true, false, block.width, H, N, block.rows, block.ld, data(cell.h), H, data(dw_hh) + block.first * H, H,
           false);
    if (state_grad) {
      matmul(false, false, N, H, block.width, block.rows, block.ld, data(cell.w_hh) + block.first * H, H, data(dh),
             H, true);
    }
  }
  std::vector<Tensor> grads = {dx, dh};
  if (cell.lstm) grads.push_back(state_grad ? dc : at::empty({0, H}, options));
  grads.insert(grads.end(), {dw_ih, dw_hh});
  if (cell.b_ih) {
    Tensor db_ih = at::empty({G}, options), db_hh = at::empty({G}, options);
    column_sums(N, {0, G, data(dg_i), G}, data(db_ih));
    for (const Columns& block : hidden) column_sums(N, block, data(db_hh));
    grads.insert(grads.end(), {db_ih, db_hh});
  }
  return grads;
}
}  // namespace

TORCH_LIBRARY_IMPL(recurrent_cpu, CPU, m) {
  m.impl("lstm_sequence", &lstm_sequence);
  m.impl("lstm_sequence_backward", &lstm_sequence_backward);
  m.impl("gru_sequence", &gru_sequence);
  m.impl("gru_sequence_backward", &gru_sequence_backward);
  m.impl("rnn_sequence", &rnn_sequence);
  m.impl("rnn_sequence_backward", &rnn_sequence_backward);
  m.impl("weight_grad", &weight_grad);
  m.impl("stack_forward", &stack_forward);
  m.impl("stack_backward", &stack_backward);
  m.impl("cell_forward", &cell_forward);
  m.impl("cell_backward", &cell_backward);
}
