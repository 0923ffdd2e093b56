"""The evaluation's metrics, as small pure functions. Each docstring gives its formula.

Embedding metrics take vectors from model.minilm (one row per text); they normalise the
rows themselves, so raw vectors work too. Text metrics take plain strings.

Two word tokenisations are used, each said where it is used:
  - ROUGE-L follows the common `rouge-score` package: lowercase, every run of characters
    other than a-z and 0-9 becomes a space, split on spaces ("Don't!" -> ["don", "t"];
    letters outside ASCII are dropped, as there).
  - distinct-n and the repetition rate count words as lowercase runs of Unicode letters,
    digits and underscore (regex \\w+), so text in any script is counted.
"""

import math
import re

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------- embeddings
def seed_token_cosine(h_a: torch.Tensor, h_b: torch.Tensor) -> float:
    """The seed report's column: mean cosine over ALL token pairs of two hidden-state matrices.

        score = 1/(Ta*Tb) * sum_i sum_j cos(a_i, b_j)

    with a_i the rows of h_a (Ta, D) and b_j the rows of h_b (Tb, D).

    Kept to reproduce that column and show why it carried no signal: averaging every pair
    mixes each token with all unrelated ones, so the result sits near the mean similarity of
    any two tokens of the model, whatever the texts say.
    """
    a = F.normalize(h_a.float(), dim=-1)                   # (Ta, D) unit rows
    b = F.normalize(h_b.float(), dim=-1)                   # (Tb, D)
    return (a @ b.T).mean().item()                         # (Ta, Tb) cosines -> mean


def semantic_similarity(emb_answers: torch.Tensor, emb_refs: torch.Tensor) -> list[float]:
    """Row-wise cosine: sim_i = a_i . r_i / (|a_i| |r_i|), one value per (answer, reference)."""
    _check_pairs(emb_answers, emb_refs)
    a = F.normalize(emb_answers.float(), dim=-1)           # (N, D)
    r = F.normalize(emb_refs.float(), dim=-1)              # (N, D)
    return (a * r).sum(dim=-1).tolist()


def ranking(emb_answers: torch.Tensor, emb_refs: torch.Tensor) -> dict:
    """Can each answer find its own reference among all N references?

    S = cosine matrix (N, N), S[i, j] = cos(answer_i, reference_j). The rank of answer i is

        rank_i = 1 + #{ j != i : S[i, j] >= S[i, i] }

    so a tie with a wrong reference counts against the answer (pessimistic): an answer that
    says nothing in particular and ties with everything ranks last, not first.

        mrr         = mean_i 1 / rank_i
        recall_at_1 = mean_i [rank_i == 1]
    """
    _check_pairs(emb_answers, emb_refs)
    a = F.normalize(emb_answers.float(), dim=-1)           # (N, D)
    r = F.normalize(emb_refs.float(), dim=-1)              # (N, D)
    S = a @ r.T                                            # (N, N)
    own = S.diagonal().unsqueeze(1)                        # (N, 1) each answer's own score
    at_least_as_good = (S >= own).sum(dim=1) - 1           # (N,) minus the diagonal itself
    ranks = (1 + at_least_as_good).float()
    return {"mrr": (1.0 / ranks).mean().item(), "recall_at_1": (ranks == 1).float().mean().item()}


def _check_pairs(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(f"expected two non-empty (N, D) tensors of the same shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")


# ---------------------------------------------------------------------- ROUGE-L
def rouge_tokens(text: str) -> list[str]:
    """rouge-score's tokenisation: lowercase, non [a-z0-9] runs -> space, split."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _lcs_length(x: list[str], y: list[str]) -> int:
    # Classic dynamic programme, one row at a time: prev[j] = LCS of x[:i-1] and y[:j].
    prev = [0] * (len(y) + 1)
    for xi in x:
        cur = [0]
        for j, yj in enumerate(y, start=1):
            cur.append(prev[j - 1] + 1 if xi == yj else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l_f1(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1) over rouge_tokens words.

        P = LCS / len(candidate)     R = LCS / len(reference)     F1 = 2 P R / (P + R)

    0 when either text has no tokens or they share no word in order.
    """
    c, r = rouge_tokens(candidate), rouge_tokens(reference)
    if not c or not r:
        return 0.0
    lcs = _lcs_length(c, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


# ---------------------------------------------------------------------- language modelling
def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(total_nll / n_tokens), with total_nll the summed negative log-likelihood in nats."""
    if n_tokens <= 0:
        raise ValueError(f"perplexity needs at least one token, got n_tokens={n_tokens}")
    return math.exp(total_nll / n_tokens)


# ---------------------------------------------------------------------- degeneration
def words(text: str) -> list[str]:
    """Lowercase \\w+ runs: the word tokens of distinct_n and repetition_rate."""
    return re.findall(r"\w+", text.lower())


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Corpus-level distinct-n: unique n-grams / all n-grams, over all texts together.

    1.0 means no n-gram is ever reused; "lose lose lose lose" has distinct-1 = 1/4.
    0.0 when the texts hold no n-gram at all.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    grams = [g for t in texts for g in _ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of word n-grams (3-grams by default) that repeat an earlier one in the same text.

        rate = (#n-grams - #distinct n-grams) / #n-grams

    0.0 for varied text (or fewer than n words); "lose lose lose lose lose" has three 3-grams,
    all ("lose", "lose", "lose"), so the rate is 2/3, and it tends to 1 as the loop goes on.
    """
    grams = _ngrams(words(text), n)
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def mean_length_and_stop_rate(answers: list[str], stopped_flags: list[bool]) -> dict:
    """How long the answers are and how many ended on their own.

        mean_words = mean_i len(words(answer_i))      mean_chars = mean_i len(answer_i)
        stop_rate  = share of answers whose generation emitted a stop token (rather than
                     running into the length limit)
    """
    if len(answers) != len(stopped_flags):
        raise ValueError(f"{len(answers)} answers but {len(stopped_flags)} stop flags")
    if not answers:
        return {"mean_words": 0.0, "mean_chars": 0.0, "stop_rate": 0.0}
    n = len(answers)
    return {"mean_words": sum(len(words(a)) for a in answers) / n,
            "mean_chars": sum(len(a) for a in answers) / n,
            "stop_rate": sum(bool(s) for s in stopped_flags) / n}
