"""The detection lexicon: named patterns, one risk idea each, written for this project.

Every pattern runs on normalised text (lower case, plain quotes; see text.py) and has a level:

    crisis   acute risk on its own ("I want to kill myself", "I took a whole bottle of pills")
    concern  distress without acute risk ("I feel worthless", "what's the point")
    signal   harmless alone, risky in combination (detect.py combines them across turns):
             "method_seeking" (tall bridges, train times) and "loss" (lost my job, she left me)

Patterns are kept narrow on purpose. Everyday speech uses violent words all the time ("this
deadline is killing me", "I could murder a pizza"), so a pattern names a person as the target,
or the speaker as the one at risk, instead of matching a bare verb like "kill".
"""

from .patterns_others import ABUSE, HARM_TO_OTHERS, MEDICAL
from .patterns_self import DISTRESS, SELF_HARM, SUICIDAL
from .patterns_signals import LOSS, METHOD_SEEKING
from .words import Pattern

ALL_PATTERNS: list[Pattern] = (SUICIDAL + SELF_HARM + HARM_TO_OTHERS + ABUSE + MEDICAL + DISTRESS
                               + METHOD_SEEKING + LOSS)
