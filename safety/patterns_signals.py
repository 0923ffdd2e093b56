"""Signals: harmless alone, a risk sign in combination (detect.py holds the rules).

A tourist asks how tall a bridge is; a person who just lost their job and asks the same question
may be looking for a method. So method-seeking and loss are level "signal": never reported on
their own, raised to crisis when they meet distress or each other across the conversation.
"""

from .words import RELATION, STRUCTURE, SUBSTANCE, make

METHOD_SEEKING = [
    make("ms.heights", "method_seeking", "signal",
         r"\b(?:tall(?:est|er)?|high(?:est|er)?|heights? of|how (?:tall|high|far down)|over \d+ ?"
         r"(?:m|meters?|metres?|feet|ft|stories|storeys|floors))\b[^.?!]{0,40}\b" + STRUCTURE +
         r"|\b" + STRUCTURE + r"[^.?!]{0,40}\b(?:tall(?:er|est)?|high(?:er|est)?|height|drop|"
         r"fall|above (?:the )?(?:water|ground)|\d+ ?(?:m|meters?|metres?|feet|ft|stories|storeys|"
         r"floors))\b|\b(?:roof|rooftop) access\b|\bunlocked (?:roof|rooftop)\b"),
    make("ms.trains", "method_seeking", "signal",
         r"\btrain (?:schedules?|times|timetables?)\b|\bwhen (?:does|do|is|will) the (?:next )?"
         r"(?:\w+ )?trains? (?:pass|come|go|run|arrive|leave|due)\b|\b(?:freight|"
         r"express) trains?\b|"
         r"\b(?:train|railway|subway|rail) (?:tracks?|line|crossing)\b|\b(?:how fast|speed of) "
         r"(?:a |the )?trains?\b"),
    make("ms.means", "method_seeking", "signal",
         r"\b(?:buy|bought|get|got|buying|getting|purchase|purchased|find|borrow|get hold of) "
         r"(?:a |an |some )?(?:gun|"
         r"firearm|handgun|pistol|rifle|shotgun|bullets|ammo|rope|noose|razor blades?|blades?|"
         r"charcoal|helium|rat poison|poison|sleeping pills|barbiturates)\b|\bgun (?:shop|store|"
         r"range)s? (?:near|close)\b|\bstrong enough to (?:hold|take) (?:my|a person'?s|"
         r"someone'?s|a body'?s|an adult'?s) weight\b"),
    make("ms.weapon", "method_seeking", "signal",
         r"\b(?:got|have|bought|grabbed|took|loaded|hid|keep|bring|brought|carry|carrying) "
         r"(?:[\w']+ ){0,2}?(?:gun|guns|knife|knives|rifle|pistol|shotgun|weapon|firearm)s?\b"),
    make("ms.access", "method_seeking", "signal",
         r"\b" + STRUCTURE + r" (?:\w+ ){0,6}?(?:open|accessible|access|locked|unlocked|guarded|"
         r"fenced|fences?|barriers?|nets?|netting|railings?|guard ?rails?)\b|\bwalk (?:onto|across|"
         r"on) (?:the )?(?:\w+ )?bridge at night\b"),
    # Wanting to be with someone who died: only a risk sign after a death (see detect.py).
    make("ms.reunion", "reunion", "signal",
         r"\b(?:want|wanna|wish|need|going|ready|can'?t wait) to (?:be with|join) "
         r"(?:him|her|them|my \w+)(?: again| soon| in heaven| on the other side)\b|\bjoin (?:him|"
         r"her|them|my \w+) (?:in heaven|on the other side|soon)\b"),
    make("ms.pills", "method_seeking", "signal",
         r"\bhow many (?:[\w-]+ ){0,3}" + SUBSTANCE + r"\b|"
         r"\bhow much (?:[\w-]+ ){0,2}" + SUBSTANCE +
         r"\b|\b(?:what|which) (?:pills|medications?|meds|drugs|medicines) (?:are|is) (?:dangerous|"
         r"bad)\b|"
         r"\bmix(?:ing)? (?:\w+ ){0,2}(?:pills|medications?|meds|alcohol) (?:with|and)\b|"
         r"\bwhat happens if (?:you|i|someone) (?:take|takes|mix)\b"),
    make("ms.water", "method_seeking", "signal",
         r"\bhow (?:deep|cold) is (?:the )?(?:river|lake|water|sea|quarry|reservoir|ocean)\b|"
         r"\b(?:strong currents?|rip currents?)\b"),
]

LOSS = [
    make("loss.lost", "loss", "signal",
         r"\b(?:lost|losing) (?:my|our) (?:job|work|house|home|apartment|flat|girlfriend|boyfriend|"
         r"friend|dog|cat|business|savings|everything|scholarship|place|visa|custody)\b|"
         r"\b(?:lost|losing) (?:custody|everything|the (?:house|baby|business|farm|case))\b"),
    make("loss.death", "loss", "signal",
         r"\b(?:lost|losing) (?:my|our) (?:wife|husband|partner|mom|mum|mother|dad|father|son|"
         r"daughter|child|kid|baby|brother|sister|best friend|twin|grandma|grandpa)\b|"
         r"\b(?:she|he|they|my (?:\w+ )?(?:" + RELATION[3:-1] + r"|friend|best friend|dog|cat|pet))"
         r"(?:'s| has| had)? (?:passed away|passed|died|killed (?:himself|herself|themselves))\b"),
    make("loss.event", "loss", "signal",
         r"\b(?:got|been|was|just got|i got|i'?ve been|i'?m being|getting) (?:\w+ )?(?:fired|"
         r"laid off|let go|sacked|dumped|evicted|kicked out|expelled|divorced|cheated on)\b|"
         r"\b(?:she|he|they|my (?:\w+ )?(?:" + RELATION[3:-1] + r"|friend|best friend|dog|cat|pet|"
         r"boss|manager))(?:'s| has| had)? (?:left me|dumped me|broke up with me|cheated on me|"
         r"divorced me|kicked me out|fired me|left (?:me|us)|left and took|walked out(?: on)? "
         r"(?:me|us))\b|\b(?:broke up|breakup|divorce|bankrupt\w*|layoffs?|"
         r"foreclos\w+|eviction|failed (?:my|all my|the) (?:exams?|classes|course|degree|bar|"
         r"finals))\b|\b(?:in|drowning in) (?:so much|huge|a lot of|crippling) debt\b|"
         r"\bdiagnosed with (?:cancer|hiv|a terminal)\b"),
]
