#include "eval/eval.h"

#include <gtest/gtest.h>

using namespace vla::eval;

namespace {

Tokens T(const std::string& s) { return tokenize(s); }

TEST(Tokenize, LowercasePunctuationKorean) {
  EXPECT_EQ(T("The red port, at LEFT."), (Tokens{"the", "red", "port", "at", "left"}));
  EXPECT_EQ(T("빨간색 포트는 왼쪽에 있다"), (Tokens{"빨간색", "포트는", "왼쪽에", "있다"}));
}

// Worked examples from the METEOR article (Wikipedia, after Banerjee & Lavie 2005), reference
// "the cat sat on the mat":
TEST(Meteor, IdenticalSentence) {
  // m = 6, P = R = 1, Fmean = 1, one chunk: Penalty = 0.5 (1/6)^3 = 0.0023148,
  // score = 1 - 0.0023148 = 0.9976852.
  auto d = meteor_detail(T("the cat sat on the mat"), T("the cat sat on the mat"));
  EXPECT_EQ(d.matches, 6);
  EXPECT_EQ(d.chunks, 1);
  EXPECT_NEAR(d.penalty, 0.5 / 216.0, 1e-12);
  EXPECT_NEAR(d.score, 1.0 - 0.5 / 216.0, 1e-12);
}

TEST(Meteor, ReorderedSentence) {
  // hyp "on the mat sat the cat" (the article's 0.5000 example): all 6 unigrams match; "the"
  // occurs twice on both sides, so there are two maximal alignments. Listing the ref index of
  // hyp words 0..5:
  //   A: the(1)->0, the(4)->4 : [3 0 5 2 4 1], crossings (inversions) = 3+0+3+1+1 = 8
  //   B: the(1)->4, the(4)->0 : [3 4 5 2 0 1], crossings = 3+3+3+2+0 = 11
  // The standard picks the fewest crossings (A); in A no two matches are adjacent in both
  // strings, so chunks = 6, Penalty = 0.5 (6/6)^3 = 0.5 and score = 1 * (1 - 0.5) = 0.5.
  auto d = meteor_detail(T("on the mat sat the cat"), T("the cat sat on the mat"));
  EXPECT_EQ(d.matches, 6);
  EXPECT_EQ(d.chunks, 6);
  EXPECT_NEAR(d.fmean, 1.0, 1e-12);
  EXPECT_NEAR(d.penalty, 0.5, 1e-12);
  EXPECT_NEAR(d.score, 0.5, 1e-12);
}

TEST(Meteor, ExtraWord) {
  // hyp "the cat was sat on the mat": m = 6, P = 6/7, R = 1,
  // Fmean = 10 P R / (R + 9 P) = (60/7) / (61/7) = 60/61 = 0.98361;
  // chunks: "the cat" | "sat on the mat" = 2, Penalty = 0.5 (2/6)^3 = 1/54 = 0.018519;
  // score = 60/61 * (1 - 1/54) = 0.96540 (the article's 0.9654).
  auto d = meteor_detail(T("the cat was sat on the mat"), T("the cat sat on the mat"));
  EXPECT_EQ(d.matches, 6);
  EXPECT_EQ(d.chunks, 2);
  EXPECT_NEAR(d.precision, 6.0 / 7.0, 1e-12);
  EXPECT_NEAR(d.fmean, 60.0 / 61.0, 1e-12);
  EXPECT_NEAR(d.score, 60.0 / 61.0 * (1.0 - 1.0 / 54.0), 1e-12);
  EXPECT_NEAR(d.score, 0.9654, 5e-5);
}

TEST(Meteor, NoMatchAndMultipleReferences) {
  EXPECT_EQ(meteor("red port", "blue needle"), 0.0);
  // Best over references: the identical one wins.
  double s = meteor(T("the needle is above the blue port"),
                    {T("a green port"), T("the needle is above the blue port")});
  EXPECT_NEAR(s, 1.0 - 0.5 / 343.0, 1e-12);
  // Recall-weighted: missing words hurt more than extra words.
  double miss = meteor("the red port", "the red port is left");
  double extra = meteor("the red port is left", "the red port");
  EXPECT_LT(miss, extra);
}

// BLEU: the example of Papineni et al. 2002 (also NLTK's documented sentence_bleu/corpus_bleu
// examples, where the published values are 0.5045666840058485 and 0.5920778868801042).
const Tokens kH1 = {"It",    "is",      "a",        "guide", "to",       "action",
                    "which", "ensures", "that",     "the",   "military", "always",
                    "obeys", "the",     "commands", "of",    "the",      "party"};
const Tokens kR1 = {"It",   "is",  "a",        "guide", "to",      "action", "that",  "ensures",
                    "that", "the", "military", "will",  "forever", "heed",   "Party", "commands"};
const Tokens kR2 = {"It",         "is",  "the",      "guiding", "principle", "which",
                    "guarantees", "the", "military", "forces",  "always",    "being",
                    "under",      "the", "command",  "of",      "the",       "Party"};
const Tokens kR3 = {"It",     "is", "the",  "practical", "guide",      "for", "the", "army",
                    "always", "to", "heed", "the",       "directions", "of",  "the", "party"};

TEST(Bleu, PapineniExampleSentence) {
  // p1 = 17/18, p2 = 10/17, p3 = 7/16, p4 = 4/15, BP = 1 (hyp 18 >= closest ref 18)
  // BLEU = (17/18 * 10/17 * 7/16 * 4/15)^(1/4) = 0.504567
  auto d = corpus_bleu_detail({kH1}, {{kR1, kR2, kR3}});
  EXPECT_NEAR(d.precisions[0], 17.0 / 18.0, 1e-12);
  EXPECT_NEAR(d.precisions[1], 10.0 / 17.0, 1e-12);
  EXPECT_NEAR(d.precisions[2], 7.0 / 16.0, 1e-12);
  EXPECT_NEAR(d.precisions[3], 4.0 / 15.0, 1e-12);
  EXPECT_NEAR(d.brevity_penalty, 1.0, 1e-12);
  EXPECT_NEAR(d.score, 0.5045666840058485, 1e-12);
}

TEST(Bleu, CorpusExample) {
  const Tokens h2 = {"he",  "read",       "the", "book",  "because", "he",
                     "was", "interested", "in",  "world", "history"};
  const Tokens r2 = {"he",      "was", "interested", "in",  "world", "history",
                     "because", "he",  "read",       "the", "book"};
  EXPECT_NEAR(corpus_bleu({kH1, h2}, {{kR1, kR2, kR3}, {r2}}), 0.5920778868801042, 1e-12);
}

TEST(Bleu, BrevityPenaltyAndZero) {
  // hyp of 4 tokens, ref of 8 with the hyp as prefix: all precisions 1, BP = exp(1 - 8/4).
  Tokens ref = T("a b c d e f g h");
  EXPECT_NEAR(sentence_bleu(T("a b c d"), {ref}), std::exp(-1.0), 1e-12);
  EXPECT_NEAR(sentence_bleu(ref, {ref}), 1.0, 1e-12);
  EXPECT_EQ(sentence_bleu(T("a c b d"), {ref}), 0.0);  // no 4-gram match, no smoothing
  EXPECT_THROW(corpus_bleu({ref}, {}), vla::Error);
}

TEST(ActionErrors, PerDimension) {
  ActionErrors e(3);
  e.add(torch::tensor({{1.0, 2.0, 3.0}, {0.0, 0.0, 0.0}}),
        torch::tensor({{0.0, 0.0, 0.0}, {0.0, 0.0, 1.0}}));
  EXPECT_EQ(e.count(), 2);
  EXPECT_NEAR(e.mae()[0], 0.5, 1e-12);
  EXPECT_NEAR(e.mae()[2], 2.0, 1e-12);
  EXPECT_NEAR(e.mse()[1], 2.0, 1e-12);
  EXPECT_NEAR(e.mse()[2], 5.0, 1e-12);
  EXPECT_THROW(e.add(torch::zeros({2, 2}), torch::zeros({2, 2})), vla::Error);
}

}  // namespace
