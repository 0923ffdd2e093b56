"""Two conveniences that wire detection, the crisis path and screening together.

guard_reply runs before the model: in a crisis the caller shows the crisis response and does not
ask the model at all. row_is_safe checks one synthetic training row, so that the data teaching
the model never shows it giving methods, doses or diagnoses, or talking past a crisis.
"""

from .detect import FROM_ENV, Classifier, SafetyResult, detect
from .respond import crisis_pending, crisis_response, has_crisis_support
from .screen import screen_output


def guard_reply(conversation, locale: str = "US",
                classifier: Classifier | str | None = FROM_ENV) -> tuple[str | None, SafetyResult]:
    """(crisis response or None, detection result) for the conversation so far (the classifier
    as detect() chooses it unless one is given).

    The crisis response comes back while a crisis has not yet been answered with crisis
    support (see respond.crisis_pending); after that the model may answer again, guided by the
    system prompt and checked by screen_output.
    """
    result = detect(conversation, classifier=classifier)
    if crisis_pending(conversation, result):
        return crisis_response(result, locale), result
    return None, result


def row_is_safe(instruction: str, input: str, output: str) -> tuple[bool, dict]:  # noqa: A002
    """(safe?, details) for an instruction/input/output training row.

    Unsafe when the output fails screening, or when the instruction and input show a crisis and
    the output neither asks about safety nor gives a crisis line. (`input` is named after the
    row's field, shadowing the builtin inside this function only.)
    """
    prompt = "\n".join(part for part in (instruction or "", input or "") if part)
    detection = detect(prompt)
    screen = screen_output(output or "")
    reasons = list(screen.reasons)
    if detection.is_crisis and not has_crisis_support(output or ""):
        reasons.append("ignores_crisis")
    safe = not reasons
    return safe, {"safe": safe, "reasons": reasons, "input": detection.to_dict(),
                  "output_matches": screen.to_dict()["matches"]}
