// vla eval: caption metrics (METEOR, BLEU) and offline action metrics.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "core/core.h"

namespace vla::eval {

using Tokens = std::vector<std::string>;

// Lower-cases ASCII letters, turns ASCII punctuation into separators and splits on whitespace.
// Non-ASCII text (Korean) is kept as is, split on whitespace.
Tokens tokenize(const std::string& text);

// METEOR (Banerjee & Lavie 2005), exact-match module only:
//  * unigram alignment with the most matches; among those, the one with the fewest crossings;
//  * P = m / |hyp|, R = m / |ref|, Fmean = 10 P R / (R + 9 P);
//  * chunks = fewest groups of matches adjacent in both strings, Penalty = 0.5 (chunks / m)^3;
//  * score = Fmean (1 - Penalty); 0 when there is no match.
struct MeteorDetail {
  int matches = 0, chunks = 0, hyp_len = 0, ref_len = 0;
  double precision = 0, recall = 0, fmean = 0, penalty = 0, score = 0;
};
MeteorDetail meteor_detail(const Tokens& hyp, const Tokens& ref);
// Best score over several references.
double meteor(const Tokens& hyp, const std::vector<Tokens>& refs);
double meteor(const std::string& hyp, const std::string& ref);
// Mean sentence METEOR over a corpus (refs[i] are the references of hyps[i]).
double corpus_meteor(const std::vector<Tokens>& hyps, const std::vector<std::vector<Tokens>>& refs);

// BLEU (Papineni et al. 2002), corpus level: clipped n-gram precisions summed over the corpus,
// geometric mean over n = 1..max_n with uniform weights, brevity penalty exp(1 - r/c) when
// c <= r where r sums the reference lengths closest to each hypothesis (ties -> shorter).
// No smoothing: 0 when some n-gram order has no match.
struct BleuDetail {
  std::vector<double> precisions;  // p_1 .. p_N
  double brevity_penalty = 0, score = 0;
  int64_t hyp_len = 0, ref_len = 0;
};
BleuDetail corpus_bleu_detail(const std::vector<Tokens>& hyps,
                              const std::vector<std::vector<Tokens>>& refs, int max_n = 4);
double corpus_bleu(const std::vector<Tokens>& hyps, const std::vector<std::vector<Tokens>>& refs,
                   int max_n = 4);
double sentence_bleu(const Tokens& hyp, const std::vector<Tokens>& refs, int max_n = 4);

// Offline action error accumulator: predictions vs targets [.., D], per dimension.
class ActionErrors {
 public:
  explicit ActionErrors(int dims) : sum_abs_(dims, 0.0), sum_sq_(dims, 0.0) {}
  void add(const torch::Tensor& pred, const torch::Tensor& target);
  int64_t count() const { return n_; }
  std::vector<double> mae() const;
  std::vector<double> mse() const;
  nlohmann::json to_json() const;  // {"count", "mae": [..], "mse": [..], "mae_mean", "mse_mean"}

 private:
  std::vector<double> sum_abs_, sum_sq_;
  int64_t n_ = 0;
};

}  // namespace vla::eval
