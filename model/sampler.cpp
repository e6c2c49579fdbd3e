// Sampler: transformers' RepetitionPenalty -> Temperature -> TopK -> TopP -> MinP, then a draw.
//
// Probabilities stay unnormalised (weights exp((l - max) / T) <= 1, summed in double), so a tiny
// temperature cannot overflow and filters that compare probabilities need no division by the sum.
// Candidates stay in id order through every filter, so the order the draw walks depends only on
// the logits and a seed gives the same tokens with any standard library.
#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

namespace mnemo {

Status SamplingParams::validate() const {
  if (!std::isfinite(temperature) || temperature < 0.0f) {
    return invalid_argument("sampling: temperature must be a finite number >= 0 (0 = greedy), got ",
                            temperature);
  }
  if (top_k < 0) return invalid_argument("sampling: top_k must be >= 0 (0 = off), got ", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return invalid_argument("sampling: top_p must be in (0, 1] (1 = off), got ", top_p);
  }
  if (!(min_p >= 0.0f && min_p <= 1.0f)) {
    return invalid_argument("sampling: min_p must be in [0, 1] (0 = off), got ", min_p);
  }
  if (!std::isfinite(repetition_penalty) || repetition_penalty <= 0.0f) {
    return invalid_argument(
        "sampling: repetition_penalty must be a finite number > 0 (1 = off), got ",
        repetition_penalty);
  }
  return Status::Ok();
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

Result<Sampler> Sampler::create(const SamplingParams& params) {
  MNEMO_RETURN_IF_ERROR(params.validate());
  return Sampler(params);
}

double Sampler::uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

// The k-th largest logit counting repeats (torch.topk's last value), NaN and -inf skipped; -inf
// when fewer than k remain. A k-entry min-heap: about one comparison per logit once it is full.
float Sampler::kth_largest(const float* x, int64_t vocab, size_t k) {
  heap_.clear();
  const auto greater = std::greater<float>();
  for (int64_t i = 0; i < vocab; ++i) {
    const float v = x[i];
    if (!(v > -std::numeric_limits<float>::infinity())) continue;
    if (heap_.size() < k) {
      heap_.push_back(v);
      std::push_heap(heap_.begin(), heap_.end(), greater);
    } else if (v > heap_.front()) {
      std::pop_heap(heap_.begin(), heap_.end(), greater);
      heap_.back() = v;
      std::push_heap(heap_.begin(), heap_.end(), greater);
    }
  }
  return heap_.size() < k ? -std::numeric_limits<float>::infinity() : heap_.front();
}

// transformers removes a token when the probability mass of tokens ranked strictly above it is
// already >= top_p; the top token always stays. Ranking is by logit, ties by id. Only tokens with
// weight >= t can be kept for t = (1 - top_p) * total / n (the others weigh at most
// (1 - top_p) * total together), so those go first; then a quickselect on mass finds the cut in
// O(n) and only the last <= 64 candidates around it are sorted.
void Sampler::top_p_filter(double total_weight) {
  if (params_.top_p >= 1.0f || cands_.empty()) return;
  const double top_p_weight = static_cast<double>(params_.top_p) * total_weight;
  const double floor_weight = (1.0 - static_cast<double>(params_.top_p)) * total_weight /
                              static_cast<double>(cands_.size());
  std::erase_if(cands_, [&](const Candidate& c) { return c.weight < floor_weight; });
  const auto ranked_before = [](const Candidate& a, const Candidate& b) {
    return a.logit != b.logit ? a.logit > b.logit : a.id < b.id;
  };
  // Quickselect over a copy, so cands_ keeps its id order. Invariant: ranked_[0, lo) is kept,
  // ranked_[hi, end) cut; `need` = top_p mass not yet reached by ranked_[0, lo).
  ranked_.assign(cands_.begin(), cands_.end());
  const auto first = ranked_.begin();
  size_t lo = 0, hi = ranked_.size();
  double need = top_p_weight;
  while (hi - lo > 64 && need > 0.0) {
    const Candidate pivot = ranked_[lo + (hi - lo) / 2];
    const auto mid = std::partition(first + lo, first + hi,
                                    [&](const Candidate& c) { return ranked_before(c, pivot); });
    std::iter_swap(
        mid, std::find_if(mid, first + hi, [&](const Candidate& c) { return c.id == pivot.id; }));
    double mass = 0.0;
    for (auto it = first + lo; it != mid; ++it) mass += it->weight;
    if (mass >= need) {                       // need > 0, so [lo, mid) is not empty
      hi = static_cast<size_t>(mid - first);  // the pivot and everything after it are cut
    } else {
      need -= mass + mid->weight;  // [lo, mid) and the pivot stay
      lo = static_cast<size_t>(mid - first) + 1;
    }
  }
  std::sort(first + lo, first + hi, ranked_before);
  size_t keep = lo;
  while (keep < hi && (keep == 0 || need > 0.0)) need -= ranked_[keep++].weight;
  const Candidate last_kept = ranked_[keep - 1];
  std::erase_if(cands_, [&](const Candidate& c) { return ranked_before(last_kept, c); });
}

int32_t Sampler::sample(const float* logits, int64_t vocab, std::span<const int32_t> history) {
  if (vocab <= 0) return -1;
  const float* x = logits;
  if (params_.repetition_penalty != 1.0f && !history.empty()) {
    // transformers gathers the original logit of each seen id, so a repeated id is penalised once.
    penalised_.assign(logits, logits + vocab);
    const float penalty = params_.repetition_penalty;
    for (int32_t id : history) {
      if (id < 0 || id >= vocab) continue;
      const float l = logits[id];
      penalised_[id] = l < 0.0f ? l * penalty : l / penalty;
    }
    x = penalised_.data();
  }

  if (params_.temperature == 0.0f) {
    int32_t best = -1;
    float best_logit = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < vocab; ++i) {
      if (x[i] > best_logit) {  // strict: the lowest index wins ties; NaN never compares greater
        best_logit = x[i];
        best = static_cast<int32_t>(i);
      }
    }
    return best;
  }

  float max_logit = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < vocab; ++i) max_logit = std::max(max_logit, x[i]);  // NaN never wins
  if (!(max_logit > -std::numeric_limits<float>::infinity())) return -1;
  cands_.clear();
  if (std::isinf(max_logit)) {
    // +inf logits: only those can be drawn, each equally likely.
    for (int64_t i = 0; i < vocab; ++i) {
      if (x[i] == max_logit) cands_.push_back({x[i], static_cast<int32_t>(i), 1.0f});
    }
  } else {
    // Top-k keeps every logit >= the k-th largest (transformers keeps ties).
    const size_t k = static_cast<size_t>(params_.top_k);
    const float kth = k > 0 && static_cast<int64_t>(k) < vocab
                          ? kth_largest(x, vocab, k)
                          : -std::numeric_limits<float>::infinity();
    double total = 0.0;
    for (int64_t i = 0; i < vocab; ++i) {
      const float v = x[i];
      if (!(v > -std::numeric_limits<float>::infinity()) || v < kth) continue;
      const float w = std::exp((v - max_logit) / params_.temperature);  // 0/T stays 0 for any T
      cands_.push_back({v, static_cast<int32_t>(i), w});
      total += w;
    }
    top_p_filter(total);
    if (params_.min_p > 0.0f) {  // the top token has weight 1
      std::erase_if(cands_, [&](const Candidate& c) { return c.weight < params_.min_p; });
    }
  }

  double total = 0.0;
  for (const Candidate& c : cands_) total += c.weight;
  const double target = uniform() * total;
  double acc = 0.0;
  for (const Candidate& c : cands_) {
    acc += c.weight;
    if (target < acc) return c.id;
  }
  return cands_.back().id;  // rounding left target == total
}

}  // namespace mnemo
