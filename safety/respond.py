"""The crisis path: what the person sees instead of a model answer when detection says crisis.

The reply is fixed text, not generated: it is warm, asks directly about safety, and gives the
crisis lines for the person's locale from resources.json. It never mentions means or methods.
Wording follows the strongest category: abuse adds domestic-violence lines, a medical emergency
puts "call the emergency number now" first.
"""

import json
import re
from functools import lru_cache
from pathlib import Path

RESOURCES = Path(__file__).with_name("resources.json")
FALLBACK = "INTL"

_OPENINGS = {
    "medical_emergency": (
        "This sounds like a medical emergency. Please call {emergency} now, or ask someone near "
        "you to call for you. Even if you feel okay at the moment, some things people take or "
        "swallow do harm hours later, so please get help right away."),
    "suicidal_ideation": (
        "I'm really sorry you're hurting this much, and I'm glad you told me. You matter, and "
        "you don't have to carry this alone."),
    "self_harm": (
        "Thank you for telling me. It takes courage to talk about hurting yourself, and you "
        "deserve care and support, not judgement."),
    "harm_to_others": (
        "It sounds like you're dealing with a lot of anger or pain right now. Thank you for "
        "saying it out loud. Help is available for exactly this moment."),
    "abuse": (
        "I'm so sorry you're going through this. No one deserves to be hurt or threatened, and "
        "it is not your fault."),
    None: (
        "I'm really glad you reached out. It sounds like things are very hard right now, and "
        "you deserve support."),
}
_SAFETY_QUESTION = {
    "harm_to_others": ("Are you safe right now, and is everyone around you safe? If you can, put "
                       "some distance between yourself and the person or the situation."),
    "abuse": ("Are you safe right now? If you are in danger, call {emergency}. If it's not safe "
              "to talk, a text line or a quiet moment away from the other person may help."),
}
_ORDER = ("medical_emergency", "suicidal_ideation", "self_harm", "harm_to_others", "abuse")
_CLOSING = ("I'm here to keep talking with you, but I'm not a replacement for a person who can "
            "help right now. Is there someone you trust who could be with you?")


@lru_cache(maxsize=1)
def _data() -> dict:
    with open(RESOURCES, encoding="utf-8") as f:
        return json.load(f)


def locales() -> list[str]:
    """The locale codes with their own resources (aliases such as "UK" and "EU" also work)."""
    return list(_data()["locales"])


def resolve_locale(locale) -> tuple[str, bool]:
    """(code to use, True if it is a fallback). Accepts "gb", "en-GB", "en_US", "UK", None."""
    data = _data()
    if isinstance(locale, str) and locale.strip():
        code = locale.strip().upper().replace("_", "-").split("-")[-1]
        code = data["aliases"].get(code, code)
        if code in data["locales"]:
            return code, False
    return FALLBACK, True


def crisis_response(result=None, locale: str = "US") -> str:
    """The crisis reply for a detection result (a SafetyResult, its dict, or None), in `locale`.

    An unknown locale falls back to international resources with a note; it never raises.
    """
    code, fell_back = resolve_locale(locale)
    entry = _data()["locales"][code]
    present = _acute_categories(result)
    category = present[0] if present else None  # the wording follows the most urgent one
    emergency = entry["emergency"]

    parts = []
    if fell_back:
        parts.append(f"(I don't have local numbers for {str(locale)[:20]!r}, so here are "
                     f"international options.)")
    parts.append(_OPENINGS[category].format(emergency=emergency))
    parts.append(_SAFETY_QUESTION.get(category, "Are you safe right now?").format(
        emergency=emergency))
    wanted = {"crisis", "youth"}
    if "abuse" in present:
        wanted.add("abuse")
    if "medical_emergency" in present:
        wanted.add("medical")
    lines = [line for line in entry["lines"] if line["for"] in wanted]
    if category == "abuse":  # the domestic-violence lines first
        lines.sort(key=lambda line: line["for"] != "abuse")
    listing = "\n".join(f"- {line['name']}{' (for young people)' * (line['for'] == 'youth')}: "
                        f"{line['how']}" for line in lines)
    parts.append("You can reach someone right now, for free:\n" + listing)
    if category not in ("medical_emergency", "abuse"):  # those already named the number
        parts.append(f"If you are in immediate danger, call {emergency}.")
    parts.append(_CLOSING)
    return "\n\n".join(parts)


def _acute_categories(result) -> list[str]:
    """The result's risk categories, most urgent first; none for a concern-level result."""
    if result is None:
        return []
    if isinstance(result, dict):
        categories, level = result.get("categories", []), result.get("level")
    else:
        categories, level = result.categories, result.level
    if level == "concern":
        return []  # wording for acute risk would overstate it
    return [c for c in _ORDER if c in categories]


# --- does a reply already carry crisis support? ------------------------------------------------

_SUPPORT_WORDS = re.compile(
    r"\b(?:are you safe|your safety|keep yourself safe|crisis (?:line|text line|service|team)|"
    r"helpline|hotline|lifeline|samaritans|emergency (?:services|number|room|department)|"
    r"call (?:your local )?emergency|text home to|findahelpline|telefonseelsorge)\b", re.I)
_DIGIT_RUN = re.compile(r"(?<![\d,.])\d(?:[\d \-]*\d)?(?![\d,.])")


@lru_cache(maxsize=1)
def _resource_numbers() -> frozenset[str]:
    numbers = set()
    for entry in _data()["locales"].values():
        for line in entry["lines"]:
            numbers.update(re.sub(r"\D", "", n) for n in line["numbers"])
        numbers.update(re.findall(r"\d{2,}", entry["emergency"]))
    return frozenset(n for n in numbers if n)


def has_crisis_support(text: str) -> bool:
    """True when `text` asks about safety or names a crisis line or emergency number."""
    if _SUPPORT_WORDS.search(text):
        return True
    known = _resource_numbers()
    return any(re.sub(r"\D", "", run) in known for run in _DIGIT_RUN.findall(text))


def crisis_pending(conversation, result) -> bool:
    """True when a crisis in `result` has not been answered with crisis support yet.

    A conversation keeps its crisis level after the person is given resources (detection looks
    at every turn), but the chat must be able to go on: once an assistant turn after the last
    crisis message carried crisis support, the model may answer again.
    """
    if result.level != "crisis":
        return False
    if isinstance(conversation, str):
        return True
    last_crisis = max((m.message_index for m in result.matches if m.level == "crisis"),
                      default=-1)
    for message in conversation[last_crisis + 1:]:
        if isinstance(message, dict) and message.get("role") == "assistant" and \
                has_crisis_support(str(message.get("content") or "")):
            return False
    return True
