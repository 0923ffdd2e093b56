"""The safety layer: the fine-tuned model alone is not trusted with people who may be in danger.

    detect(conversation)      -> SafetyResult   risk in the person's turns (detect.py, lexicon.py)
    crisis_response(result)   -> str            fixed reply with local crisis lines (respond.py)
    screen_output(text, conv) -> ScreenResult   the model's answer checked before it is shown
    guard_reply(conversation) -> (str | None, SafetyResult)   the crisis path for a chat turn
    row_is_safe(instr, input, output)                          a check for synthetic data rows
    SYSTEM_PROMPT, DISCLAIMER                                  the boundaries, as text

Standard library only: light tools (data checks, the CLI) use it without torch.
Try it: python -m safety "I lost my job. Which bridges in NYC are taller than 25 meters?"
"""

from .categories import LEVELS, RISK_CATEGORIES
from .detect import Classifier, Match, SafetyResult, detect
from .errors import SafetyError
from .guard import guard_reply, row_is_safe
from .prompts import DISCLAIMER, SYSTEM_PROMPT
from .respond import crisis_pending, crisis_response, has_crisis_support, locales
from .screen import ScreenResult, screen_output

__all__ = [
    "LEVELS", "RISK_CATEGORIES", "Classifier", "Match", "SafetyResult", "detect", "SafetyError",
    "guard_reply", "row_is_safe", "DISCLAIMER", "SYSTEM_PROMPT", "crisis_pending",
    "crisis_response", "has_crisis_support", "locales", "ScreenResult", "screen_output",
]
