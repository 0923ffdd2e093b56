"""Risk detection over a whole conversation, explained by the phrases it matched.

    conversation --user turns only--> each turn scanned with the lexicon (lexicon.py)
                 --combine across turns--> level ("none" | "concern" | "crisis") + categories

Combining is what catches risk that no single message shows. "I just lost my job" is sad, and
"which bridges in NYC are taller than 25 meters?" is a tourist's question; together, in one
message or three turns apart, they are method-seeking after a loss. The rules:

    any crisis pattern                                  -> crisis
    method-seeking + (a loss, or any distress)          -> crisis (suicidal_ideation)
    a weapon + anger at someone ("make him pay")        -> crisis (harm_to_others)
    a wish to be with someone + that person's death     -> crisis (suicidal_ideation)
    preparation (giving things away, goodbye letters)
        + other distress or a loss                      -> crisis (suicidal_ideation)
    distress alone, or a negated crisis phrase          -> concern
    a crisis phrase told as over ("ten years clean now",
        "after my attempt in 2015 I got help")          -> concern (unless it is back: "again")

Then the trained classifier (learned.py; on by default, see DEFAULT) reads the latest user turns; the final
level is the higher of the two. It can raise the lexicon's level, never lower it, and the
explanation keeps the lexicon's phrases and adds the classifier's score and threshold.

Assistant turns are not the person's risk and are not scanned here (screen.py checks them).
A long message is scanned in windows of sentences (_WINDOW_CHARS), never cut short.
"""

import re
from dataclasses import asdict, dataclass, field
from typing import Callable

from .categories import LEVELS
from .errors import SafetyError
from .lexicon import ALL_PATTERNS
from .text import clause_before, is_negated, normalize, windows
from .words import FICTION, HYPERBOLE, META, helping_others, is_resolved

# How far past a match to look for words that say it was an accident or a joke ("... lol").
_SUPPRESS_TAIL = 40
# A message longer than this is scanned in windows of whole sentences (overlapping by
# _WINDOW_OVERLAP), so the work stays linear in its length: a 1 MB message takes seconds.
_WINDOW_CHARS = 4000
_WINDOW_OVERLAP = 400
# A risk phrase about the speaker ("I want to die", "hurting myself") is never someone else's.
_FIRST_PERSON = re.compile(r"\b(?:i|i'm|im|i've|i'd|i'll|me|my|myself|mine)\b")


@dataclass
class Match:
    category: str        # e.g. "suicidal_ideation"; "distress" for concern without a risk category
    phrase: str          # the words matched, as written
    message_index: int   # position in the conversation list (0 for a plain string)
    pattern: str         # the lexicon pattern's name, e.g. "si.coded_kms"
    level: str = "crisis"  # what this match alone says; "signal" when it only counts combined


@dataclass
class SafetyResult:
    level: str = "none"
    categories: list[str] = field(default_factory=list)
    matches: list[Match] = field(default_factory=list)
    classifier: dict | None = None  # {"score", "threshold", "scope"} when the classifier ran

    @property
    def is_crisis(self) -> bool:
        return self.level == "crisis"

    def to_dict(self) -> dict:
        out = {"level": self.level, "categories": list(self.categories),
               "matches": [asdict(m) for m in self.matches]}
        if self.classifier is not None:
            out["classifier"] = dict(self.classifier)
        return out


# A classifier takes the user turns (oldest first) and returns None, (level, categories), or a
# learned.Verdict (which also carries its score and threshold). It can only RAISE the level the
# lexicon found, never lower it. classifier=DEFAULT asks the shipped one
# (learned.default_classifier); chat, the server, synth and evaluate all use it unless the
# environment variable below is 0. Without torch or the MiniLM package, it is off after one
# warning line and the lexicon checks alone.
Classifier = Callable[[list[str]], "tuple[str, list[str]] | None"]
DEFAULT = "default"
CLASSIFIER_ENV = "LLAMACARE_SAFETY_CLASSIFIER"


def default_choice() -> str | None:
    """DEFAULT (lexicon + classifier) unless LLAMACARE_SAFETY_CLASSIFIER=0 (the lexicon alone)."""
    import os
    return None if os.environ.get(CLASSIFIER_ENV, "").strip() == "0" else DEFAULT


def user_turns(conversation) -> list[tuple[int, str]]:
    """(index, text) for each user message; a plain string is one user message at index 0."""
    if isinstance(conversation, str):
        return [(0, conversation)]
    if not isinstance(conversation, (list, tuple)):
        raise SafetyError(f"conversation must be a string or a list of {{'role', 'content'}} "
                          f"messages, not {type(conversation).__name__}.")
    turns = []
    for i, message in enumerate(conversation):
        if not isinstance(message, dict) or "role" not in message:
            raise SafetyError(f"conversation message {i} must be a dict with 'role' and "
                              f"'content' keys; got {message!r:.60}.")
        if message["role"] == "user":
            turns.append((i, _content_text(message.get("content"), i)))
    return turns


def _content_text(content, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI-style parts: [{"type": "text", "text": "..."}]
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise SafetyError(f"conversation message {index} has 'content' of type "
                      f"{type(content).__name__}; use a string.")


def scan_message(text: str, index: int) -> list[Match]:
    """Every lexicon hit in one message, with negation, fiction, accident and tense checks
    applied; a long message is scanned a window of sentences at a time."""
    if len(text) > _WINDOW_CHARS:
        return [m for part in windows(text, _WINDOW_CHARS, _WINDOW_OVERLAP)
                for m in _scan(part, index)]
    return _scan(text, index)


def _scan(text: str, index: int) -> list[Match]:
    norm = normalize(text)
    resolved = is_resolved(norm)  # "I self-harmed in school, ten years clean now"
    helping = helping_others(norm)  # "how do you ask someone if they're thinking about suicide"
    in_fiction = FICTION.search(norm) is not None
    found = []
    for pattern in ALL_PATTERNS:
        if pattern.skip_in_fiction and in_fiction:
            continue
        for m in pattern.regex.finditer(norm):
            start, end = m.span()
            around = clause_before(norm, start) + norm[start:end + _SUPPRESS_TAIL]
            if pattern.suppress is not None and pattern.suppress.search(around):
                continue
            if pattern.meta_ok and META.search(norm[max(0, start - 80):start]):
                continue
            level, name = pattern.level, pattern.name
            if pattern.negatable and is_negated(norm, start):
                level, name = pattern.negated_level, name + ".negated"
            elif pattern.calm is not None and pattern.calm.search(around):
                level, name = "concern", name + ".past"
            elif level == "crisis" and resolved:
                level, name = "concern", name + ".resolved"
            elif level == "crisis" and helping and not _FIRST_PERSON.search(m.group(0)):
                level, name = "concern", name + ".helping"
            elif (level == "crisis" and pattern.category in ("suicidal_ideation", "self_harm")
                  and HYPERBOLE.search(clause_before(norm, start) or norm[:start])):
                level, name = "concern", name + ".hyperbole"
            if level == "none":
                continue
            found.append(Match(pattern.category, text[start:end].strip(), index, name, level))
    return found


FROM_ENV = "from-env"  # the default of detect() and guard_reply(): default_choice() decides


def detect(conversation, classifier: Classifier | str | None = FROM_ENV) -> SafetyResult:
    """How much risk the person's messages show, and why.

    conversation: a string, or a list of {"role", "content"} messages (only "user" turns count;
    a conversation without one has no risk to find: level "none").
    classifier: DEFAULT (the shipped classifier, when it can run here), None (the lexicon
    alone), or any `Classifier`; left out, DEFAULT unless LLAMACARE_SAFETY_CLASSIFIER=0. The
    lexicon result stands unless the classifier reports a higher level.
    """
    if classifier == FROM_ENV:
        classifier = default_choice()
    turns = user_turns(conversation)
    hits = [m for index, text in turns for m in scan_message(text, index)]
    reported = _combine(hits)
    if classifier == DEFAULT:
        from .learned import default_classifier  # torch is imported only when it is used
        classifier = default_classifier()
    verdict = None
    if classifier is not None and turns:
        verdict = classifier([text for _, text in turns])
        reported += _classifier_matches(verdict, turns, reported)
    result = _result(reported)
    if verdict is not None and hasattr(verdict, "to_dict"):
        result.classifier = verdict.to_dict()
    return result


def _combine(hits: list[Match]) -> list[Match]:
    """Apply the cross-turn rules; returns the matches that explain the final level."""
    crisis = [m for m in hits if m.level == "crisis"]
    concern = [m for m in hits if m.level == "concern"]
    method = [m for m in hits if m.category == "method_seeking"]
    loss = [m for m in hits if m.category == "loss"]
    deaths = [m for m in loss if m.pattern == "loss.death"]
    reunion = [m for m in hits if m.category == "reunion"]
    weapons = [m for m in method if m.pattern in ("ms.weapon", "ms.means")]
    anger = [m for m in concern if m.category == "harm_to_others"]
    preparation = [m for m in concern if m.pattern.startswith("prep.")]
    distress = [m for m in concern if m not in preparation and m not in anger]

    raised = []  # signals and concerns that became crisis in combination
    if weapons and anger:  # "I'll make him pay" + "I've got my dad's gun"
        raised += _as_crisis(anger + weapons, "harm_to_others")
        concern = [m for m in concern if m not in anger]
    if method and (loss or distress or preparation):  # a loss, then tall bridges
        raised += _as_crisis(method, "suicidal_ideation") + loss
    if reunion and deaths:  # "my son died" ... "I just want to be with him again"
        raised += _as_crisis(reunion, "suicidal_ideation") + deaths
    if preparation and (distress or loss):  # giving things away + "nothing matters"
        raised += _as_crisis(preparation, "suicidal_ideation") + loss
        concern = [m for m in concern if m not in preparation]
    return _dedupe(crisis + raised + concern)


def _as_crisis(matches: list[Match], category: str) -> list[Match]:
    return [Match(category, m.phrase, m.message_index, m.pattern, "crisis") for m in matches]


def _dedupe(matches: list[Match]) -> list[Match]:
    """One match per phrase: repeats go, and so does a phrase inside a longer one at its level
    ("killing myself" inside "thinking about killing myself")."""
    seen, unique = set(), []
    for m in matches:
        key = (m.category, m.phrase.lower(), m.message_index, m.pattern)
        if key not in seen:
            seen.add(key)
            unique.append(m)
    kept = [m for m in unique if not any(
        n is not m and n.message_index == m.message_index and n.level == m.level and
        len(n.phrase) > len(m.phrase) and m.phrase.lower() in n.phrase.lower() for n in unique)]
    return sorted(kept, key=lambda m: (m.message_index, -_rank(m.level)))


def _rank(level: str) -> int:
    return LEVELS.index(level) if level in LEVELS else -1


def _result(matches: list[Match]) -> SafetyResult:
    level = max((m.level for m in matches if m.level in LEVELS), key=_rank, default="none")
    categories = []
    for wanted in ("crisis", "concern"):  # risk categories first, then plain distress
        for m in matches:
            if m.level == wanted and m.category not in categories:
                categories.append(m.category)
    return SafetyResult(level, categories, matches)


def _classifier_matches(verdict, turns, reported: list[Match]) -> list[Match]:
    """The matches that explain a classifier's higher level (none when it is not higher)."""
    if verdict is None:
        return []
    if isinstance(verdict, tuple):
        (level, categories), index = verdict, turns[-1][0]
    else:  # a learned.Verdict: it says which turn its highest score ended at
        level, categories, index = verdict.level, verdict.categories, turns[verdict.turn][0]
    if level not in LEVELS:
        raise SafetyError(f"the classifier returned level {level!r}; use one of {LEVELS}.")
    current = max((_rank(m.level) for m in reported), default=0)
    if _rank(level) <= current:
        return []
    return [Match(c, "", index, "classifier", level) for c in (categories or ["distress"])]
