// Rank ensemble on the CPU: one pass per sample, OpenMP across samples.
//
// The definition (per-model values, usable models, tie-break hash, status) is
// kernels/rank_ensemble_reference.py's docstring; this file must give the same bits for the rank
// methods and CaEN. Hence: sums in model order, one multiply and one add per step (built with
// -ffp-contract=off so the compiler does not fuse them), and integer counts for ranks.
//
// Per sample and model the pairwise comparisons are K x K counts over a contiguous row of K floats,
// vectorised over the K candidates (see model_values); one instantiation per mode keeps the mode's
// branches out of the loops.
#include <torch/extension.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

// e[i] = exp(s[i] - hi) for s[i] - hi in [-80, 0], in vector lanes (std::exp is a scalar call:
// 16 x M of them per sample were most of CaPO's time). Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2,
// a degree-7 polynomial for e^r, 2^n from the exponent bits (n >= -116: always a normal float).
// Relative error ~2e-7 (1-2 ulp), far inside the 1e-6 the values are tested to.
inline __attribute__((always_inline)) void exp_nonpositive(const float* __restrict s, float hi, int64_t K,
                                                           float* __restrict e, int32_t* __restrict bits) {
  constexpr float kLog2e = 1.44269504088896341f, kRound = 12582912.f;  // 1.5 * 2^23: round to nearest
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  for (int64_t i = 0; i < K; ++i) {
    const float x = s[i] - hi;
    const float n = (x * kLog2e + kRound) - kRound;
    float r = x - n * kLn2Hi;
    r = r - n * kLn2Lo;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    e[i] = (p * (r * r) + r) + 1.f;
    bits[i] = (static_cast<int32_t>(n) + 127) << 23;
  }
  for (int64_t i = 0; i < K; ++i) {
    float scale;
    std::memcpy(&scale, bits + i, sizeof scale);
    e[i] = e[i] * scale;
  }
}

// v[k] for one model's row s[0..K) (see the reference's docstring).
// CaPO: v[k] = sum_i sigmoid(s_k - s_i) - 1/2, summing over all i in index order (the self term is
// exactly 1/2, so tied candidates sum identical terms and stay tied). With e_i = exp(s_i - max) the
// sigmoid is e_k / (e_k + e_i): K exponentials per row instead of K^2, and a division loop the compiler
// vectorises (N = 1e5, M = 9, K = 16 on the loaded 2-core dev box: 1.9 s with std::exp per pair,
// 0.45 s like this, as fast as the rank modes; docs/ensemble.md). Rows spanning more than 80 (e^-80 is still a normal float) take the
// direct formula. Values differ from the reference's torch.sigmoid only in the last bits.
inline __attribute__((always_inline)) void capo_values(const float* __restrict s, int64_t K, float* __restrict v,
                                                       float* __restrict e, int32_t* __restrict bits) {
  float hi = s[0], lo = s[0];
  for (int64_t i = 1; i < K; ++i) {
    hi = s[i] > hi ? s[i] : hi;
    lo = s[i] < lo ? s[i] : lo;
  }
  for (int64_t k = 0; k < K; ++k) v[k] = 0.f;
  // i outer, k inner: every v[k] still sums its terms in index order i = 0..K-1 (the same bits as
  // one sequential sum per k), but the K sums advance together in vector lanes instead of one
  // dependent add chain per k (N = 1e5, M = 9, K = 16: 0.135 s -> see docs/benchmarks.md).
  if (hi - lo <= 80.f) {
    exp_nonpositive(s, hi, K, e, bits);
    for (int64_t i = 0; i < K; ++i) {
      const float ei = e[i];
      for (int64_t k = 0; k < K; ++k) v[k] += e[k] / (e[k] + ei);
    }
  } else {
    for (int64_t i = 0; i < K; ++i) {
      const float si = s[i];
      for (int64_t k = 0; k < K; ++k) v[k] += 1.f / (1.f + std::exp(si - s[k]));
    }
  }
  for (int64_t k = 0; k < K; ++k) v[k] = v[k] - 0.5f;
}

// Per-model values of one row, vectorised over k: each i is compared with all K candidates at once
// (x = s[i] broadcast against s[0..K)), so the counts accumulate in K-wide int32 arrays with no
// horizontal sums (the k-outer form reduced over i once per k: 2.4x slower on AVX2). The counts are
// integers and the float formulas are the reference's, so the bits are unchanged.
template <int kMode>
inline __attribute__((always_inline)) void model_values(const float* __restrict s, int64_t K, float* __restrict v,
                                                        int32_t* __restrict gt, int32_t* __restrict eq,
                                                        float* __restrict scratch, int32_t* __restrict bits) {
  if (kMode == kCapo) {
    capo_values(s, K, v, scratch, bits);
    return;
  }
  for (int64_t k = 0; k < K; ++k) gt[k] = eq[k] = 0;
  for (int64_t i = 0; i < K; ++i) {
    const float x = s[i];
    if (kMode == kDense) {  // count each distinct value above s_k once: skip later copies of s_i
      bool dup = false;
      for (int64_t j = 0; j < i; ++j) dup |= (s[j] == x);
      if (dup) continue;
    }
    if (kMode == kCaen) {
      for (int64_t k = 0; k < K; ++k) gt[k] += x < s[k];  // #{i : s_i < s_k}
    } else {
      for (int64_t k = 0; k < K; ++k) gt[k] += x > s[k];  // #{i : s_i > s_k}
      if (kMode == kAverage)
        for (int64_t k = 0; k < K; ++k) eq[k] += x == s[k];
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    switch (kMode) {
      case kMin:
      case kDense: v[k] = 1.f + static_cast<float>(gt[k]); break;
      case kAverage: v[k] = static_cast<float>(gt[k]) + static_cast<float>(eq[k] + 1) * 0.5f; break;
      default: v[k] = static_cast<float>(gt[k]); break;  // kCaen
    }
  }
}

struct Args {
  const float* scores;
  const float* weights;
  int64_t M, K;
  uint32_t seed32;
  int64_t sample_offset;
  float capo_tol;
  float* values;
  int32_t* winner;
  int32_t* loser;
  int32_t* used;
  int8_t* status;
};

// Samples [begin, end) of one mode; per-thread scratch: `work` 3 K floats, `iwork` 3 K ints.
template <int kMode>
inline __attribute__((always_inline)) void run_samples(const Args& a, int64_t begin, int64_t end, float* work, int32_t* iwork) {
  const int64_t M = a.M, K = a.K;
  constexpr bool rank_like = kMode <= kDense;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  float* total = work;
  float* v = work + K;
  float* scratch = work + 2 * K;  // CaPO's exponentials
  int32_t* gt = iwork;
  int32_t* eq = iwork + K;
  int32_t* bits = iwork + 2 * K;  // CaPO's 2^n
  for (int64_t n = begin; n < end; ++n) {
    const float* sample = a.scores + n * M * K;
    for (int64_t k = 0; k < K; ++k) total[k] = 0.f;
    float weight = 0.f;
    int32_t n_used = 0;
    for (int64_t m = 0; m < M; ++m) {
      const float w = a.weights[m];
      const float* row = sample + m * K;
      if (!(w > 0.f) || !finite_row(row, K)) continue;
      model_values<kMode>(row, K, v, gt, eq, scratch, bits);
      for (int64_t k = 0; k < K; ++k) {
        const float term = w * v[k];  // separate multiply and add: the reference's bits
        total[k] = total[k] + term;
      }
      weight = weight + w;
      ++n_used;
    }
    a.used[n] = n_used;
    float* row_out = a.values + n * K;
    if (n_used == 0) {
      for (int64_t k = 0; k < K; ++k) row_out[k] = nan;
      a.winner[n] = a.loser[n] = -1;
      a.status[n] = 1;
      continue;
    }
    const float scale = rank_like ? weight : weight * static_cast<float>(K - 1);
    const float tol = kMode == kCapo ? a.capo_tol * scale : 0.f;
    float best = std::numeric_limits<float>::infinity(), worst = -best;
    for (int64_t k = 0; k < K; ++k) {
      row_out[k] = total[k] / scale;
      const float key = rank_like ? total[k] : -total[k];
      best = key < best ? key : best;
      worst = key > worst ? key : worst;
    }
    const uint32_t sample_index = static_cast<uint32_t>(a.sample_offset + n);
    uint64_t win_code = std::numeric_limits<uint64_t>::max(), lose_code = 0;
    bool lose_found = false;
    for (int64_t k = 0; k < K; ++k) {
      const float key = rank_like ? total[k] : -total[k];
      const uint64_t code =
          (static_cast<uint64_t>(tie_priority(a.seed32, sample_index, static_cast<uint32_t>(k))) << 10) |
          static_cast<uint64_t>(k);
      if (key <= best + tol && code < win_code) win_code = code;
      if (key >= worst - tol && (!lose_found || code > lose_code)) {
        lose_code = code;
        lose_found = true;
      }
    }
    a.winner[n] = static_cast<int32_t>(win_code & 1023u);
    a.loser[n] = static_cast<int32_t>(lose_code & 1023u);
    a.status[n] = (worst - best) <= tol ? 2 : 0;
  }
}

// One block of samples. Compiled twice (AVX2 and baseline x86-64), picked at load time by the CPU
// (GCC function multi-versioning), so the cached .so stays portable across cluster nodes without
// -march=native. -ffp-contract=off keeps FMA out of the AVX2 clone: same bits in both.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void run_block(const Args& a, int mode, int64_t begin, int64_t end, float* work, int32_t* iwork) {
  switch (mode) {
    case kMin: run_samples<kMin>(a, begin, end, work, iwork); break;
    case kAverage: run_samples<kAverage>(a, begin, end, work, iwork); break;
    case kDense: run_samples<kDense>(a, begin, end, work, iwork); break;
    case kCaen: run_samples<kCaen>(a, begin, end, work, iwork); break;
    default: run_samples<kCapo>(a, begin, end, work, iwork); break;
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

  Args a{scores.data_ptr<float>(), weights.data_ptr<float>(), M, K, static_cast<uint32_t>(seed_term),
         sample_offset, static_cast<float>(capo_tol), values.data_ptr<float>(), winner.data_ptr<int32_t>(),
         loser.data_ptr<int32_t>(), used.data_ptr<int32_t>(), status.data_ptr<int8_t>()};
  const int mode_id = static_cast<int>(mode);
  constexpr int64_t kBlock = 256;  // samples per scheduling unit: 256 x M x K x 4 bytes stays in L2
  const int64_t blocks = (N + kBlock - 1) / kBlock;

#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<float> work(3 * K);
    std::vector<int32_t> iwork(3 * K);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b)
      run_block(a, mode_id, b * kBlock, std::min(N, (b + 1) * kBlock), work.data(), iwork.data());
  }
  return {values, winner, loser, used, status};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rank_ensemble_cpu", &rank_ensemble_cpu, "rank ensemble / calibrated win rates with pair selection (CPU)");
}
