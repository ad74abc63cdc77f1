#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>

#include "eval/eval.h"

namespace vla::eval {

Tokens tokenize(const std::string& text) {
  Tokens out;
  std::string cur;
  auto flush = [&] {
    if (!cur.empty()) out.push_back(cur);
    cur.clear();
  };
  for (unsigned char ch : text) {
    if (ch < 128 && (std::isspace(ch) || std::ispunct(ch))) {
      flush();
    } else {
      cur.push_back(ch < 128 ? static_cast<char>(std::tolower(ch)) : static_cast<char>(ch));
    }
  }
  flush();
  return out;
}

// ---------------------------------------------------------------- METEOR
namespace {

using Pairs = std::vector<std::pair<int, int>>;  // (hyp index, ref index)

int crossings(const Pairs& a) {
  int c = 0;
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t j = i + 1; j < a.size(); ++j)
      if ((a[i].first - a[j].first) * (a[i].second - a[j].second) < 0) ++c;
  return c;
}

int count_chunks(Pairs a) {
  if (a.empty()) return 0;
  std::sort(a.begin(), a.end());
  int chunks = 1;
  for (size_t i = 1; i < a.size(); ++i)
    if (a[i].first != a[i - 1].first + 1 || a[i].second != a[i - 1].second + 1) ++chunks;
  return chunks;
}

// All k-subsets of v (in order), capped.
void subsets(const std::vector<int>& v, size_t k, size_t start, std::vector<int>& cur,
             std::vector<std::vector<int>>& out, size_t cap) {
  if (out.size() >= cap) return;
  if (cur.size() == k) {
    out.push_back(cur);
    return;
  }
  for (size_t i = start; i + (k - cur.size()) <= v.size(); ++i) {
    cur.push_back(v[i]);
    subsets(v, k, i + 1, cur, out, cap);
    cur.pop_back();
  }
}

}  // namespace

MeteorDetail meteor_detail(const Tokens& hyp, const Tokens& ref) {
  MeteorDetail d;
  d.hyp_len = static_cast<int>(hyp.size());
  d.ref_len = static_cast<int>(ref.size());
  // Per word: the occurrences on each side. Same-word pairs are joined in order (crossing them
  // never helps); which occurrences take part is searched to minimise crossings.
  std::map<std::string, std::pair<std::vector<int>, std::vector<int>>> occ;
  for (int i = 0; i < d.hyp_len; ++i) occ[hyp[i]].first.push_back(i);
  for (int j = 0; j < d.ref_len; ++j) occ[ref[j]].second.push_back(j);
  struct Choice {
    std::vector<Pairs> options;
  };
  std::vector<Choice> choices;
  for (auto& [w, o] : occ) {
    size_t k = std::min(o.first.size(), o.second.size());
    if (k == 0) continue;
    std::vector<std::vector<int>> hs, rs;
    std::vector<int> cur;
    subsets(o.first, k, 0, cur, hs, 64);
    subsets(o.second, k, 0, cur, rs, 64);
    Choice c;
    for (auto& h : hs)
      for (auto& r : rs) {
        Pairs p;
        for (size_t i = 0; i < k; ++i) p.emplace_back(h[i], r[i]);
        c.options.push_back(p);
      }
    choices.push_back(std::move(c));
  }
  // Exhaustive search over the combinations (bounded); fall back to the first option per word.
  Pairs best;
  int best_cross = -1, best_chunks = 0;
  size_t combos = 1;
  for (auto& c : choices) combos = std::min<size_t>(combos * c.options.size(), 1u << 20);
  if (combos > 20000) {
    for (auto& c : choices) best.insert(best.end(), c.options[0].begin(), c.options[0].end());
  } else {
    std::vector<size_t> idx(choices.size(), 0);
    while (true) {
      Pairs p;
      for (size_t i = 0; i < choices.size(); ++i)
        p.insert(p.end(), choices[i].options[idx[i]].begin(), choices[i].options[idx[i]].end());
      int cr = crossings(p), ch = count_chunks(p);
      if (best_cross < 0 || cr < best_cross || (cr == best_cross && ch < best_chunks)) {
        best = p;
        best_cross = cr;
        best_chunks = ch;
      }
      size_t i = 0;
      for (; i < choices.size(); ++i) {
        if (++idx[i] < choices[i].options.size()) break;
        idx[i] = 0;
      }
      if (i == choices.size()) break;
    }
  }
  d.matches = static_cast<int>(best.size());
  if (d.matches == 0) return d;
  d.chunks = count_chunks(best);
  d.precision = static_cast<double>(d.matches) / d.hyp_len;
  d.recall = static_cast<double>(d.matches) / d.ref_len;
  d.fmean = 10.0 * d.precision * d.recall / (d.recall + 9.0 * d.precision);
  d.penalty = 0.5 * std::pow(static_cast<double>(d.chunks) / d.matches, 3.0);
  d.score = d.fmean * (1.0 - d.penalty);
  return d;
}

double meteor(const Tokens& hyp, const std::vector<Tokens>& refs) {
  double best = 0;
  for (auto& r : refs) best = std::max(best, meteor_detail(hyp, r).score);
  return best;
}

double meteor(const std::string& hyp, const std::string& ref) {
  return meteor_detail(tokenize(hyp), tokenize(ref)).score;
}

double corpus_meteor(const std::vector<Tokens>& hyps,
                     const std::vector<std::vector<Tokens>>& refs) {
  VLA_CHECK(hyps.size() == refs.size(), "corpus_meteor: ", hyps.size(), " hypotheses but ",
            refs.size(), " reference sets");
  if (hyps.empty()) return 0.0;
  double s = 0;
  for (size_t i = 0; i < hyps.size(); ++i) s += meteor(hyps[i], refs[i]);
  return s / static_cast<double>(hyps.size());
}

// ---------------------------------------------------------------- BLEU
namespace {
std::map<Tokens, int> ngrams(const Tokens& t, int n) {
  std::map<Tokens, int> out;
  for (int i = 0; i + n <= static_cast<int>(t.size()); ++i)
    ++out[Tokens(t.begin() + i, t.begin() + i + n)];
  return out;
}
}  // namespace

BleuDetail corpus_bleu_detail(const std::vector<Tokens>& hyps,
                              const std::vector<std::vector<Tokens>>& refs, int max_n) {
  VLA_CHECK(hyps.size() == refs.size(), "corpus_bleu: ", hyps.size(), " hypotheses but ",
            refs.size(), " reference sets");
  VLA_CHECK(max_n >= 1, "corpus_bleu: max_n must be >= 1");
  std::vector<int64_t> num(max_n, 0), den(max_n, 0);
  BleuDetail d;
  for (size_t s = 0; s < hyps.size(); ++s) {
    VLA_CHECK(!refs[s].empty(), "corpus_bleu: hypothesis ", s, " has no reference");
    const auto& h = hyps[s];
    d.hyp_len += static_cast<int64_t>(h.size());
    // Closest reference length (ties -> the shorter).
    int64_t best = -1;
    for (auto& r : refs[s]) {
      int64_t len = static_cast<int64_t>(r.size());
      int64_t hl = static_cast<int64_t>(h.size());
      if (best < 0 || std::llabs(len - hl) < std::llabs(best - hl) ||
          (std::llabs(len - hl) == std::llabs(best - hl) && len < best))
        best = len;
    }
    d.ref_len += best;
    for (int n = 1; n <= max_n; ++n) {
      auto hc = ngrams(h, n);
      std::map<Tokens, int> maxref;
      for (auto& r : refs[s])
        for (auto& [g, c] : ngrams(r, n)) maxref[g] = std::max(maxref[g], c);
      for (auto& [g, c] : hc) {
        auto it = maxref.find(g);
        num[n - 1] += std::min(c, it == maxref.end() ? 0 : it->second);
        den[n - 1] += c;
      }
    }
  }
  double log_sum = 0;
  bool zero = false;
  for (int n = 0; n < max_n; ++n) {
    double p = den[n] > 0 ? static_cast<double>(num[n]) / den[n] : 0.0;
    d.precisions.push_back(p);
    if (p <= 0)
      zero = true;
    else
      log_sum += std::log(p) / max_n;
  }
  d.brevity_penalty =
      d.hyp_len == 0 ? 0.0
      : d.hyp_len > d.ref_len
          ? 1.0
          : std::exp(1.0 - static_cast<double>(d.ref_len) / static_cast<double>(d.hyp_len));
  d.score = zero ? 0.0 : d.brevity_penalty * std::exp(log_sum);
  return d;
}

double corpus_bleu(const std::vector<Tokens>& hyps, const std::vector<std::vector<Tokens>>& refs,
                   int max_n) {
  return corpus_bleu_detail(hyps, refs, max_n).score;
}

double sentence_bleu(const Tokens& hyp, const std::vector<Tokens>& refs, int max_n) {
  return corpus_bleu({hyp}, {refs}, max_n);
}

// ---------------------------------------------------------------- actions
void ActionErrors::add(const torch::Tensor& pred, const torch::Tensor& target) {
  VLA_CHECK(pred.sizes() == target.sizes(), "ActionErrors: prediction shape ", pred.sizes(),
            " != target shape ", target.sizes());
  const int d = static_cast<int>(sum_abs_.size());
  VLA_CHECK(pred.dim() >= 1 && pred.size(-1) == d, "ActionErrors: last dim must be ", d);
  auto diff = (pred.to(torch::kFloat64) - target.to(torch::kFloat64)).reshape({-1, d});
  auto a = diff.abs().sum(0), s = diff.square().sum(0);
  for (int i = 0; i < d; ++i) {
    sum_abs_[i] += a[i].item<double>();
    sum_sq_[i] += s[i].item<double>();
  }
  n_ += diff.size(0);
}

std::vector<double> ActionErrors::mae() const {
  std::vector<double> o(sum_abs_.size(), 0.0);
  for (size_t i = 0; i < o.size() && n_ > 0; ++i) o[i] = sum_abs_[i] / n_;
  return o;
}
std::vector<double> ActionErrors::mse() const {
  std::vector<double> o(sum_sq_.size(), 0.0);
  for (size_t i = 0; i < o.size() && n_ > 0; ++i) o[i] = sum_sq_[i] / n_;
  return o;
}

nlohmann::json ActionErrors::to_json() const {
  return {{"count", n_},
          {"mae", mae()},
          {"mse", mse()},
          {"mae_mean", vla::mean(mae())},
          {"mse_mean", vla::mean(mse())}};
}

}  // namespace vla::eval
