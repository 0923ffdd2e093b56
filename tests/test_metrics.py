"""Each evaluation metric against values worked out by hand on tiny inputs."""

import math

import pytest
import torch

from evaluation.metrics import (distinct_n, mean_length_and_stop_rate, perplexity,
                                ranking, repetition_rate, rouge_l_f1, rouge_tokens,
                                seed_token_cosine, semantic_similarity)


def test_seed_token_cosine_averages_all_token_pairs():
    # a points along x then y; b along x then the diagonal. Pairwise cosines:
    # (a1,b1) = 1, (a1,b2) = 1/sqrt2, (a2,b1) = 0, (a2,b2) = 1/sqrt2; lengths do not matter.
    h_a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    h_b = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    expected = (1.0 + 1 / math.sqrt(2) + 0.0 + 1 / math.sqrt(2)) / 4
    assert seed_token_cosine(h_a, h_b) == pytest.approx(expected, abs=1e-6)


def test_seed_token_cosine_is_high_for_unrelated_texts_sharing_a_common_direction():
    # Why the seed's column was flat: a shared offset dominates every token pair.
    offset = torch.tensor([10.0, 0.0, 0.0])
    h_a = offset + torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    h_b = offset + torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    assert seed_token_cosine(h_a, h_b) == pytest.approx(100 / 101, abs=1e-6)


def test_semantic_similarity_is_rowwise_cosine():
    answers = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 5.0]])
    refs = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, -1.0]])
    expected = [1.0, 1 / math.sqrt(2), -1.0]
    assert semantic_similarity(answers, refs) == pytest.approx(expected, abs=1e-6)


def test_semantic_similarity_refuses_mismatched_shapes():
    with pytest.raises(ValueError):
        semantic_similarity(torch.zeros(3, 4), torch.zeros(2, 4))


def test_ranking_mrr_for_a_known_three_by_three_case():
    refs = torch.eye(3)
    # answer 0 is closest to ref 0 (rank 1); answer 1 is closest to ref 0, then ref 1 (rank 2);
    # answer 2 prefers ref 0, then ref 1, then its own ref 2 (rank 3).
    answers = torch.tensor([[1.0, 0.1, 0.0],
                            [0.9, 0.5, 0.0],
                            [0.9, 0.5, 0.2]])
    result = ranking(answers, refs)
    assert result["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3, abs=1e-6)
    assert result["recall_at_1"] == pytest.approx(1 / 3, abs=1e-6)


def test_ranking_breaks_ties_pessimistically():
    # Every answer is equally close to all references: each ranks last of 3.
    refs = torch.eye(3)
    answers = torch.ones(3, 3)
    result = ranking(answers, refs)
    assert result["mrr"] == pytest.approx(1 / 3, abs=1e-6)
    assert result["recall_at_1"] == 0.0


def test_rouge_l_of_two_six_word_sentences():
    # LCS of "the cat sat on the mat" / "the cat is on the mat" = the cat on the mat = 5.
    # P = R = 5/6, so F1 = 5/6.
    assert rouge_l_f1("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)


def test_rouge_l_with_unequal_lengths_uses_the_f_measure():
    # candidate 2 words, reference 4 words, LCS 2: P = 1, R = 1/2, F1 = 2/3.
    assert rouge_l_f1("you matter", "you really do matter") == pytest.approx(2 / 3)


def test_rouge_l_is_zero_for_empty_or_disjoint_text():
    assert rouge_l_f1("", "anything at all") == 0.0
    assert rouge_l_f1("alpha beta", "gamma delta") == 0.0


def test_rouge_tokens_lowercase_and_split_on_non_alphanumerics():
    assert rouge_tokens("Don't PANIC, it's 3am!") == ["don", "t", "panic", "it", "s", "3am"]


def test_perplexity_is_exp_of_mean_nll():
    assert perplexity(2 * math.log(4), 2) == pytest.approx(4.0)


def test_perplexity_refuses_zero_tokens():
    with pytest.raises(ValueError):
        perplexity(1.0, 0)


def test_distinct_n_counts_unique_ngrams_over_all_texts():
    texts = ["I feel sad", "I feel better"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)     # i, feel, sad, better
    # bigrams: (i feel) twice, (feel sad), (feel better)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)


def test_distinct_n_exposes_a_degenerate_loop():
    assert distinct_n(["lose lose lose lose"], 1) == pytest.approx(1 / 4)


def test_repetition_rate_of_a_loop_and_of_varied_text():
    assert repetition_rate("lose lose lose lose lose") == pytest.approx(2 / 3)
    assert repetition_rate("one two three four five") == 0.0
    assert repetition_rate("too short") == 0.0


def test_mean_length_and_stop_rate():
    # 2 and 4 words; 7 and 19 characters; one of two stopped on its own.
    result = mean_length_and_stop_rate(["one two", "three four five six"], [True, False])
    assert result == {"mean_words": 3.0, "mean_chars": 13.0, "stop_rate": 0.5}
