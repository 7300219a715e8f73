// Chunk attention on CPU, fp32: forward and backward of the layouts of chunksft/ops/masks.py
// ("bidirectional", "block_causal", "bd3") and of the "compact" layout of chunksft/ops/chunk_attention.py.
//
// Visibility per query row is two key intervals: keys of its own x_t chunk [own_lo, own_hi) and a
// prefix [T, clean_hi) of the clean stream x_0 (T = where x_0 starts; 0 for single-stream layouts).
// That is masks.visible rewritten per row and cut at seq_lens (Meta::row). A work item owns a block
// of kBQ query rows of one stream; the union of its rows' intervals is again one x_t interval plus
// one x_0 prefix (consecutive rows have consecutive chunks), walked in pieces of at most kKP keys:
// one GEMM for the scores of the piece, a row pass that touches only each row's visible columns
// (online softmax in the forward, P and dS in the backward), GEMMs for the products with V / dO / Q / K.
// Keys that no row of the block sees are never loaded, so the work is the visible pairs plus the
// ragged edges of the blocks.

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "kernels.h"

namespace chunksft {
namespace {

constexpr int64_t kBQ = 64;   // query rows per work item
constexpr int64_t kKP = 512;  // keys per piece: the [kBQ, kKP] fp32 score tile (128 KB) stays in L2
constexpr float kInf = std::numeric_limits<float>::infinity();

// The kernel codes of chunksft/ops/masks.py LAYOUT_CODES (the one Python table).
enum Layout : int64_t { kBidirectional = 0, kBlockCausal = 1, kBd3 = 2, kCompact = 3 };

struct RowKeys {
  int64_t own_lo, own_hi;  // x_t keys of the query's own chunk; empty unless it is an x_t chunk query
  int64_t clean_hi;        // x_0 keys [T, clean_hi)
};

// Layout metadata of one call. Positions are global: x_t (or the compact slots) in [0, T), x_0 in [T, S).
struct Meta {
  int64_t layout, S, L, T, C, n_slots;
  const int64_t* prompt_lens;  // [B]
  const int64_t* seq_lens;     // [B], valid tokens per stream, in [0, L]
  const int64_t* chunk_index;  // [B, n_slots]: compact only, increasing chunk ids, -1 = padding slot

  RowKeys row(int64_t b, int64_t pos) const {
    const int64_t P = prompt_lens[b], SL = seq_lens[b];
    if (layout == kBidirectional) return {0, 0, SL};
    const bool clean = pos >= T;
    int64_t block;
    if (!clean && layout == kCompact) {
      block = chunk_index[b * n_slots + pos / C];
      if (block < 0) return {0, 0, T};  // padding slot: sees nothing, outputs 0
    } else {
      const int64_t local = clean ? pos - T : pos;
      block = local < P ? -1 : (local - P) / C;
    }
    // x_0 query of block b: x_0 blocks <= b; x_t query of chunk i: x_0 blocks < i (the prompt if i = -1).
    const int64_t clean_end = std::min(clean ? P + (block + 1) * C : P + std::max<int64_t>(block, 0) * C, SL);
    RowKeys keys{0, 0, T + clean_end};
    if (!clean && block >= 0) {
      const int64_t start = P + block * C;
      const int64_t len = std::min(std::max<int64_t>(SL - start, 0), C);
      keys.own_lo = layout == kCompact ? (pos / C) * C : start;
      keys.own_hi = keys.own_lo + len;
    }
    return keys;
  }

  // Query blocks of kBQ rows that never straddle the x_t / x_0 boundary (their key spans stay tight).
  std::vector<std::pair<int64_t, int64_t>> query_blocks() const {
    std::vector<std::pair<int64_t, int64_t>> blocks;
    for (const auto& [lo, hi] : {std::pair<int64_t, int64_t>{0, T}, {T, S}})
      for (int64_t q0 = lo; q0 < hi; q0 += kBQ) blocks.emplace_back(q0, std::min(q0 + kBQ, hi));
    return blocks;
  }
};

struct Span {
  int64_t lo, hi;
  bool own;  // true: the x_t own-chunk span, false: the x_0 prefix
};

// The key spans a query block visits: union of its rows' own chunks, then the longest x_0 prefix.
int block_spans(const std::vector<RowKeys>& keys, int64_t T, Span spans[2]) {
  int64_t own_lo = std::numeric_limits<int64_t>::max(), own_hi = 0, clean_hi = T;
  for (const RowKeys& r : keys) {
    if (r.own_hi > r.own_lo) {
      own_lo = std::min(own_lo, r.own_lo);
      own_hi = std::max(own_hi, r.own_hi);
    }
    clean_hi = std::max(clean_hi, r.clean_hi);
  }
  int n = 0;
  if (own_hi > own_lo) spans[n++] = {own_lo, own_hi, true};
  if (clean_hi > T) spans[n++] = {T, clean_hi, false};
  return n;
}

// Visible columns [a, e) of one row inside the piece [k0, k1) of a span, relative to k0.
inline std::pair<int64_t, int64_t> row_range(const RowKeys& r, const Span& span, int64_t k0, int64_t k1, int64_t T) {
  const int64_t lo = span.own ? r.own_lo : T, hi = span.own ? r.own_hi : r.clean_hi;
  const int64_t a = std::max(lo, k0), e = std::min(hi, k1);
  return a < e ? std::pair<int64_t, int64_t>{a - k0, e - k0} : std::pair<int64_t, int64_t>{0, 0};
}

// Forward row pass: scores s[0, n) -> exp(s - m_new) on [a, e), 0 elsewhere (a < e). Updates the
// running max *m, returns the sum of the new probabilities and in *alpha = exp(m_old - m_new) the
// factor that rescales the row's earlier accumulator and sum.
CHUNKSFT_SIMD_CLONES
float softmax_piece_row(float* s, int64_t n, int64_t a, int64_t e, float* m, float* alpha) {
  float mx = -kInf;
#pragma omp simd reduction(max : mx)
  for (int64_t j = a; j < e; ++j) mx = s[j] > mx ? s[j] : mx;
  const float m_new = std::max(*m, mx);
  *alpha = exp_approx(*m - m_new);  // *m = -inf before the first piece: alpha = 0
  *m = m_new;
  std::fill(s, s + a, 0.0f);
  std::fill(s + e, s + n, 0.0f);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = a; j < e; ++j) {
    const float p = exp_approx(s[j] - m_new);
    s[j] = p;
    sum += p;
  }
  return sum;
}

// Backward row pass: s = scores -> P = exp(s - lse), dp = dO V^T -> dS = P (dp - delta) on [a, e);
// both 0 elsewhere.
CHUNKSFT_SIMD_CLONES
void softmax_grad_row(float* s, float* dp, int64_t n, int64_t a, int64_t e, float lse, float delta) {
  std::fill(s, s + a, 0.0f);
  std::fill(s + e, s + n, 0.0f);
  std::fill(dp, dp + a, 0.0f);
  std::fill(dp + e, dp + n, 0.0f);
#pragma omp simd
  for (int64_t j = a; j < e; ++j) {
    const float p = exp_approx(s[j] - lse);
    s[j] = p;
    dp[j] = p * (dp[j] - delta);
  }
}

// Strided view of one (batch, head) slice of a [B, H, S, D] tensor with unit stride in D.
struct Head {
  const float* ptr;
  int64_t ld;  // row stride
};

inline Head head_of(const at::Tensor& x, int64_t b, int64_t h) {
  return {x.data_ptr<float>() + b * x.stride(0) + h * x.stride(1), x.stride(2)};
}

// One forward work item: rows [q0, q1) of one (batch, head). out rows and lse written in full.
void forward_block(const Meta& meta, int64_t b, int64_t q0, int64_t q1, Head q, Head k, Head v, int64_t D,
                   float scale, float* out, float* lse) {
  const int64_t rows = q1 - q0;
  thread_local std::vector<float> scores, acc, row_max, row_sum;
  thread_local std::vector<RowKeys> keys;
  scores.resize(kBQ * kKP);
  acc.assign(rows * D, 0.0f);
  row_max.assign(rows, -kInf);
  row_sum.assign(rows, 0.0f);
  keys.resize(rows);
  for (int64_t i = 0; i < rows; ++i) keys[i] = meta.row(b, q0 + i);
  Span spans[2];
  const int n_spans = block_spans(keys, meta.T, spans);
  for (int si = 0; si < n_spans; ++si) {
    for (int64_t k0 = spans[si].lo; k0 < spans[si].hi; k0 += kKP) {
      const int64_t k1 = std::min(k0 + kKP, spans[si].hi), n = k1 - k0;
      gemm(false, true, rows, n, D, scale, q.ptr + q0 * q.ld, q.ld, k.ptr + k0 * k.ld, k.ld, 0.0f, scores.data(), n);
      for (int64_t i = 0; i < rows; ++i) {
        float* s = scores.data() + i * n;
        const auto [a, e] = row_range(keys[i], spans[si], k0, k1, meta.T);
        if (a == e) {
          std::fill(s, s + n, 0.0f);
          continue;
        }
        float alpha;
        const float sum = softmax_piece_row(s, n, a, e, &row_max[i], &alpha);
        if (alpha != 1.0f)
          for (int64_t d = 0; d < D; ++d) acc[i * D + d] *= alpha;
        row_sum[i] = row_sum[i] * alpha + sum;
      }
      gemm(false, false, rows, D, n, 1.0f, scores.data(), n, v.ptr + k0 * v.ld, v.ld, 1.0f, acc.data(), D);
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    float* o = out + (q0 + i) * D;
    if (row_sum[i] > 0.0f) {
      const float inv = 1.0f / row_sum[i];
      for (int64_t d = 0; d < D; ++d) o[d] = acc[i * D + d] * inv;
      lse[q0 + i] = row_max[i] + std::log(row_sum[i]);
    } else {  // no visible key (padding slot, empty row): output 0, like the eager reference
      std::fill(o, o + D, 0.0f);
      lse[q0 + i] = kInf;  // makes P = exp(s - lse) = 0 in the backward
    }
  }
}

// One backward query block: recomputes P from lse, writes dQ rows [q0, q1) and accumulates dK / dV
// ([S, D] fp32, private to the calling work item).
void backward_block(const Meta& meta, int64_t b, int64_t q0, int64_t q1, Head q, Head k, Head v, Head dout,
                    const float* lse, const float* delta, int64_t D, float scale, float* dq, float* dk, float* dv) {
  const int64_t rows = q1 - q0;
  thread_local std::vector<float> probs, dscores, dq_acc;
  thread_local std::vector<RowKeys> keys;
  probs.resize(kBQ * kKP);
  dscores.resize(kBQ * kKP);
  dq_acc.assign(rows * D, 0.0f);
  keys.resize(rows);
  for (int64_t i = 0; i < rows; ++i) keys[i] = meta.row(b, q0 + i);
  Span spans[2];
  const int n_spans = block_spans(keys, meta.T, spans);
  const float* q_rows = q.ptr + q0 * q.ld;
  const float* do_rows = dout.ptr + q0 * dout.ld;
  for (int si = 0; si < n_spans; ++si) {
    for (int64_t k0 = spans[si].lo; k0 < spans[si].hi; k0 += kKP) {
      const int64_t k1 = std::min(k0 + kKP, spans[si].hi), n = k1 - k0;
      const float* k_rows = k.ptr + k0 * k.ld;
      gemm(false, true, rows, n, D, scale, q_rows, q.ld, k_rows, k.ld, 0.0f, probs.data(), n);
      gemm(false, true, rows, n, D, 1.0f, do_rows, dout.ld, v.ptr + k0 * v.ld, v.ld, 0.0f, dscores.data(), n);
      for (int64_t i = 0; i < rows; ++i) {
        const auto [a, e] = row_range(keys[i], spans[si], k0, k1, meta.T);
        softmax_grad_row(probs.data() + i * n, dscores.data() + i * n, n, a, e, lse[q0 + i], delta[q0 + i]);
      }
      // dV += P^T dO, dK += scale dS^T Q, dQ += scale dS K (the scale of S = scale Q K^T).
      gemm(true, false, n, D, rows, 1.0f, probs.data(), n, do_rows, dout.ld, 1.0f, dv + k0 * D, D);
      gemm(true, false, n, D, rows, scale, dscores.data(), n, q_rows, q.ld, 1.0f, dk + k0 * D, D);
      gemm(false, false, rows, D, n, scale, dscores.data(), n, k_rows, k.ld, 1.0f, dq_acc.data(), D);
    }
  }
  std::copy(dq_acc.begin(), dq_acc.end(), dq + q0 * D);
}

Meta make_meta(const at::Tensor& q, const at::Tensor& prompt_lens, const at::Tensor& seq_lens,
               const at::Tensor& chunk_index, int64_t layout, int64_t seq_len, int64_t noisy_len, int64_t chunk_size) {
  TORCH_CHECK(layout >= kBidirectional && layout <= kCompact, "chunk_attention: unknown layout code ", layout);
  TORCH_CHECK(prompt_lens.scalar_type() == at::kLong && seq_lens.scalar_type() == at::kLong &&
                  chunk_index.scalar_type() == at::kLong && prompt_lens.is_contiguous() && seq_lens.is_contiguous() &&
                  chunk_index.is_contiguous(),
              "chunk_attention: prompt_lens, seq_lens and chunk_index must be contiguous int64");
  TORCH_CHECK(chunk_size > 0, "chunk_attention: chunk_size must be positive");
  return Meta{layout, q.size(2), seq_len, noisy_len, chunk_size, chunk_index.dim() == 2 ? chunk_index.size(1) : 0,
              prompt_lens.data_ptr<int64_t>(), seq_lens.data_ptr<int64_t>(), chunk_index.data_ptr<int64_t>()};
}

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  for (const at::Tensor* x : {&q, &k, &v}) {
    TORCH_CHECK(x->device().is_cpu() && x->scalar_type() == at::kFloat && x->dim() == 4 && x->stride(3) == 1,
                "chunk_attention (cpp): q, k, v must be fp32 CPU tensors [B, H, S, D] with unit stride in D");
  }
  TORCH_CHECK(k.sizes() == v.sizes() && q.size(0) == k.size(0) && q.size(2) == k.size(2) && q.size(3) == k.size(3) &&
                  q.size(1) % k.size(1) == 0,
              "chunk_attention (cpp): shape mismatch: q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes());
}

}  // namespace

// q: [B, H, S, D], k / v: [B, Hkv, S, D] fp32 (unit stride in D). Returns (out fp32 [B, H, S, D],
// lse fp32 [B, H, S]: natural-log logsumexp of the scaled scores, +inf on rows with no visible key).
std::tuple<at::Tensor, at::Tensor> chunk_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v, const at::Tensor& prompt_lens,
                                                           const at::Tensor& seq_lens, const at::Tensor& chunk_index,
                                                           int64_t layout, int64_t seq_len, int64_t noisy_len,
                                                           int64_t chunk_size, double scale) {
  check_qkv(q, k, v);
  const Meta meta = make_meta(q, prompt_lens, seq_lens, chunk_index, layout, seq_len, noisy_len, chunk_size);
  const int64_t B = q.size(0), H = q.size(1), S = q.size(2), D = q.size(3), group = H / k.size(1);
  auto out = at::empty({B, H, S, D}, q.options());
  auto lse = at::empty({B, H, S}, q.options());
  const auto blocks = meta.query_blocks();
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  // Late blocks see the most keys: hand them out first so the tail of the schedule is short.
  parallel_dynamic(B * H * n_blocks, [&](int64_t item) {
    const int64_t blk = n_blocks - 1 - item / (B * H), bh = item % (B * H), b = bh / H, h = bh % H;
    forward_block(meta, b, blocks[blk].first, blocks[blk].second, head_of(q, b, h), head_of(k, b, h / group),
                  head_of(v, b, h / group), D, static_cast<float>(scale), out.data_ptr<float>() + bh * S * D,
                  lse.data_ptr<float>() + bh * S);
  });
  return {out, lse};
}

// Gradients of chunk_attention_forward. dout, out: [B, H, S, D] fp32; lse: [B, H, S].
// Returns (dq [B, H, S, D], dk, dv [B, Hkv, S, D]) fp32.
std::tuple<at::Tensor, at::Tensor, at::Tensor> chunk_attention_backward(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& prompt_lens, const at::Tensor& seq_lens, const at::Tensor& chunk_index,
    int64_t layout, int64_t seq_len, int64_t noisy_len, int64_t chunk_size, double scale) {
  check_qkv(q, k, v);
  TORCH_CHECK(dout.sizes() == q.sizes() && dout.scalar_type() == at::kFloat && dout.stride(3) == 1,
              "chunk_attention (cpp): grad_output must be fp32 like q with unit stride in D");
  const Meta meta = make_meta(q, prompt_lens, seq_lens, chunk_index, layout, seq_len, noisy_len, chunk_size);
  const int64_t B = q.size(0), H = q.size(1), S = q.size(2), D = q.size(3), Hkv = k.size(1), group = H / Hkv;
  // delta_i = sum_d dO_id O_id: the row term of the softmax gradient, once per row.
  const auto delta = (dout * out).sum(-1).contiguous();
  const auto lse_c = lse.contiguous();
  auto dq = at::empty({B, H, S, D}, q.options());
  const auto blocks = meta.query_blocks();
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  // dK / dV of a kv head collect contributions from every query block of its group. A work item
  // owns (batch, kv head, split): the query blocks with index % n_split == split, accumulating into
  // its own [S, D] buffers; splits exist only to give every thread work when B * Hkv is small.
  const int64_t threads = at::get_num_threads();
  const int64_t n_split = std::max<int64_t>(1, std::min(n_blocks, (2 * threads + B * Hkv - 1) / (B * Hkv)));
  auto dk_part = at::zeros({n_split, B, Hkv, S, D}, q.options());
  auto dv_part = at::zeros({n_split, B, Hkv, S, D}, q.options());
  parallel_dynamic(B * Hkv * n_split, [&](int64_t item) {
    const int64_t split = item % n_split, bk = item / n_split, b = bk / Hkv, hk = bk % Hkv;
    float* dk = dk_part.data_ptr<float>() + (split * B * Hkv + bk) * S * D;
    float* dv = dv_part.data_ptr<float>() + (split * B * Hkv + bk) * S * D;
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
      const int64_t bh = b * H + h;
      for (int64_t blk = split; blk < n_blocks; blk += n_split) {
        backward_block(meta, b, blocks[blk].first, blocks[blk].second, head_of(q, b, h), head_of(k, b, hk),
                       head_of(v, b, hk), head_of(dout, b, h), lse_c.data_ptr<float>() + bh * S,
                       delta.data_ptr<float>() + bh * S, D, static_cast<float>(scale),
                       dq.data_ptr<float>() + bh * S * D, dk, dv);
      }
    }
  });
  if (n_split == 1) return {dq, dk_part[0], dv_part[0]};
  return {dq, dk_part.sum(0), dv_part.sum(0)};
}

}  // namespace chunksft
