"""Building blocks of the evaluation (evaluate.py puts them together).

    (the sentence encoder, all-MiniLM-L6-v2, lives in model/: model.minilm, model.bert,
    model.tokenizer.wordpiece; the safety classifier shares it)
    metrics.py    semantic similarity, ranking (MRR, recall@1), ROUGE-L, perplexity,
                  distinct-n, repetition, answer length and stop rate, and the seed report's
                  all-token-pairs cosine for comparison
    judge.py      an optional LLM-as-judge on any OpenAI-compatible endpoint
                  (import it from evaluation.judge; it needs the `openai` package)
"""

from evaluation.metrics import (distinct_n, mean_length_and_stop_rate, perplexity, ranking,
                                repetition_rate, rouge_l_f1, seed_token_cosine,
                                semantic_similarity)
from model.minilm import SentenceEncoder, load_sentence_encoder

__all__ = ["SentenceEncoder", "load_sentence_encoder", "distinct_n", "mean_length_and_stop_rate",
           "perplexity", "ranking", "repetition_rate", "rouge_l_f1", "seed_token_cosine",
           "semantic_similarity"]
