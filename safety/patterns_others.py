"""Patterns for risk to others and from others: threats of violence, abuse at home, and
medical emergencies that are happening now (an overdose taken, bleeding that will not stop).

Violent words are everywhere in everyday speech ("I could murder a pizza", "my mom will kill me
if I fail"), so these patterns need a person as the target and skip stories, games and jokes.
"""

from .words import JOKING, OTHERS, PAST, PILLS, RELATION, make

HARM_TO_OTHERS = [
    make("ho.intent", "harm_to_others", "crisis",
         r"\b(?:i'?m going to|i'?m gonna|im going to|im gonna|i am going to|i will|i'?ll|i want to|"
         r"i wanna|i plan to|i'?m planning to|i swear i'?ll|i might|i'?m about to|i feel like|"
         r"i have (?:the )?urges? to|i keep thinking about|i'?ve been thinking about|i'?m thinking "
         r"about|thoughts (?:of|about)) (?:\w+ ){0,2}?(?:kill|murder|stab|shoot|strangle|choke|"
         r"poison|hurt|harm|beat up|attack|run over|smother|drown)(?:ing)? " + OTHERS + r"\b",
         negatable=True, negated_level="none", skip_in_fiction=True, suppress=JOKING),
    # Anger with a target: concern alone, crisis together with a weapon (see detect.py).
    make("ho.revenge", "harm_to_others", "concern",
         r"\b(?:make (?:him|her|them|my \w+|the \w+|everyone|those \w+) pay|get (?:my )?revenge "
         r"on|(?:they|he|she)(?:'ll| will) (?:all )?be sorry|teach (?:him|her|them) a lesson)\b",
         negatable=True, negated_level="none", skip_in_fiction=True, suppress=JOKING),
    make("ho.attack_place", "harm_to_others", "crisis",
         r"\b(?:shoot(?:ing)? up|bring(?:ing)? a (?:gun|knife|weapon) to|bomb(?:ing)?|"
         r"blow(?:ing)? up) (?:the |my |our |a )?(?:school|office|work|workplace|class|church|"
         r"mosque|synagogue|mall|campus)\b", negatable=True, negated_level="none",
         skip_in_fiction=True, suppress=JOKING),
]

# "My mom will kill me if I fail" is an idiom; "he said he'd kill me if I left" is a threat.
_IDIOM_IF = (r"(?! (?:when|if) (?:he|she|they) (?:sees?|finds? out|hears?)| if i (?:fail\w*|"
             r"am late|was late|'m late|get home late|come home late|forget|forgot|break(?! up)|"
             r"broke(?! up)|lose|lost|miss|missed|get a|got a|crash\w*|dent\w*|spill\w*|"
             r"borrow\w*|wear\w*|eat|ate)\b)")
_VICTIM = (r"(?:me|us|her|him|my (?:little |baby |younger |older )?(?:brother|sister|siblings|"
           r"kids?|son|"
           r"daughter|mom|mum|mother|children))")

ABUSE = [
    make("ab.hurts_me", "abuse", "crisis",
         r"\b(?:he|she|they|my (?:[\w']+ )?" + RELATION + r")\b (?:\w+ ){0,2}?(?:(?:hits?|hitting|"
         r"beats?|beating|kicks?|kicked|kicking|slaps?|slapped|slapping|punch(?:es|ed|ing)?|"
         r"chok(?:es|ed|ing)|strangl(?:es|ed|ing)|rap(?:ed|es)|molest(?:s|ed|ing)|abus(?:es|ed|"
         r"ing)) "
         + _VICTIM + r"|(?:threw|throws|shoved|shoves|pushed|pushes|slammed|slams|dragged|drags|"
         r"pinned|pins) " + _VICTIM + r" (?:against|into|down|across|to the (?:floor|ground)|off|"
         r"onto|by (?:my|the) hair)|burn(?:s|ed|t)? " + _VICTIM + r" with)\b", skip_in_fiction=True,
         calm=PAST,
         suppress=r"\bat (?:chess|cards|tennis|golf|poker|pool|darts|checkers|\w+ball|the game)\b|"
                  r"\bin (?:a|the) (?:race|game|match)\b|\bhits? (?:me|us) (?:up|with)\b|"
                  r"\bbeat (?:me|us) (?:to|at)\b|\bkick\w* (?:me|us) out\b"),
    make("ab.sexual", "abuse", "crisis",
         r"\b(?:he|she|they|my (?:\w+ )?" + RELATION + r"|(?:a|an|the) (?:teacher|coach|"
         r"neighbou?r|priest|tutor|older \w+))\b (?:\w+ ){0,2}?(?:touch(?:es|ed|ing)?|grop(?:es|"
         r"ed|ing)|feels? me up) (?:me|my (?:body|private parts|chest|breasts?))\b (?:when|"
         r"where|at "
         r"night|inappropriately|down there|in (?:ways|places)|without|while|in (?:my|the) (?:room|"
         r"bed|shower)|under)\b", skip_in_fiction=True, calm=PAST),
    make("ab.threat", "abuse", "crisis",
         r"\b(?:threaten\w*|said|says|told me) (?:that )?(?:he|she|they)?(?:'?ll|'?d| will| would| "
         r"is going to| was going to| gonna)? ?(?:to )?(?:kill|hurt) (?:me|us|my)\b" + _IDIOM_IF +
         r"|\b(?:afraid|scared|terrified|worried) "
         r"(?:that )?(?:he|she|they|my \w+)(?:'?s| is| will|'?ll)? (?:going to |gonna |will |"
         r"might )?(?:kill|hurt) (?:me|us)\b" + _IDIOM_IF + r"|\b(?:threaten\w*|said|says|told me|"
         r"keeps saying|texted)(?: that)? (?:he|she|they)(?:'?ll|'?d| will| would| is going to|"
         r" was "
         r"going to| gonna) (?:make me pay|make me regret|make me suffer|ruin me|find me|come "
         r"after me)\b", calm=PAST, suppress=JOKING),
    make("ab.fear_home", "abuse", "crisis",
         r"\b(?:scared|afraid|terrified|frightened) (?:of (?:him|her|my (?:\w+ )?" + RELATION +
         r")\b(?!'s|s'| (?:reaction|finding out|response|judging|opinion|disappointment))|to "
         r"(?:go|be|come|get) (?:back )?home|for my (?:life|safety))\b"),
    make("ab.abusive_home", "abuse", "crisis",
         r"\b(?:in|with|living with|stuck with|trapped with) (?:an |a )?(?:abusive|violent) "
         r"(?:relationship|partner|husband|wife|boyfriend|girlfriend|home|household|family|"
         r"parents?|dad|father|mom|mother|stepdad)\b|\bmy (?:\w+ )?" + RELATION +
         r" (?:is|are|has been|have been|gets|got|became) (?:\w+ )?(?:abusive|violent)\b|"
         r"\b(?:victim of|experiencing|going through|suffering|living with|escape|escaping|"
         r"leave|leaving) domestic (?:violence|abuse)\b", skip_in_fiction=True, calm=PAST),
    make("ab.assaulted", "abuse", "crisis",
         r"\b(?:i was|i'?ve been|i got|i am being|i'?m being|being|he|she|they) (?:sexually |"
         r"physically )?(?:abused|raped|molested|assaulted|beaten|beats|rapes)(?: me)?\b|"
         r"\b(?:abus|rap|molest)(?:es|ed|ing) me\b", skip_in_fiction=True, calm=PAST,
         suppress=r"\b(?:beaten|assaulted) (?:at|in|by (?:the|my|a) (?:other|rival|opponent))"),
    # Controlling behaviour: a warning sign, answered with care rather than the crisis path.
    make("ab.control", "abuse", "concern",
         r"\b(?:won'?t let me (?:leave|go out|see my|eat|sleep|call)|lock(?:s|ed)? me (?:in|out|"
         r"up)|took my (?:phone|keys|passport) (?:so|and) i can'?t)\b", skip_in_fiction=True),
]

MEDICAL = [
    make("me.took_too_much", "medical_emergency", "crisis",
         r"\b(?:took|taken|swallowed|downed|ate|drank|chugged|popped) (?:like |about |around |"
         r"maybe |almost |over |at least |nearly |more than )?(?:a |an |the )?(?:(?:whole|"
         r"entire|full|half a|half the|a bunch of|a handful of|handfuls of|loads of|lots of|"
         r"too many|so many|way too many|\d{2,}(?= )(?! (?:mg|mcg|ml|g|grams|milligrams)\b)|ten|"
         r"fifteen|twenty|thirty|forty|fifty|a lot of|all the) (?:(?:bottle|pack|packet|box|strip|"
         r"sheet)s? (?:of )?)?(?:of )?(?:my |the |his |her )?(?:[\w'-]+ )?" + PILLS + r"|"
         r"all (?:of )?"
         r"(?:my|the|his|her) (?:[\w-]+ )?" + PILLS + r" (?:at once|in one go|at the same time|"
         r"left|i had|in the (?:bottle|box|pack)|from the (?:bottle|box|pack)))\b"),
    make("me.overdosed", "medical_emergency", "crisis",
         r"\b(?:overdosed|od'd|oded|taken an overdose|took an overdose|had an overdose|overdosing|"
         r"is od'?ing)\b(?! on (?:chocolate|sugar|candy|sweets|caffeine|coffee|netflix|tv|anime|"
         r"work|studying|cake|pizza|carbs|memes))", negatable=True, negated_level="none"),
    make("me.poison", "medical_emergency", "crisis",
         r"\b(?:drank|swallowed|drunk|ingested|took|ate) (?:some |a lot of |a bottle of |the |a "
         r"cup of )?(?:bleach|antifreeze|rat poison|poison|weed killer|pesticide|drain cleaner|"
         r"detergent|lighter fluid)\b"),
    make("me.bleeding", "medical_emergency", "crisis",
         r"\b(?:bleeding|blood) (?:a lot|heavily|badly|everywhere|won'?t stop|will not stop|"
         r"isn'?t stopping|that won'?t stop)\b|\b(?:can'?t|cannot|won'?t) stop (?:the )?bleeding\b|"
         r"\bcut (?:too|really|way) deep\b|\b(?:lost|losing|there'?s|there is) (?:a lot of|so much|"
         r"lots of|too much) blood\b"),
    make("me.unresponsive", "medical_emergency", "crisis",
         r"\b(?:he|she|they|my (?:\w+ )?(?:" + RELATION[3:-1] + r"|friend)|the baby)(?:'s|'re| is| "
         r"are| was| has| just)? (?:not breathing|isn'?t breathing|stopped breathing|unresponsive|"
         r"unconscious|passed out and (?:won'?t|isn'?t|can'?t)|won'?t wake up(?! (?:for|in time|"
         r"early|on time|in the morning|before)))\b|\bcan'?t wake (?:him|her|them) up\b"),
    make("me.acute", "medical_emergency", "crisis",
         r"\b(?:i'?m|i am|im|i think i'?m|he'?s|she'?s|they'?re) having (?:a )?(?:heart attack|"
         r"stroke|seizure)\b|\bchest (?:pain|hurts)\b[^.!?]{0,40}\b(?:can'?t breathe|arm|numb)\b"),
]

# Distress without acute risk: the assistant should answer gently and mention support.
