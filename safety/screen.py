"""Output screening: check what the model wrote before the person sees it.

Three kinds of text are never shown, whatever the conversation:

    method_information   means or method details (heights of bridges, how to tie a noose,
                         how many pills, lethal amounts, train times)
    medication_dose      a medicine with a dose or count ("50mg of sertraline", "two Xanax"),
                         or advice to start, stop or change one
    diagnosis            a diagnosis stated as fact ("you have depression", "this is clearly PTSD")

and, when the conversation is given, a reply that ignores a crisis (no safety question, no crisis
line) is replaced too (`ignores_crisis`). Benign mentions pass: "a doctor can talk with you
about whether medication might help", "many people with depression find ...".

A failing text is replaced by a safe reply and the event is logged on the "safety" logger with
the reasons and pattern names only: the text itself may be private and is not logged.
"""

import logging
import re
from dataclasses import asdict, dataclass, field

from .detect import Match, SafetyResult, detect
from .respond import crisis_pending, crisis_response, has_crisis_support
from .text import clause_before, normalize, sentence_around
from .words import STRUCTURE

log = logging.getLogger("safety")
log.addHandler(logging.NullHandler())  # a library logs; the application decides where it goes

# Psychiatric and common over-the-counter medicines, generic and brand names.
MEDS = (r"(?:sertraline|zoloft|fluoxetine|prozac|escitalopram|lexapro|citalopram|celexa|"
        r"paroxetine|paxil|venlafaxine|effexor|duloxetine|cymbalta|bupropion|wellbutrin|"
        r"mirtazapine|remeron|trazodone|amitriptyline|nortriptyline|lithium|quetiapine|seroquel|"
        r"olanzapine|zyprexa|aripiprazole|abilify|risperidone|risperdal|lamotrigine|lamictal|"
        r"valproate|depakote|alprazolam|xanax|lorazepam|ativan|diazepam|valium|clonazepam|"
        r"klonopin|zolpidem|ambien|zopiclone|melatonin|adderall|ritalin|methylphenidate|"
        r"vyvanse|propranolol|hydroxyzine|buspirone|gabapentin|pregabalin|lyrica|"
        r"acetaminophen|paracetamol|tylenol|ibuprofen|advil|motrin|aspirin|naproxen|"
        r"diphenhydramine|benadryl|oxycodone|codeine|tramadol|fentanyl|morphine|hydrocodone)")
MED_CLASS = (r"(?:medication|medications|meds|medicine|antidepressants?|ssris?|snris?|benzos?|"
             r"benzodiazepines?|sleeping pills|sleeping tablets|pills|tablets|dose|dosage|"
             r"antipsychotics?|stimulants?|mood stabili[sz]ers?)")
DOSE_UNIT = r"(?:mg|mcg|µg|g|grams?|milligrams?|micrograms?|ml|tablets?|pills?|capsules?)"
COUNT = (r"(?:one|two|three|four|five|six|seven|eight|nine|ten|a couple(?: of)?|a few|half (?:a|"
         r"of)|a handful of|\d+)")
DISORDER = (r"(?:(?:clinical |major |severe |mild |moderate |chronic )?depression|major "
            r"depressive disorder|depressive disorder|bipolar(?: disorder| [12i]+)?|c-?ptsd|ptsd|"
            r"post[- ]traumatic stress(?: disorder)?|adhd|ocd|obsessive[- ]compulsive disorder|"
            r"bpd|borderline(?: personality disorder)?|(?:an? )?(?:\w+ )?personality disorder|"
            r"(?:an? )?anxiety disorder|generali[sz]ed anxiety(?: disorder)?|social anxiety "
            r"disorder|panic disorder|schizophrenia|schizoaffective disorder|psychosis|"
            r"(?:an? )?eating disorder|anorexia(?: nervosa)?|bulimia(?: nervosa)?|binge[- ]eating "
            r"disorder|autism|asperger'?s|dissociative identity disorder|narcissistic "
            r"personality disorder|seasonal affective disorder|postpartum depression|dysthymia|"
            r"insomnia disorder|a mental illness|a mental disorder)")
LABEL = (r"(?:bipolar|schizophrenic|psychotic|anorexic|bulimic|autistic|borderline|a narcissist|"
         r"narcissistic|clinically depressed|manic|obsessive[- ]compulsive|ocd|adhd|mentally ill|"
         r"a sociopath|a psychopath)")


@dataclass(frozen=True)
class Rule:
    name: str
    reason: str
    regex: re.Pattern
    refusal_ok: bool = True    # "I can't share lethal doses" mentions the words but gives nothing
    hedge_ok: bool = False     # "whether you have depression" / questions are not diagnoses


def _r(name, reason, regex, **options) -> Rule:
    return Rule(name, reason, re.compile(regex), **options)


RULES = [
    # --- method or means -------------------------------------------------------------------
    _r("method.structure_height", "method_information",
       r"\b" + STRUCTURE + r"\b[^.!?\n]{0,60}?\b\d[\d,.]* ?(?:m|meters?|metres?|feet|ft|foot|"
       r"stories|storeys|floors)\b|\b\d[\d,.]* ?(?:m|meters?|metres?|feet|ft|foot|stories|storeys|"
       r"floors)\b[^.!?\n]{0,40}?\b(?:tall|high|drop|above the (?:water|ground|river|street))\b"),
    _r("method.tallest_list", "method_information",
       r"\b(?:tallest|highest|deadliest) (?:\w+ )?" + STRUCTURE + r"\b"),
    _r("method.noose", "method_information",
       r"\b(?:noose|slip ?knot|hangman'?s knot)\b|\b(?:tie|loop|attach|secure|fasten) (?:the|a|"
       r"your) (?:rope|cord|belt|ligature)\b|\bligature\b"),
    _r("method.lethal_amount", "method_information",
       r"\b(?:lethal|fatal|deadly|toxic|overdose) (?:dose|dosage|amount|quantity|level|"
       r"threshold)s?\b|\bld ?50\b|\b(?:\d+|a whole bottle|the whole bottle|an entire bottle)"
       r"[^.!?\n]{0,40}?\b(?:would|will|could|can|is enough to|are enough to) (?:kill|be fatal|be "
       r"lethal|stop (?:your|the|a) heart|cause death)\b|\benough (?:pills|tablets|medication|"
       r"of (?:it|them)) to (?:die|kill|be fatal|overdose)\b"),
    _r("method.how_many_pills", "method_information",
       r"\b(?:take|taking|swallow|swallowing) (?:about |around |at least |more than )?(?:\d{2,}|"
       r"twenty|thirty|forty|fifty|a whole bottle|the whole bottle|an entire bottle|all (?:of )?"
       r"(?:the|your)) (?:\w+ )?(?:pills|tablets|capsules)\b"),
    _r("method.instructions", "method_information",
       r"\b(?:cut|slit|slice) (?:deep(?:er)?|vertically|lengthwise|along (?:the )?(?:vein|artery|"
       r"wrist)|across the (?:wrist|vein))\b|\b(?:carbon monoxide|exhaust fumes|charcoal "
       r"burning|helium|nitrogen) (?:is|works|in a|bag|hood|tent|poisoning (?:is|takes))\b|"
       r"\b(?:painless|quickest|fastest|easiest|surest) (?:way|method)s? (?:to|of) (?:die|"
       r"dying|suicide)\b|\bterminal velocity\b|\bsurviv\w+ (?:a|the) (?:fall|jump) from\b"),
    _r("method.trains_weapons", "method_information",
       r"\btrains? (?:pass|passes|arrive|arrives|run|runs|come|comes|leave|leaves) (?:\w+ ){0,3}?"
       r"(?:every|at|around) \d|\b(?:buy|get|purchase) (?:a )?(?:gun|firearm|handgun|rifle) "
       r"(?:at|from|"
       r"online|without)\b|\b(?:gun|firearm) (?:stores?|shops?) (?:near|in|on)\b"),
    # --- medicines ----------------------------------------------------------------------------
    _r("med.dose_after_name", "medication_dose",
       r"\b" + MEDS + r"\b[^.!?\n]{0,30}?\b\d+(?:\.\d+)? ?" + DOSE_UNIT + r"\b"),
    _r("med.dose_before_name", "medication_dose",
       r"\b\d+(?:\.\d+)? ?" + DOSE_UNIT + r"\b (?:of )?(?:\w+ )?" + MEDS + r"\b"),
    _r("med.count", "medication_dose",
       r"\b" + COUNT + r" (?:of (?:your|the|my) )?" + MEDS + r"s?\b"),
    _r("med.advice", "medication_dose",
       r"\b(?:you should|you could|you can|you might want to|you need to|try|i'?d (?:recommend|"
       r"suggest)|i recommend|i suggest|it'?s (?:fine|okay|ok|safe) to|go ahead and) (?:\w+ ){0,2}?"
       r"(?:take|taking|start(?:ing)?|stop(?:ping)?|increase|increasing|double|doubling|reduce|"
       r"lower|up|skip|skipping|come off|quit|halve) (?:\w+ ){0,2}?(?:" + MEDS + r"|" +
       MED_CLASS + r")\b"),
    _r("med.take_imperative", "medication_dose",
       r"(?:^|[.!?]\s+|\n)(?:take|try) (?:a |an |some |one |two |\d+ )?" + MEDS + r"\b"),
    # --- diagnoses ----------------------------------------------------------------------------
    _r("dx.you_have", "diagnosis",
       r"\byou(?:'ve| have)? (?:(?:clearly|definitely|obviously|probably|most likely|certainly|"
       r"really) )?(?:got|have|are suffering from|'re suffering from|suffer from|show(?:ing)? "
       r"(?:all )?(?:the )?(?:classic )?(?:signs|symptoms) of|meet the criteria for|fit the "
       r"criteria for) (?:a |an |some |classic |full-blown )?" + DISORDER + r"\b",
       refusal_ok=False, hedge_ok=True),
    _r("dx.you_are", "diagnosis",
       r"\byou(?:'re| are) (?:(?:clearly|definitely|obviously|probably|most likely|certainly|"
       r"really|just|a bit|so) )?" + LABEL + r"\b", refusal_ok=False, hedge_ok=True),
    _r("dx.this_is", "diagnosis",
       r"\b(?:this|that|it|these|what you(?:'re| are)? describ\w*|your symptoms|what you(?:'ve| "
       r"have) (?:told|described|shared)(?: me)?)(?:'s| is| are| sounds? like| looks? like| "
       r"seems? like| indicates?| points? to| means)(?: you have)? (?:clearly |definitely |"
       r"obviously |textbook |classic |certainly |most likely |probably |almost certainly )?"
       r"(?:a (?:clear |classic |textbook )?case of |signs of |symptoms of )?" + DISORDER + r"\b",
       refusal_ok=False, hedge_ok=True),
    _r("dx.diagnose", "diagnosis",
       r"\b(?:your diagnosis is|i(?: can| would| will)? diagnose you|my diagnosis is|you(?:'ve| "
       r"have) been misdiagnosed)\b", refusal_ok=False),
]

# A refusal in the same clause: "I can't tell you the lethal dose" gives nothing away.
_REFUSAL = re.compile(r"\b(?:can'?t|cannot|won'?t|will not|not able to|unable to|don'?t|do not|"
                      r"never|not going to|not something i)\b")
# Hedges that turn a label into a question or a pointer to a professional.
_HEDGE = re.compile(r"\b(?:if|whether|wonder\w*|not sure|can'?t (?:tell|say|know)|cannot (?:tell|"
                    r"say)|only a (?:doctor|professional|clinician)|don'?t know|do you think|"
                    r"do you feel|have you (?:ever )?been told|were you told|ask (?:them|a doctor|"
                    r"your doctor)|rule out|doesn'?t mean|does not mean|not that)\b")

BOUNDARY_REPLY = (
    "I'm not able to give medical advice, suggest doses or tell you what diagnosis fits, and "
    "I don't want to guess about something this important. A doctor, pharmacist or "
    "mental-health professional can look at your situation properly and talk it through with "
    "you. I'm glad to keep listening, though. What's been going on for you?")


@dataclass
class ScreenResult:
    safe: bool
    reasons: list[str] = field(default_factory=list)
    matches: list[Match] = field(default_factory=list)  # category = reason, level = "unsafe"
    text: str = ""  # the original text when safe, else the safe replacement

    def to_dict(self) -> dict:
        return {"safe": self.safe, "reasons": list(self.reasons),
                "matches": [asdict(m) for m in self.matches], "text": self.text}


def find_problems(text: str) -> list[Match]:
    """The rule hits in an assistant text, after refusals and hedges are allowed for."""
    norm = normalize(text)
    found = []
    for rule in RULES:
        for m in rule.regex.finditer(norm):
            start, end = m.span()
            before = clause_before(norm, start)
            if rule.refusal_ok and _REFUSAL.search(before):
                continue
            if rule.hedge_ok and (_HEDGE.search(before) or
                                  sentence_around(norm, start, end).rstrip().endswith("?")):
                continue
            found.append(Match(rule.reason, text[start:end].strip(), 0, rule.name, "unsafe"))
    return found


def screen_output(text: str, conversation=None, locale: str = "US") -> ScreenResult:
    """Check an assistant text; `conversation` (the turns before it) enables `ignores_crisis`."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    matches = find_problems(text)
    reasons = list(dict.fromkeys(m.category for m in matches))
    detection = detect(conversation) if conversation is not None else SafetyResult()
    if crisis_pending(conversation, detection) and not has_crisis_support(text):
        reasons.append("ignores_crisis")
    if not reasons:
        return ScreenResult(True, [], [], text)

    if "ignores_crisis" in reasons or "method_information" in reasons:
        # Method talk is a risk sign in itself: answer it as a crisis, never with the details.
        shown = detection if detection.is_crisis else SafetyResult(
            "crisis", ["suicidal_ideation"], [])
        replacement = crisis_response(shown, locale)
    else:
        replacement = BOUNDARY_REPLY
    log.warning("assistant output replaced: reasons=%s patterns=%s", ",".join(reasons),
                ",".join(sorted({m.pattern for m in matches})) or "-")
    return ScreenResult(False, reasons, matches, replacement)

