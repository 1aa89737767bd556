// One time step of each cell kind, its gate math fused into one pass over the step's rows: the
// native CPU kernels' step ops (recurrent/kernels/cpu). build.py compiles this file on the user's
// machine, for its own vector units (-march=native), and loads it into torch.ops.recurrent_cpu.
//
// Every tensor argument is float32 on the CPU with contiguous rows of width W; a step's rows are
// given per direction of travel ("Tensor[]": one (N, W) tensor per direction) or as one (D, N, W)
// tensor. The row loops are plain C++ over __restrict pointers, so that the compiler vectorizes
// them (`omp simd`: the gate blocks of one row are distinct, which the compiler cannot prove); the
// transcendental functions below are written for that too (the C library's expf is a call per element).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

// e^x in float32, branch-free: x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor polynomial of
// degree 7 (truncation below 1e-8 relative), 2^n written into the exponent bits. x is clamped to
// [-87, 88], where 2^n stays a normal float; a NaN passes both comparisons and stays NaN.
// Always inlined: a call left in a row loop keeps the compiler from vectorizing it.
[[gnu::always_inline]] inline float exp_(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
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

// A step's rows of one operand: row r of D·N is direction r / N, batch row r % N.
struct Rows {
  std::vector<float*> base;
  int64_t rows = 0, stride = 0;
  float* operator[](int64_t r) const { return base[r / rows] + (r % rows) * stride; }
};

Rows rows_of(at::TensorList parts, int64_t width, const char* name) {
  Rows view;
  for (const at::Tensor& t : parts) {
    TORCH_CHECK(t.dim() == 2 && t.scalar_type() == at::kFloat && t.device().is_cpu() && t.stride(1) == 1 &&
                    t.size(1) == width,
                "recurrent_cpu: ", name, " must be float32 CPU rows of width ", width, " with contiguous rows, got ",
                t.sizes(), " ", t.scalar_type(), " strides ", t.strides());
    TORCH_CHECK(view.base.empty() || (t.size(0) == view.rows && t.stride(0) == view.stride), "recurrent_cpu: ",
                name, "'s directions differ in shape or layout");
    view.base.push_back(t.data_ptr<float>());
    view.rows = t.size(0);
    view.stride = t.stride(0);
  }
  return view;
}

Rows rows_of(const at::Tensor& t, int64_t width, const char* name) {
  TORCH_CHECK(t.dim() == 3, "recurrent_cpu: ", name, " must be (D, N, W), got ", t.sizes());
  return rows_of(t.unbind(0), width, name);
}

// Runs row(r) for every row r of a step, split between torch's threads in chunks of >= 4096 floats.
template <typename Row>
void for_rows(const Rows& shape, int64_t width, const Row& row) {
  const int64_t total = static_cast<int64_t>(shape.base.size()) * shape.rows;
  at::parallel_for(0, total, std::max<int64_t>(1, 4096 / std::max<int64_t>(width, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) row(r);
  });
}

// The forward ops overwrite gi, the step's input projections, with what the backward keeps (the
// gates, or the outputs): a buffer the size of the sequence less to allocate. Each element of gi is
// read before it is written, so gi is not __restrict.
//
// LSTM, gate order (i, f, g, o): gates = (σ(a_i), σ(a_f), tanh(a_g), σ(a_o)) for a = gh + gi,
// c' = f c + i g, h' = o tanh(c'); the gates go into gi.
void lstm_row(const float* __restrict gh, float* gi, const float* __restrict c, float* __restrict h,
              float* __restrict c_new, int64_t H) {
  #pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float i = sigmoid_(gh[j] + gi[j]);
    const float f = sigmoid_(gh[H + j] + gi[H + j]);
    const float g = tanh_(gh[2 * H + j] + gi[2 * H + j]);
    const float o = sigmoid_(gh[3 * H + j] + gi[3 * H + j]);
    const float cell = f * c[j] + i * g;
    gi[j] = i;
    gi[H + j] = f;
    gi[2 * H + j] = g;
    gi[3 * H + j] = o;
    c_new[j] = cell;
    h[j] = o * tanh_(cell);
  }
}

void lstm_cell(at::TensorList gh, const at::Tensor& gi, const at::Tensor& c, const at::Tensor& h,
               const at::Tensor& c_new) {
  const int64_t H = c.size(-1);
  const Rows gh_ = rows_of(gh, 4 * H, "gh"), gi_ = rows_of(gi, 4 * H, "gi"), c_ = rows_of(c, H, "c");
  const Rows h_ = rows_of(h, H, "h"), c_new_ = rows_of(c_new, H, "c_new");
  for_rows(gh_, 4 * H, [&](int64_t r) { lstm_row(gh_[r], gi_[r], c_[r], h_[r], c_new_[r], H); });
}

// The LSTM step's gradients from dh' = dh + grad_h and dc', with the saved gates and c, c' (t = tanh(c')):
// dc = dc' + dh' o (1 − t²); da = (dc g i(1 − i), dc c f(1 − f), dc i (1 − g²), dh' t o(1 − o)); dc_prev = dc f.
void lstm_backward_row(const float* __restrict dh, const float* __restrict grad_h, const float* __restrict dc_in,
                       const float* __restrict gates, const float* __restrict c_prev, const float* __restrict c,
                       float* __restrict dgates, float* __restrict dc_prev, int64_t H) {
  #pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float i = gates[j], f = gates[H + j], g = gates[2 * H + j], o = gates[3 * H + j];
    const float d_h = dh[j] + grad_h[j];
    const float t = tanh_(c[j]);
    const float dc = dc_in[j] + d_h * o * (1.0f - t * t);
    dgates[j] = dc * g * i * (1.0f - i);
    dgates[H + j] = dc * c_prev[j] * f * (1.0f - f);
    dgates[2 * H + j] = dc * i * (1.0f - g * g);
    dgates[3 * H + j] = d_h * t * o * (1.0f - o);
    dc_prev[j] = dc * f;
  }
}

at::Tensor lstm_cell_backward(at::TensorList dh, const at::Tensor& grad_h, const at::Tensor& dc, const at::Tensor& gates,
                              const at::Tensor& c_prev, const at::Tensor& c, const at::Tensor& dgates) {
  const int64_t H = c.size(-1);
  at::Tensor dc_prev = at::empty(c.sizes(), c.options());
  const Rows dh_ = rows_of(dh, H, "dh"), grad_h_ = rows_of(grad_h, H, "grad_h"), dc_ = rows_of(dc, H, "dc");
  const Rows gates_ = rows_of(gates, 4 * H, "gates"), c_prev_ = rows_of(c_prev, H, "c_prev"), c_ = rows_of(c, H, "c");
  const Rows dgates_ = rows_of(dgates, 4 * H, "dgates"), dc_prev_ = rows_of(dc_prev, H, "dc_prev");
  for_rows(dh_, 4 * H, [&](int64_t r) {
    lstm_backward_row(dh_[r], grad_h_[r], dc_[r], gates_[r], c_prev_[r], c_[r], dgates_[r], dc_prev_[r], H);
  });
  return dc_prev;
}

// GRU, gate order (r, z, n), gh = W_hh h + b_hh: r = σ(gi_r + gh_r), z = σ(gi_z + gh_z),
// n = tanh(gi_n + r gh_n), h' = n + z (h − n); (r, z, n) go into gi, gh_n into ghn for the backward.
void gru_row(const float* __restrict gh, float* gi, const float* __restrict h, float* __restrict ghn,
             float* __restrict h_new, int64_t H) {
  #pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float r = sigmoid_(gh[j] + gi[j]);
    const float z = sigmoid_(gh[H + j] + gi[H + j]);
    const float n = tanh_(gi[2 * H + j] + r * gh[2 * H + j]);
    gi[j] = r;
    gi[H + j] = z;
    gi[2 * H + j] = n;
    ghn[j] = gh[2 * H + j];
    h_new[j] = n + z * (h[j] - n);
  }
}

void gru_cell(at::TensorList gh, const at::Tensor& gi, const at::Tensor& h, const at::Tensor& ghn,
              const at::Tensor& h_new) {
  const int64_t H = h.size(-1);
  const Rows gh_ = rows_of(gh, 3 * H, "gh"), gi_ = rows_of(gi, 3 * H, "gi"), h_ = rows_of(h, H, "h");
  const Rows ghn_ = rows_of(ghn, H, "ghn"), h_new_ = rows_of(h_new, H, "h_new");
  for_rows(gh_, 3 * H, [&](int64_t r) { gru_row(gh_[r], gi_[r], h_[r], ghn_[r], h_new_[r], H); });
}

// The GRU step's gradients from dh' = dh + grad_h: da_n = dh' (1 − z)(1 − n²), da_z = dh' (h − n) z(1 − z),
// da_r = da_n gh_n r(1 − r); dgi = (da_r, da_z, da_n), dgh = (da_r, da_z, da_n r); returns dh' z,
// the part of dh_prev that does not go through W_hh.
void gru_backward_row(const float* __restrict dh, const float* __restrict grad_h, const float* __restrict gates,
                      const float* __restrict ghn_, const float* __restrict h_prev, float* __restrict dgi,
                      float* __restrict dgh, float* __restrict direct, int64_t H) {
  #pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float r = gates[j], z = gates[H + j], n = gates[2 * H + j], ghn = ghn_[j];
    const float d_h = dh[j] + grad_h[j];
    const float da_n = d_h * (1.0f - z) * (1.0f - n * n);
    const float da_z = d_h * (h_prev[j] - n) * z * (1.0f - z);
    const float da_r = da_n * ghn * r * (1.0f - r);
    dgi[j] = da_r;
    dgi[H + j] = da_z;
    dgi[2 * H + j] = da_n;
    dgh[j] = da_r;
    dgh[H + j] = da_z;
    dgh[2 * H + j] = da_n * r;
    direct[j] = d_h * z;
  }
}

at::Tensor gru_cell_backward(at::TensorList dh, const at::Tensor& grad_h, const at::Tensor& gates,
                             const at::Tensor& ghn, const at::Tensor& h_prev, const at::Tensor& dgi,
                             const at::Tensor& dgh) {
  const int64_t H = h_prev.size(-1);
  at::Tensor direct = at::empty(h_prev.sizes(), h_prev.options());
  const Rows dh_ = rows_of(dh, H, "dh"), grad_h_ = rows_of(grad_h, H, "grad_h"), gates_ = rows_of(gates, 3 * H, "gates");
  const Rows ghn_ = rows_of(ghn, H, "ghn"), h_prev_ = rows_of(h_prev, H, "h_prev"), dgi_ = rows_of(dgi, 3 * H, "dgi");
  const Rows dgh_ = rows_of(dgh, 3 * H, "dgh"), direct_ = rows_of(direct, H, "direct");
  for_rows(dh_, 3 * H, [&](int64_t r) {
    gru_backward_row(dh_[r], grad_h_[r], gates_[r], ghn_[r], h_prev_[r], dgi_[r], dgh_[r], direct_[r], H);
  });
  return direct;
}

// Elman: h' = tanh(gh + gi), or relu(gh + gi), into gi.
void rnn_row(const float* __restrict gh, float* gi, int64_t H, bool relu) {
  if (relu) {
    #pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const float a = gh[j] + gi[j];
      gi[j] = a > 0.0f ? a : (a == a ? 0.0f : a);  // relu, NaN kept as torch.relu keeps it
    }
  } else {
    #pragma omp simd
    for (int64_t j = 0; j < H; ++j) gi[j] = tanh_(gh[j] + gi[j]);
  }
}

void rnn_cell(at::TensorList gh, const at::Tensor& gi, bool relu) {
  const int64_t H = gi.size(-1);
  const Rows gh_ = rows_of(gh, H, "gh"), gi_ = rows_of(gi, H, "gi");
  for_rows(gh_, H, [&](int64_t r) { rnn_row(gh_[r], gi_[r], H, relu); });
}

// da = (dh + grad_h) act'(a), from the output h': 1 − h'² for tanh, [h' > 0] for relu (torch's
// threshold_backward: the gradient passes unless h' <= 0). da may be grad_h itself (each element is
// read before it is written), so those two are not __restrict.
void rnn_backward_row(const float* __restrict dh, const float* grad_h, const float* __restrict h, float* da, int64_t H,
                      bool relu) {
  if (relu) {
    #pragma omp simd
    for (int64_t j = 0; j < H; ++j) da[j] = h[j] <= 0.0f ? 0.0f : dh[j] + grad_h[j];
  } else {
    #pragma omp simd
    for (int64_t j = 0; j < H; ++j) da[j] = (dh[j] + grad_h[j]) * (1.0f - h[j] * h[j]);
  }
}

void rnn_cell_backward(at::TensorList dh, const at::Tensor& grad_h, const at::Tensor& h, const at::Tensor& da,
                       bool relu) {
  const int64_t H = h.size(-1);
  const Rows dh_ = rows_of(dh, H, "dh"), grad_h_ = rows_of(grad_h, H, "grad_h"), h_ = rows_of(h, H, "h");
  const Rows da_ = rows_of(da, H, "da");
  for_rows(dh_, H, [&](int64_t r) { rnn_backward_row(dh_[r], grad_h_[r], h_[r], da_[r], H, relu); });
}

}  // namespace

TORCH_LIBRARY_IMPL(recurrent_cpu, CPU, m) {
  m.impl("lstm_cell", &lstm_cell);
  m.impl("lstm_cell_backward", &lstm_cell_backward);
  m.impl("gru_cell", &gru_cell);
  m.impl("gru_cell_backward", &gru_cell_backward);
  m.impl("rnn_cell", &rnn_cell);
  m.impl("rnn_cell_backward", &rnn_cell_backward);
}
