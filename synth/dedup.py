"""Near-duplicate detection for generated messages: word-shingle Jaccard similarity.

A message is normalised (lower case, punctuation dropped, whitespace collapsed) and cut into
shingles: every run of SHINGLE_WORDS consecutive words. Two messages are near-duplicates when

    |shingles(a) & shingles(b)| / |shingles(a) | shingles(b)|  >=  threshold

Two messages written independently about the same topic share almost no 3-word runs (Jaccard
well under 0.1); the same message with a few words changed shares most of them. The default
threshold of 0.5 sits between the two. An inverted index (shingle -> messages holding it) means
a new message is compared only with messages it shares a shingle with, so the check stays exact
without being quadratic in practice.
"""

import re
from collections import defaultdict

SHINGLE_WORDS = 3
DEFAULT_THRESHOLD = 0.5


def normalise(text: str) -> list[str]:
    """Lower-case words with punctuation removed: "I can't sleep!!" -> ["i", "cant", "sleep"]."""
    text = re.sub(r"['\u2019]", "", text.lower())  # can't -> cant, not can t
    return re.sub(r"[^\w\s]", " ", text).split()


def shingles(text: str, size: int = SHINGLE_WORDS) -> set[tuple[str, ...]]:
    words = normalise(text)
    if len(words) <= size:  # a very short message is one shingle: itself
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + size]) for i in range(len(words) - size + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0  # two empty messages are the same message
    return len(a & b) / len(a | b)


class NearDuplicateIndex:
    """The messages kept so far; find(text) names one that `text` nearly duplicates."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD):
        self.threshold = threshold
        self._sets: dict[str, set] = {}                            # id -> its shingles
        self._holders: dict[tuple, list[str]] = defaultdict(list)  # shingle -> ids holding it

    def find(self, text: str) -> tuple[str, float] | None:
        """(id, similarity) of the most similar kept message at or over the threshold, else None."""
        new = shingles(text)
        shared: dict[str, int] = defaultdict(int)
        for shingle in new:
            for other in self._holders.get(shingle, ()):
                shared[other] += 1
        best = None
        for other, overlap in shared.items():
            similarity = overlap / (len(new) + len(self._sets[other]) - overlap)
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (other, similarity)
        return best

    def add(self, row_id: str, text: str) -> None:
        self._sets[row_id] = shingles(text)
        for shingle in self._sets[row_id]:
            self._holders[shingle].append(row_id)
