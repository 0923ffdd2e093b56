"""What the lexicon is built from: the Pattern record, shared word lists and context checks.

A Pattern is one named risk idea as a regular expression over normalised text (lower case, plain
quotes; see text.py). The word lists are regex alternations reused by several patterns, and the
context checks tell detect.py when a match is not about the speaker (a story, a game, a joke, an
accident, something long past).
"""

import re
from dataclasses import dataclass

# --- shared word lists (regex alternations) ------------------------------------------------

# People at home or close by: targets of harm, or the person who hurts.
RELATION = (r"(?:husband|wife|partner|boyfriend|girlfriend|bf|gf|fianc[eé]e?|ex|dad|father|"
            r"stepdad|stepfather|mom|mum|mother|stepmom|stepmum|stepmother|parents?|brother|"
            r"sister|uncle|aunt|grandfather|grandpa|grandmother|grandma|cousin|son|daughter|"
            r"kids?|child|children|baby|family|carer|caregiver|guardian|roommate|flatmate)")
OTHERS = (r"(?:him|her|them|you|someone|somebody|everyone|everybody|people|anyone|"
          r"my (?:\w+ )?(?:" + RELATION[3:-1] + r"|boss|teacher|neighbou?r|coworker|colleague|"
          r"classmates?|friend)|the (?:\w+ )?(?:baby|kids?|teacher|neighbou?rs?|boss|guy|man|"
          r"woman|bully|bullies|people|class|school))")
# Tall structures and places people are drawn to; harmless words on their own.
STRUCTURE = (r"(?:bridges?|buildings?|roofs?|rooftops?|towers?|cliffs?|parking (?:garages?|"
             r"structures?|decks?)|overpass(?:es)?|balcon(?:y|ies)|skyscrapers?|dams?|viaducts?|"
             r"ledges?)")
# Medicines and poisons that come up in overdose talk (kept short; the screen has the long list).
SUBSTANCE = (r"(?:pills|tablets|capsules|meds|medication|medicine|painkillers|sleeping pills|"
             r"paracetamol|tylenol|acetaminophen|ibuprofen|advil|aspirin|xanax|benadryl|"
             r"insulin|antidepressants|sertraline|melatonin|opioids|oxy(?:codone|contin)?|"
             r"fentanyl|heroin|alcohol|vodka)")


@dataclass(frozen=True)
class Pattern:
    name: str                 # reported with every match, e.g. "si.kill_myself"
    category: str             # suicidal_ideation, self_harm, ..., distress, method_seeking, loss
    level: str                # crisis | concern | signal
    regex: re.Pattern
    negatable: bool = False   # "I would never ..." lowers the level to negated_level
    negated_level: str = "concern"
    skip_in_fiction: bool = False          # not about the speaker when talking about a story/game
    suppress: re.Pattern | None = None     # the words around it show it is harmless (an accident)
    meta_ok: bool = False     # a question about the word itself ("what does kms mean") is no risk
    calm: re.Pattern | None = None         # the words around it show it is past: level -> concern


def make(name, category, level, regex, **options) -> Pattern:
    """A Pattern with its regex (and suppress/calm, when given as text) compiled."""
    for key in ("suppress", "calm"):
        if isinstance(options.get(key), str):
            options[key] = re.compile(options[key])
    return Pattern(name, category, level, re.compile(regex), **options)


# Phrases that show the message is about a story, a game or history, not the speaker's life.
# Kept specific: "my story" or "a history of depression" are often the speaker's own life.
FICTION = re.compile(
    r"\b(?:(?:in|from|for|of) (?:the|my|a|an|this|that|our|his|her) (?:\w+ )?(?:novel|story|book|"
    r"game|movie|film|show|series|episode|chapter|play|poem|script|screenplay|fanfic|comic|"
    r"manga|anime|podcast|documentary)|my (?:character|novel|screenplay|script|fanfic)|the "
    r"(?:main )?(?:character|characters|villain|hero|protagonist|antagonist|narrator|npc)|"
    r"i'?m (?:writing|reading|watching|playing)|(?:writing|reading|watching) (?:a|an|the|my) "
    r"(?:\w+ )?(?:novel|story|book|movie|film|show|series|script|screenplay|thriller|play|poem)|"
    r"boss fight|in-game|d&d|dnd|rpg|fortnite|minecraft|call of duty|elden ring|zelda|"
    r"mario(?: kart)?|pokemon|skyrim|among us|world war|wwii|ww2|medieval|ancient|historical|"
    r"in history|century|shakespeare|macbeth|hamlet|romeo and juliet|breaking bad|true crime|"
    r"chess|tournament|opponent)\b")
# Talking about a word rather than using it: "why do people say 'kms'", "what does unalive mean".
META = re.compile(r"\b(?:what does|what do|what is|what's|why do people|people say|say|saying|"
                  r"the word|the term|stands? for|meaning of|definition of)\W*$")
# Jokes and obvious hyperbole, used only to calm threats against others ("I'll kill him lol").
JOKING = r"\b(?:lol|lmao|lmfao|haha\w*|jk|just kidding|kidding|joking)\b|[\U0001F602\U0001F923]"
ACCIDENT = (r"\b(?:accident\w*|by mistake|shaving|chopping|cooking|slicing|gardening|baking|"
            r"ironing|at the gym|working out|lifting|playing|training|skiing|football|soccer|"
            r"rugby|sunburn\w*|on (?:a|the) (?:door|table|corner|nail|glass|stove|oven|pan|"
            r"fence|kettle))\b")
# Harm that lies in the past (abuse, old self-harm): worth a careful answer, not an emergency.
PAST = (r"\b(?:as a (?:child|kid|teen|teenager|little \w+)|when i was (?:a |little|younger|"
        r"small|\d+|in)|years ago|growing up|in the past|back then|used to|i was in (?:an?|that)|"
        r"i'?m out now|i got out|i escaped|i left (?:him|her|them))\b")
# A crisis told as over: time past, recovery, help found. "I self-harmed in school, I'm ten
# years clean now"; "after my attempt in 2015 I got help and I'm doing well". Unless it is back:
# RECURRING wins ("... and lately the urges are back").
RESOLVED = re.compile(
    r"\b(?:(?:\d+|a|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|many|several|"
    r"a few|a couple of) (?:years?|months?|decades?) (?:ago|clean|sober|free|since|later|on)|"
    r"(?:years|decades|a long time|long) ago|back in (?:\d{4}|high school|school|college|uni|the day)|"
    r"in (?:19|20)\d\d|during (?:high school|middle school|school|college|uni|university|"
    r"my teens|my twenties)|in my (?:teens|twenties)|as a (?:teen|teenager|kid|child|student)|when i was (?:younger|a teen|"
    r"a teenager|a kid|in school|at school|\d+)|(?:i'?m|i am) (?:doing )?(?:well|better|fine|good|okay|ok|"
    r"stable|safe|happy|in a good place) now|(?:long |well )?behind me|(?:i'?m|i am) (?:now )?(?:in recovery|recovered|"
    r"\w+ (?:years?|months?) clean)|i got (?:help|better|through it|treatment)|"
    r"(?:survived|survivor of) (?:it|my|an|the)|looking back|clean for|sober for|milestone|"
    r"anniversary|back then|in my (?:teens|twenties|thirties|forties|fifties|sixties)|"
    # the person they were then: "I used to think everyone would be better off without me"
    r"used to (?:think|want|wish|feel|hurt|cut|self-harm|harm|plan|be suicidal)|"
    r"remember when i (?:wanted|was|said|tried|used)|(?:the )?old me|(?:the|that) (?:version|"
    r"person) (?:of me )?(?:who|that) (?:was|wanted)|that was (?:in )?(?:\d{4}|years ago|ages "
    r"ago|a long time ago)|\d+ (?:year|month|day) mark|since i (?:quit|stopped)|"
    r"(?:therapy|treatment|recovery|the right meds|medication) (?:has )?(?:helped|saved|changed|"
    r"worked)|recovery is|(?:i'?m|i am) (?:really well|so glad|grateful|glad i'?m still "
    r"here)|so glad i'?m still here)\b")
# Kept to words that say the risk is here now; "I want to write about it" or "I'm back in
# church" are not a return, "I want to die again" or "I can't take it anymore" are.
RECURRING = re.compile(
    r"\b(?:again|lately|recently|tonight|this (?:week|month|morning|evening|weekend)|right "
    r"now|relaps\w*|urges? (?:is|are) back|(?:i'?m|i am|i'?ve been) back to (?:cutting|hurting|"
    r"harming|thinking|wanting|planning)|can'?t (?:\w+ ){0,2}anymore|think(?:ing)? about (?:it|"
    r"doing it)|(?:want|wanna|going|gonna|planning|plan|need) (?:to )?(?:\w+ )"
    r"{0,2}(?:die|dying|kill|end|hurt|cut|burn|jump|overdose|od|disappear|do it)|tomorrow)\b")


def is_resolved(norm: str) -> bool:
    """True when a (normalised) message tells of a crisis as over and nothing says it is back."""
    return RESOLVED.search(norm) is not None and RECURRING.search(norm) is None


# Someone asking how to help others, in general or at work: "how do you ask someone if they're
# thinking about suicide", "as a carer, how should I ask my client ...", "warning signs a
# student might be ...". The risk words are about other people, and no one is named in danger
# now (URGENT says when someone is: "my friend wants to die tonight, how do I help her").
HELPER = re.compile(
    r"\b(?:how (?:do|should|can|would|could|to|best to|might) (?:i |you |we |one |they |staff |"
    r"teachers |parents |carers )?(?:best )?(?:ask|talk|respond|react|support|help|approach|screen|"
    r"assess|handle|raise|bring|check|broach|word|phrase|answer)|warning signs|risk factors|"
    r"risk assessment|screening|screen for|safety plan|first aid|best practice|evidence "
    r"(?:behind|for|on)|(?:training|course|lecture|seminar|workshop|module|essay|dissertation|"
    r"thesis|research) (?:on|about|for|in)|(?:as|i'?m|i am|i work as) an? (?:\w+ )?(?:teacher|"
    r"nurse|carer|counsell?or|therapist|social worker|doctor|gp|pharmacists?|chaplain|pastor|"
    r"head of year|emt|paramedic|psycholog\w+|psychiatrist|interpreter|health worker|youth "
    r"worker|volunteer|lecturer|professor)|(?:pastor|nurse|teacher|gp|doctor|carer|"
    r"counsell?or|chaplain|paramedic|social worker) here|(?:my|our) (?:clients?|patients?|"
    r"students?|pupils?|residents?)|an? (?:student|pupil|patient|client|kid|child|resident) "
    r"(?:might|may|who|tells|told|discloses|writes|says))\b")
URGENT = re.compile(
    r"\b(?:tonight|right now|now|today|this (?:morning|evening|weekend)|has a plan|plans? to|"
    r"going to|gonna|about to|pills|gun|rope|bridge|goodbye|note|won'?t wake|not breathing)\b")
# Hyperbole about something tedious: "if I hear that song one more time I'll top myself".
HYPERBOLE = re.compile(
    r"\bif (?:i|we) (?:\w+ ){0,3}(?:hear|have to|see|get|sit|watch|listen|read|do)\b[^.!?\n]{0,80}"
    r"\b(?:one more|once more|another)\b")


def helping_others(norm: str) -> bool:
    """True when a (normalised) message asks how to help others and names no one in danger now."""
    return HELPER.search(norm) is not None and URGENT.search(norm) is None


# Pill-type substances for "I took too many"; alcohol is left out (everyday drinking talk).
PILLS = SUBSTANCE.replace("|alcohol|vodka", "")
