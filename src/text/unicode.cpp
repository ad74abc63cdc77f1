// UTF-8, Unicode categories, NFC and the Qwen2 pre-tokenizer regex, by hand.
#include <algorithm>
#include <cstring>

#include "core/core.h"
#include "text/text.h"

namespace vla {
namespace unicode {

namespace {
struct CategoryRange {
  char32_t lo, hi;
  uint8_t cls;
};
struct CombiningClass {
  char32_t cp;
  uint8_t ccc;
};
struct Decomposition {
  char32_t cp, a, b;
};
struct Composition {
  char32_t a, b, c;
};
#include "text/unicode_tables.inc"

constexpr char32_t kReplacement = 0xFFFD;

// 0 other, 1 letter, 2 number.
uint8_t category_slow(char32_t c) {
  const auto* begin = kCategoryRanges;
  const auto* end = kCategoryRanges + sizeof(kCategoryRanges) / sizeof(kCategoryRanges[0]);
  auto it =
      std::upper_bound(begin, end, c, [](char32_t v, const CategoryRange& r) { return v < r.lo; });
  if (it == begin) return 0;
  --it;
  return c <= it->hi ? it->cls : 0;
}

struct AsciiTable {
  uint8_t cls[128];
  AsciiTable() {
    for (int i = 0; i < 128; ++i) cls[i] = category_slow(static_cast<char32_t>(i));
  }
};
const AsciiTable& ascii_table() {
  static const AsciiTable t;
  return t;
}

inline uint8_t category(char32_t c) { return c < 128 ? ascii_table().cls[c] : category_slow(c); }

uint8_t ccc_of(char32_t c) {
  if (c < 0x300) return 0;
  const auto* begin = kCombiningClass;
  const auto* end = kCombiningClass + sizeof(kCombiningClass) / sizeof(kCombiningClass[0]);
  auto it =
      std::lower_bound(begin, end, c, [](const CombiningClass& r, char32_t v) { return r.cp < v; });
  return (it != end && it->cp == c) ? it->ccc : 0;
}

const Decomposition* decomposition_of(char32_t c) {
  const auto* begin = kDecomposition;
  const auto* end = kDecomposition + sizeof(kDecomposition) / sizeof(kDecomposition[0]);
  auto it =
      std::lower_bound(begin, end, c, [](const Decomposition& r, char32_t v) { return r.cp < v; });
  return (it != end && it->cp == c) ? it : nullptr;
}

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
              kSCount = kLCount * kNCount;

void decompose(char32_t c, std::vector<char32_t>& out) {
  if (c >= kSBase && c < kSBase + kSCount) {
    int s = static_cast<int>(c - kSBase);
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  const Decomposition* d = c >= 0xC0 ? decomposition_of(c) : nullptr;
  if (!d) {
    out.push_back(c);
    return;
  }
  decompose(d->a, out);
  if (d->b) decompose(d->b, out);
}

char32_t compose_pair(char32_t a, char32_t b) {
  // Hangul L+V -> LV, LV+T -> LVT.
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto* begin = kComposition;
  const auto* end = kComposition + sizeof(kComposition) / sizeof(kComposition[0]);
  auto it = std::lower_bound(begin, end, std::make_pair(a, b),
                             [](const Composition& r, const std::pair<char32_t, char32_t>& v) {
                               return r.a != v.first ? r.a < v.first : r.b < v.second;
                             });
  return (it != end && it->a == a && it->b == b) ? it->c : 0;
}
}  // namespace

bool is_letter(char32_t c) { return category(c) == 1; }
bool is_number(char32_t c) { return category(c) == 2; }
bool is_whitespace(char32_t c) {
  if (c < 128) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  switch (c) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

std::vector<char32_t> utf8_to_codepoints(const std::string& s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    unsigned char b = p[i];
    if (b < 0x80) {
      out.push_back(b);
      ++i;
      continue;
    }
    int len = 0;
    char32_t cp = 0, min = 0;
    if ((b & 0xE0) == 0xC0)
      len = 2, cp = b & 0x1F, min = 0x80;
    else if ((b & 0xF0) == 0xE0)
      len = 3, cp = b & 0x0F, min = 0x800;
    else if ((b & 0xF8) == 0xF0)
      len = 4, cp = b & 0x07, min = 0x10000;
    bool ok = len > 0 && i + len <= n;
    for (int k = 1; ok && k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80)
        ok = false;
      else
        cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (ok && (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))) ok = false;
    if (!ok) {
      out.push_back(kReplacement);
      ++i;
      continue;
    }
    out.push_back(cp);
    i += len;
  }
  return out;
}

std::string codepoints_to_utf8(const std::vector<char32_t>& cps) {
  std::string out;
  out.reserve(cps.size());
  for (auto c : cps) append_utf8(out, c);
  return out;
}

// Rust's from_utf8_lossy: each maximal prefix of a valid sequence that turns out invalid is
// replaced by one U+FFFD.
std::string utf8_lossy(const std::string& bytes) {
  std::string out;
  out.reserve(bytes.size());
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size(), i = 0;
  while (i < n) {
    unsigned char b = p[i];
    if (b < 0x80) {
      out.push_back(static_cast<char>(b));
      ++i;
      continue;
    }
    int len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b >= 0xC2 && b <= 0xDF)
      len = 2;
    else if (b == 0xE0)
      len = 3, lo = 0xA0;
    else if (b >= 0xE1 && b <= 0xEC)
      len = 3;
    else if (b == 0xED)
      len = 3, hi = 0x9F;
    else if (b >= 0xEE && b <= 0xEF)
      len = 3;
    else if (b == 0xF0)
      len = 4, lo = 0x90;
    else if (b >= 0xF1 && b <= 0xF3)
      len = 4;
    else if (b == 0xF4)
      len = 4, hi = 0x8F;
    if (len == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
      continue;
    }
    size_t k = 1;
    bool ok = true;
    for (; k < static_cast<size_t>(len); ++k) {
      if (i + k >= n) {
        ok = false;
        break;
      }
      unsigned char c = p[i + k];
      unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
      if (c < l || c > h) {
        ok = false;
        break;
      }
    }
    if (ok) {
      out.append(bytes, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      i += k;
    }
  }
  return out;
}

std::string nfc(const std::string& s) {
  bool simple = true;
  for (unsigned char c : s)
    if (c >= 0xCC) {  // lead bytes of U+0300 and above
      simple = false;
      break;
    }
  if (simple) return s;
  auto cps = utf8_to_codepoints(s);
  std::vector<char32_t> d;
  d.reserve(cps.size() + 8);
  for (auto c : cps) decompose(c, d);
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  std::vector<uint8_t> cc(d.size());
  for (size_t i = 0; i < d.size(); ++i) cc[i] = ccc_of(d[i]);
  for (size_t i = 0; i < d.size();) {
    if (cc[i] == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && cc[j] != 0) ++j;
    if (j - i > 1) {
      std::vector<std::pair<uint8_t, char32_t>> run;
      for (size_t k = i; k < j; ++k) run.emplace_back(cc[k], d[k]);
      std::stable_sort(run.begin(), run.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first; });
      for (size_t k = i; k < j; ++k) cc[k] = run[k - i].first, d[k] = run[k - i].second;
    }
    i = j;
  }
  // Canonical composition.
  std::vector<char32_t> out;
  out.reserve(d.size());
  long starter = -1;
  int last_cc = -1;
  for (size_t i = 0; i < d.size(); ++i) {
    char32_t c = d[i];
    int ccc = cc[i];
    if (starter >= 0) {
      bool adjacent = static_cast<long>(out.size()) - 1 == starter;
      if (adjacent || (last_cc != -1 && last_cc < ccc)) {
        if (char32_t comp = compose_pair(out[starter], c)) {
          out[starter] = comp;
          continue;
        }
      }
    }
    if (ccc == 0) {
      starter = static_cast<long>(out.size());
      last_cc = -1;
    } else {
      last_cc = ccc;
    }
    out.push_back(c);
  }
  return codepoints_to_utf8(out);
}

// Qwen2 pattern, alternatives tried in order at each position (the regex always matches, so
// the pieces tile the input):
//   (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N} |
//   ' '?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
std::vector<std::pair<size_t, size_t>> qwen2_split(const std::vector<char32_t>& cps) {
  std::vector<std::pair<size_t, size_t>> pieces;
  const size_t n = cps.size();
  auto L = [&](size_t k) { return k < n && is_letter(cps[k]); };
  auto N = [&](size_t k) { return k < n && is_number(cps[k]); };
  auto S = [&](size_t k) { return k < n && is_whitespace(cps[k]); };
  auto CRLF = [&](size_t k) { return k < n && (cps[k] == '\r' || cps[k] == '\n'); };
  auto other = [&](size_t k) { return k < n && !is_whitespace(cps[k]) && !L(k) && !N(k); };
  auto lower = [&](size_t k) -> char32_t {
    if (k >= n) return 0;
    char32_t c = cps[k];
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c == 0x17F) return 's';   // LATIN SMALL LETTER LONG S folds to s
    if (c == 0x212A) return 'k';  // KELVIN SIGN (not in the pattern; harmless)
    return c;
  };
  size_t i = 0;
  while (i < n) {
    size_t end = 0;
    // 1. contractions
    if (cps[i] == '\'') {
      char32_t a = lower(i + 1), b = lower(i + 2);
      if (a == 's' || a == 't' || a == 'm' || a == 'd')
        end = i + 2;
      else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        end = i + 3;
    }
    // 2. optional non-letter/number/newline + letters
    if (!end) {
      size_t j = n + 1;
      if (L(i))
        j = i;
      else if (!CRLF(i) && !N(i) && L(i + 1))
        j = i + 1;
      if (j <= n) {
        while (L(j)) ++j;
        end = j;
      }
    }
    // 3. one number
    if (!end && N(i)) end = i + 1;
    // 4. optional space + punctuation run + newlines
    if (!end) {
      size_t j = i;
      if (cps[i] == ' ' && other(i + 1)) j = i + 1;
      if (other(j)) {
        while (other(j)) ++j;
        while (CRLF(j)) ++j;
        end = j;
      }
    }
    if (!end && S(i)) {
      size_t j = i;
      while (S(j)) ++j;  // whitespace run [i, j)
      // 5. \s*[\r\n]+ : ends after the last CR/LF of the run
      size_t last = n;
      for (size_t k = j; k > i; --k)
        if (CRLF(k - 1)) {
          last = k - 1;
          break;
        }
      if (last != n) {
        end = last + 1;
      } else if (j == n) {
        end = j;  // 6. \s+(?!\S) at the end of the text
      } else if (j - i >= 2) {
        end = j - 1;  // 6. leave the last space to the next word
      } else {
        end = j;  // 7. \s+
      }
    }
    if (!end) end = i + 1;  // unreachable: every code point is L, N, \s or other
    pieces.emplace_back(i, end);
    i = end;
  }
  return pieces;
}

}  // namespace unicode
}  // namespace vla
