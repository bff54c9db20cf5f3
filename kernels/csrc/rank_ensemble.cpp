// Rank ensemble on the CPU: one pass per sample, OpenMP across samples.
//
// The definition (per-model values, usable models, tie-break hash, status) is
// kernels/rank_ensemble_reference.py's docstring; this file must give the same bits for the rank
// methods and CaEN. Hence: sums in model order, one multiply and one add per step (built with
// -ffp-contract=off so the compiler does not fuse them), and integer counts for ranks.
//
// Per sample and model the pairwise comparisons are K x K counts over a contiguous row of K floats;
// the inner loop over i has no branches, so the compiler vectorises it.
#include <torch/extension.h>

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

constexpr uint32_t kHashSample = 0x85EBCA77u, kHashCandidate = 0xC2B2AE3Du;
constexpr uint32_t kFmix1 = 0x85EBCA6Bu, kFmix2 = 0xC2B2AE35u;
enum Mode { kMin = 0, kAverage = 1, kDense = 2, kCaen = 3, kCapo = 4 };

inline uint32_t tie_priority(uint32_t seed_term, uint32_t sample, uint32_t cand) {
  uint32_t h = seed_term + sample * kHashSample + cand * kHashCandidate;
  h ^= h >> 16;
  h *= kFmix1;
  h ^= h >> 13;
  h *= kFmix2;
  return h ^ (h >> 16);
}

inline bool finite_row(const float* s, int64_t k) {
  bool ok = true;
  for (int64_t i = 0; i < k; ++i) ok &= std::isfinite(s[i]);
  return ok;
}

// v[k] for one model's row s[0..K) (see the reference's docstring).
// CaPO: v[k] = sum_i sigmoid(s_k - s_i) - 1/2, summing over all i in index order (the self term is
// exactly 1/2, so tied candidates sum identical terms and stay tied). With e_i = exp(s_i - max) the
// sigmoid is e_k / (e_k + e_i): K exponentials per row instead of K^2, and a division loop the compiler
// vectorises (N = 1e5, M = 9, K = 16 on the loaded 2-core dev box: 1.9 s with std::exp per pair,
// 0.45 s like this, as fast as the rank modes; docs/ensemble.md). Rows spanning more than 80 (e^-80 is still a normal float) take the
// direct formula. Values differ from the reference's torch.sigmoid only in the last bits.
inline void capo_values(const float* s, int64_t K, float* v, float* scratch) {
  float hi = s[0], lo = s[0];
  for (int64_t i = 1; i < K; ++i) {
    hi = s[i] > hi ? s[i] : hi;
    lo = s[i] < lo ? s[i] : lo;
  }
  float* e = scratch;
  float* terms = scratch + K;
  const bool shifted = hi - lo <= 80.f;
  if (shifted)
    for (int64_t i = 0; i < K; ++i) e[i] = std::exp(s[i] - hi);
  for (int64_t k = 0; k < K; ++k) {
    if (shifted) {
      const float ek = e[k];
      for (int64_t i = 0; i < K; ++i) terms[i] = ek / (ek + e[i]);
    } else {
      for (int64_t i = 0; i < K; ++i) terms[i] = 1.f / (1.f + std::exp(s[i] - s[k]));
    }
    float acc = 0.f;
    for (int64_t i = 0; i < K; ++i) acc += terms[i];
    v[k] = acc - 0.5f;
  }
}

inline void model_values(const float* s, int64_t K, int mode, float* v, uint8_t* first, float* scratch) {
  if (mode == kDense) {
    for (int64_t i = 0; i < K; ++i) {
      bool dup = false;
      for (int64_t j = 0; j < i; ++j) dup |= (s[j] == s[i]);
      first[i] = !dup;
    }
  }
  if (mode == kCapo) {
    capo_values(s, K, v, scratch);
    return;
  }
  for (int64_t k = 0; k < K; ++k) {
    const float x = s[k];
    int32_t gt = 0, eq = 0, lt = 0, dense = 0;
    for (int64_t i = 0; i < K; ++i) {
      gt += s[i] > x;
      eq += s[i] == x;
      lt += s[i] < x;
      if (mode == kDense) dense += (s[i] > x) & first[i];
    }
    switch (mode) {
      case kMin: v[k] = 1.f + static_cast<float>(gt); break;
      case kAverage: v[k] = static_cast<float>(gt) + static_cast<float>(eq + 1) * 0.5f; break;
      case kDense: v[k] = 1.f + static_cast<float>(dense); break;
      default: v[k] = static_cast<float>(lt); break;  // kCaen
    }
  }
}

}  // namespace

// scores [N, M, K] float32 contiguous, weights [M] float32. Returns (values, winner, loser, used, status).
std::vector<torch::Tensor> rank_ensemble_cpu(torch::Tensor scores, torch::Tensor weights, int64_t mode,
                                             int64_t seed_term, int64_t sample_offset, double capo_tol) {
  TORCH_CHECK(scores.device().is_cpu() && scores.scalar_type() == torch::kFloat32 && scores.dim() == 3,
              "rank_ensemble_cpu: scores must be a float32 [N, M, K] CPU tensor");
  TORCH_CHECK(weights.device().is_cpu() && weights.scalar_type() == torch::kFloat32, "weights must be float32 CPU");
  TORCH_CHECK(mode >= 0 && mode <= 4, "rank_ensemble_cpu: unknown mode ", mode);
  scores = scores.contiguous();
  weights = weights.contiguous();
  const int64_t N = scores.size(0), M = scores.size(1), K = scores.size(2);
  TORCH_CHECK(weights.numel() == M, "rank_ensemble_cpu: ", weights.numel(), " weights for ", M, " models");
  TORCH_CHECK(K >= 1 && K <= 1024, "rank_ensemble_cpu: K must be in 1..1024, got ", K);

  auto values = torch::empty({N, K}, scores.options());
  auto winner = torch::empty({N}, scores.options().dtype(torch::kInt32));
  auto loser = torch::empty({N}, scores.options().dtype(torch::kInt32));
  auto used = torch::empty({N}, scores.options().dtype(torch::kInt32));
  auto status = torch::empty({N}, scores.options().dtype(torch::kInt8));

  const float* s_ptr = scores.data_ptr<float>();
  const float* w_ptr = weights.data_ptr<float>();
  float* out = values.data_ptr<float>();
  int32_t* win = winner.data_ptr<int32_t>();
  int32_t* lose = loser.data_ptr<int32_t>();
  int32_t* used_ptr = used.data_ptr<int32_t>();
  int8_t* st = status.data_ptr<int8_t>();
  const bool rank_like = mode <= kDense;
  const uint32_t seed32 = static_cast<uint32_t>(seed_term);
  const float nan = std::numeric_limits<float>::quiet_NaN();

#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<float> total(K), v(K), scratch(2 * K);
    std::vector<uint8_t> first(K);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const float* sample = s_ptr + n * M * K;
      std::fill(total.begin(), total.end(), 0.f);
      float weight = 0.f;
      int32_t n_used = 0;
      for (int64_t m = 0; m < M; ++m) {
        const float w = w_ptr[m];
        const float* row = sample + m * K;
        if (!(w > 0.f) || !finite_row(row, K)) continue;
        model_values(row, K, static_cast<int>(mode), v.data(), first.data(), scratch.data());
        for (int64_t k = 0; k < K; ++k) {
          const float term = w * v[k];  // separate multiply and add: the reference's bits
          total[k] = total[k] + term;
        }
        weight = weight + w;
        ++n_used;
      }
      used_ptr[n] = n_used;
      float* row_out = out + n * K;
      if (n_used == 0) {
        for (int64_t k = 0; k < K; ++k) row_out[k] = nan;
        win[n] = lose[n] = -1;
        st[n] = 1;
        continue;
      }
      const float scale = rank_like ? weight : weight * static_cast<float>(K - 1);
      const float tol = mode == kCapo ? static_cast<float>(capo_tol) * scale : 0.f;
      float best = std::numeric_limits<float>::infinity(), worst = -best;
      for (int64_t k = 0; k < K; ++k) {
        row_out[k] = total[k] / scale;
        const float key = rank_like ? total[k] : -total[k];
        best = key < best ? key : best;
        worst = key > worst ? key : worst;
      }
      const uint32_t sample_index = static_cast<uint32_t>(sample_offset + n);
      uint64_t win_code = std::numeric_limits<uint64_t>::max(), lose_code = 0;
      bool lose_found = false;
      for (int64_t k = 0; k < K; ++k) {
        const float key = rank_like ? total[k] : -total[k];
        const uint64_t code = (static_cast<uint64_t>(tie_priority(seed32, sample_index, static_cast<uint32_t>(k))) << 10) |
                              static_cast<uint64_t>(k);
        if (key <= best + tol && code < win_code) win_code = code;
        if (key >= worst - tol && (!lose_found || code > lose_code)) {
          lose_code = code;
          lose_found = true;
        }
      }
      win[n] = static_cast<int32_t>(win_code & 1023u);
      lose[n] = static_cast<int32_t>(lose_code & 1023u);
      st[n] = (worst - best) <= tol ? 2 : 0;
    }
  }
  return {values, winner, loser, used, status};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rank_ensemble_cpu", &rank_ensemble_cpu, "rank ensemble / calibrated win rates with pair selection (CPU)");
}
