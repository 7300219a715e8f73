// Chunk masking on CPU with the counter-based draw of chunk_mask_counter (chunksft/ops/chunk_mask.py):
// bit-identical to that reference and to the Triton kernel for the same seed, since every draw is a
// pure function of (seed, row, chunk, token) and not of a generator's state.
//
//   row_key(b)   = mix32(seed_key ^ b)
//   masked(b, j) = j < n_b and mix32(row_key ^ mix32(j ^ kChunkSalt)) >> 8 < threshold
//   a row with n_b > 0 that drew nothing masks chunk mix32(row_key ^ kFallbackSalt) % n_b
// with n_b = max((seq_len_b - prompt_len_b) / C, 0) whole response chunks. Inside a masked chunk j
// (draw_token_mask_counter; lo, hi = the thresholds of t_min, t_max, all in int64 like the reference):
//   T_j          = lo + ((mix32(row_key ^ mix32(j ^ kRateSalt)) >> 8) * (hi - lo) >> 24), rate T_j / 2^24
//   token o      masked iff mix32(row_key ^ mix32((j * C + o) ^ kTokenSalt)) >> 8 < T_j
//   none masked  -> token mix32(row_key ^ mix32(j ^ kOffsetSalt)) % C
// lo = hi = 2^24 masks whole chunks.

#include <algorithm>
#include <tuple>
#include <vector>

#include "kernels.h"

namespace chunksft {
namespace {

constexpr uint32_t kChunkSalt = 0x5BD1E995u, kFallbackSalt = 0x68E31DA4u;
constexpr uint32_t kRateSalt = 0x1B873593u, kTokenSalt = 0x27D4EB2Fu, kOffsetSalt = 0x165667B1u;
constexpr int kDrawBits = 24;

inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x2C1B3C6Du;
  return x ^ (x >> 16);
}

}  // namespace

// input_ids: int64 [B, L]; prompt_lens, seq_lens: int64 [B]; key: seed_key(seed) (32 bits);
// threshold: round(p * 2^24); lo, hi: round(t_min * 2^24), round(t_max * 2^24), 0 <= lo <= hi <= 2^24.
// Returns (masked ids int64 [B, L], labels int64 [B, L] (-100 off the masked tokens), chunk_masked
// bool [B, N], chunk_index int64 [B, NM] (masked chunk ids, increasing, -1 padded), positions int64
// [B, NM * C] (token of each compact slot, 0 on padding), chunk_rate float32 [B, N] (T_j / 2^24 on
// masked chunks, 0 elsewhere)), with N = max_b n_b and NM = the largest number of masked chunks in a row.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> chunk_mask_counter(
    const at::Tensor& input_ids, const at::Tensor& prompt_lens, const at::Tensor& seq_lens, int64_t key,
    int64_t threshold, int64_t lo, int64_t hi, int64_t mask_id, int64_t chunk_size) {
  TORCH_CHECK(input_ids.dim() == 2 && input_ids.scalar_type() == at::kLong && prompt_lens.scalar_type() == at::kLong &&
                  seq_lens.scalar_type() == at::kLong,
              "chunk_mask (cpp): int64 input_ids [B, L], prompt_lens [B] and seq_lens [B] expected");
  TORCH_CHECK(chunk_size > 0, "chunk_mask (cpp): chunk_size must be positive");
  TORCH_CHECK(0 <= lo && lo <= hi && hi <= (int64_t{1} << kDrawBits),
              "chunk_mask (cpp): token rate thresholds need 0 <= lo <= hi <= 2^24");
  const int64_t B = input_ids.size(0), L = input_ids.size(1), C = chunk_size;
  const at::Tensor ids = input_ids.contiguous(), pl = prompt_lens.contiguous(), sl = seq_lens.contiguous();
  const int64_t* P = pl.data_ptr<int64_t>();
  const int64_t* SL = sl.data_ptr<int64_t>();
  std::vector<int64_t> n_chunks(B);
  int64_t N = 0;
  for (int64_t b = 0; b < B; ++b) {
    // Floor division like the reference (seq_len - prompt_len may be negative), then clamp at 0.
    const int64_t rel = SL[b] - P[b];
    n_chunks[b] = std::max<int64_t>((rel >= 0 ? rel : rel - C + 1) / C, 0);
    N = std::max(N, n_chunks[b]);
  }
  at::Tensor flags = at::zeros({B, N}, ids.options().dtype(at::kBool));
  bool* flag = flags.data_ptr<bool>();
  std::vector<int64_t> counts(B, 0);
  for (int64_t b = 0; b < B; ++b) {
    const uint32_t row_key = mix32(static_cast<uint32_t>(key) ^ static_cast<uint32_t>(b));
    for (int64_t j = 0; j < n_chunks[b]; ++j) {
      const uint32_t draw = mix32(row_key ^ mix32(static_cast<uint32_t>(j) ^ kChunkSalt)) >> 8;
      flag[b * N + j] = static_cast<int64_t>(draw) < threshold;
      counts[b] += flag[b * N + j];
    }
    if (counts[b] == 0 && n_chunks[b] > 0) {
      flag[b * N + mix32(row_key ^ kFallbackSalt) % static_cast<uint32_t>(n_chunks[b])] = true;
      counts[b] = 1;
    }
  }
  const int64_t NM = B > 0 ? *std::max_element(counts.begin(), counts.end()) : 0;
  at::Tensor out_ids = ids.clone();
  at::Tensor labels = at::full({B, L}, -100, ids.options());
  at::Tensor chunk_index = at::full({B, NM}, -1, ids.options());
  at::Tensor positions = at::zeros({B, NM * C}, ids.options());
  at::Tensor chunk_rate = at::zeros({B, N}, ids.options().dtype(at::kFloat));
  const int64_t* src = ids.data_ptr<int64_t>();
  int64_t* out = out_ids.data_ptr<int64_t>();
  int64_t* lab = labels.data_ptr<int64_t>();
  int64_t* ci = chunk_index.data_ptr<int64_t>();
  int64_t* pos = positions.data_ptr<int64_t>();
  float* rate = chunk_rate.data_ptr<float>();
  std::vector<char> hit(C);
  for (int64_t b = 0; b < B; ++b) {
    const uint32_t row_key = mix32(static_cast<uint32_t>(key) ^ static_cast<uint32_t>(b));
    int64_t slot = 0;
    for (int64_t j = 0; j < n_chunks[b]; ++j) {
      if (!flag[b * N + j]) continue;
      const uint32_t cj = static_cast<uint32_t>(j);
      const int64_t rate_draw = mix32(row_key ^ mix32(cj ^ kRateSalt)) >> (32 - kDrawBits);
      const int64_t chunk_threshold = lo + ((rate_draw * (hi - lo)) >> kDrawBits);
      rate[b * N + j] = static_cast<float>(chunk_threshold) / static_cast<float>(int64_t{1} << kDrawBits);
      bool any = false;
      for (int64_t o = 0; o < C; ++o) {
        const uint32_t token = static_cast<uint32_t>(j * C + o);
        const int64_t draw = mix32(row_key ^ mix32(token ^ kTokenSalt)) >> (32 - kDrawBits);
        hit[o] = draw < chunk_threshold;
        any = any || hit[o];
      }
      if (!any) hit[mix32(row_key ^ mix32(cj ^ kOffsetSalt)) % static_cast<uint32_t>(C)] = 1;
      ci[b * NM + slot] = j;
      for (int64_t o = 0; o < C; ++o) {
        const int64_t t = P[b] + j * C + o;  // < seq_len <= L: only whole chunks exist
        pos[b * NM * C + slot * C + o] = t;
        if (!hit[o]) continue;
        lab[b * L + t] = src[b * L + t];
        out[b * L + t] = mask_id;
      }
      ++slot;
    }
  }
  return {out_ids, labels, flags, chunk_index, positions, chunk_rate};
}

}  // namespace chunksft
