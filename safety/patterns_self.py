"""Patterns for risk to the speaker: suicidal thoughts, self-harm, and distress (concern).

Explicit ("I want to kill myself"), coded ("kms", "unalive", "sleep forever", "end it all") and
indirect ("what's the lethal dose of ...") forms are crisis on their own. Distress such as "I feel
worthless" or "what's the point" is concern; detect.py raises it to crisis only in combination.
"""

from .words import ACCIDENT, PAST, RELATION, STRUCTURE, SUBSTANCE, make

_HARM_VERB = (r"(?:cut|cutting|cuts|burn|burning|burned|burnt|scratch(?:ing)?|hit(?:ting)?|"
              r"punch(?:ing)?|bit(?:e|ing)|carv(?:e|ing|ed)|hurt(?:ing|s)?|harm(?:ing|ed)?|"
              r"starv(?:e|ing|ed))")

SUICIDAL = [
    make("si.kill_myself", "suicidal_ideation", "crisis",
         r"(?<!nearly )(?<!almost )\bkill(?:ing|ed|s)? my ?self\b(?! (?:laughing|trying to|working|"
         r"studying|to (?:finish|get|make|meet)|over (?:this|that|a|the) (?:project|work|essay|"
         r"exam|job|report)))", negatable=True),
    make("si.suicide", "suicidal_ideation", "crisis",
         r"\b(?:commit(?:ting)?|attempt(?:ing|ed)?|consider(?:ing|ed)?|contemplat(?:e|ing|ed)|"
         r"thinking (?:about|of)|think about|thought about|plan(?:ning|ned)?) (?:committing )?"
         r"suicide\b", negatable=True),
    make("si.suicidal", "suicidal_ideation", "crisis",
         r"\b(?:i'?m|im|i am|i feel|feel|feeling|felt|been|getting|get|i was|becoming) (?:(?:so|"
         r"really|very|kind of|kinda|pretty|quite|a bit|a little|extremely|super|actively|"
         r"passively|more|always) )*suicidal\b", negatable=True),
    make("si.suicidal_thoughts", "suicidal_ideation", "crisis",
         r"\b(?:having|have|had|getting|get|with|my|these|i'?ve got) (?:(?:some|these|those|"
         r"constant|intrusive|strong|more|bad|dark) )*suicidal (?:thoughts|feelings|urges|"
         r"ideation)\b", negatable=True),
    make("si.my_suicide", "suicidal_ideation", "crisis",
         r"\b(?:plan(?:ning|ned)?|prepar(?:ing|ed)|schedul\w+|think(?:ing)? about) (?:for )?my "
         r"(?:own )?(?:suicide|death)\b|\bmy (?:own )?suicide\b", calm=PAST),
    make("si.suicide_note", "suicidal_ideation", "crisis",
         r"\b(?:wrote|writing|written|write|my|made|have|drafted) (?:a |my )?suicide "
         r"(?:note|letter|plan)\b"),
    make("si.end_my_life", "suicidal_ideation", "crisis",
         r"\b(?:end|take|ending|taking|ended|took) (?:my|my own) life\b", negatable=True),
    make("si.end_it_all", "suicidal_ideation", "crisis",
         r"\bend(?:ing)? (?:it all|everything|it tonight|it today|it for good|"
         r"it once and for all|things for good|my suffering)\b", negatable=True),
    make("si.want_to_die", "suicidal_ideation", "crisis",
         r"\b(?:want|wanna|wanted|wanting|ready|deserve|need|trying|plan(?:ning)?|decided|wish) "
         r"to die\b(?! (?:of|from) (?:embarrassment|laughter|laughing|boredom|cringe|shame)|"
         r" laughing)", negatable=True),
    make("si.wish_dead", "suicidal_ideation", "crisis",
         r"\b(?:wish (?:i (?:was|were|could be)|to be) dead|better off dead|rather be dead|"
         r"(?:be |are |is )?better off without me|world would be better without me|better off "
         r"if i (?:wasn'?t|weren'?t|was not|were not) (?:here|around|alive|born)|better off if i "
         r"(?:died|was gone|were gone|disappeared|was dead|were dead))\b",
         negatable=True),
    make("si.no_reason_to_live", "suicidal_ideation", "crisis",
         r"\b(?:no (?:reason|point) (?:(?:in|for) (?:me )?)?(?:living|to live|to keep living|"
         r"being alive|"
         r"to go on|to keep going)|not worth living|(?:don'?t|do not|dont|no longer|never) "
         r"(?:want|wanna|wish) to (?:live|be alive|exist|be here anymore|keep living)|"
         r"tired of (?:living|being alive)|life (?:isn'?t|is not|is no longer) worth (?:it|living)|"
         r"what'?s the point (?:of|in) (?:living|being alive|life))\b"),
    make("si.stop_forever", "suicidal_ideation", "crisis",
         r"\bwant (?:it|it all|everything|this|the pain|all of this|my life) to (?:stop|end|"
         r"be over)"
         r"[\s.,!-]*(?:forever|for good|permanently)\b"),
    make("si.end_it", "suicidal_ideation", "crisis",
         r"\b(?:decided|made up my mind|ready|going|gonna|plan(?:ning)?|want|wanna|have|need) to "
         r"end (?:it|things)\b(?! with| between| here| there| off| early| at)", negatable=True),
    make("si.done_with_life", "suicidal_ideation", "crisis",
         r"\b(?:i'?m|im|i am) (?:so |just |completely |totally )?done with (?:life|living|being "
         r"alive|existing|this life)\b|\b(?:don'?t|do not|dont|"
         r"no longer) want to be here(?=\s*(?:$|"
         r"[.!?,;]|anymore|any more|on (?:this )?earth|and\b))"),
    make("si.thinking_of_dying", "suicidal_ideation", "crisis",
         r"\b(?:think|thinking|thought|fantasi[sz]e|fantasi[sz]ing|dream|dreaming|obsess\w*) "
         r"(?:about|of) (?:dying|being dead|not being alive|not existing|not waking up|"
         r"my own death|"
         r"ending it|killing myself)\b", negatable=True),
    make("si.stop_existing", "suicidal_ideation", "crisis",
         r"\b(?:want|wanna|wish|wish i could|need) (?:to )?(?:just )?(?:stop existing|not exist|"
         r"cease to exist|not be alive)\b", negatable=True),
    make("si.sleep_forever", "suicidal_ideation", "crisis",
         r"\b(?:(?:want|wanna|wish|ready|like) to (?:go to )?sleep forever|(?:sleep|go to sleep|"
         r"fall asleep|close my eyes) and (?:never|not|don'?t) wake up|(?:hope|hoping|wish|"
         r"wishing|pray|praying)(?: that)? "
         r"i (?:don'?t|do not|won'?t|will not|never|wouldn'?t|would not|didn'?t) wake up|never "
         r"wake up again|(?:don'?t|do not|dont) want to wake up (?:again|anymore|ever))\b"),
    make("si.coded_kms", "suicidal_ideation", "crisis",
         r"(?<!\d)(?<!\d )\bkms\b(?! (?:away|from|of|per|north|south|east|west|long|drive|walk|"
         r"ride|run|to|today)\b)", meta_ok=True),
    make("si.coded_kys_self", "suicidal_ideation", "crisis",
         r"\b(?:i|i'?m|im|imma|ima|me|myself)\s+(?:(?!you\b|u\b|ur\b)\w+\s+){0,3}kys\b",
         meta_ok=True),
    make("si.coded_unalive", "suicidal_ideation", "crisis",
         r"\bunaliv\w* (?:my ?self|me)\b|\b(?:want|wanna|going|gonna|might|thinking about|"
         r"plan|planning|ready|urge) (?:to )?(?:just )?unalive\b|\bsewer ?slide\b|"
         r"\bsewerslid\w*\b", negatable=True, meta_ok=True),
    make("si.coded_slang", "suicidal_ideation", "crisis",
         r"\b(?:off(?:ing)? my ?self|top(?:ping)? my ?self(?! up)|yeet(?:ing)? my ?self "
         r"(?:off|in front)|(?:time to|gonna|going to|want to|wanna|ready to) rope\b(?! in)|"
         r"(?:i|i'?m|gonna|going to|want to|wanna|planning to|ready to|decided to) "
         r"(?:\w+ ){0,2}ctb)\b", negatable=True),
    make("si.method_self", "suicidal_ideation", "crisis",
         r"\b(?:hang|hanging|hanged|drown|drowning|shoot|shooting|poison|poisoning|gas|gassing|"
         r"suffocate|suffocating|electrocute|stab|stabbing) my ?self\b|\bslit(?:ting)? (?:my|both) "
         r"wrists\b|\b(?:put|putting) a bullet in my (?:head|brain)\b", negatable=True),
    make("si.jump", "suicidal_ideation", "crisis",
         r"\b(?:want|wanna|going|gonna|thinking (?:about|of)|think about|thought about|plan|"
         r"planning|ready|tempted|urge|could just|should just|might just) (?:to )?(?:just )?"
         r"(?:jump(?:ing)? (?:off|from|in front of|under)|(?:step|walk|lie down|lay down)(?:ping|"
         r"ing)? in front of) (?:a|an|the|this|that|my) (?:\w+ )?(?:" + STRUCTURE[3:-1] +
         r"|train|bus|truck|car|subway|tube|window)\b|"
         r"\bthrow(?:ing)? my ?self (?:off|from|in front of|under)\b", negatable=True),
    make("si.overdose_intent", "suicidal_ideation", "crisis",
         r"\b(?:want|wanna|going|gonna|thinking (?:about|of)|plan(?:ning)?|ready|tempted|decided|"
         r"try) (?:to )?(?:overdose|od)\b|\b(?:stockpil\w+|hoard\w*|sav(?:ing|ed) up|been saving|"
         r"collecting) (?:\w+ ){0,2}" + SUBSTANCE + r"|\benough " + SUBSTANCE +
         r" to (?:die|end it|not wake up|kill me)\b", negatable=True),
    make("si.wish_killed", "suicidal_ideation", "crisis",
         r"\b(?:wish|hope|pray)(?: that)? (?:someone|somebody|something|a \w+|the \w+) "
         r"(?:would|could|will) (?:kill me|hit me|run me over|end me)\b"),
    make("si.last_day", "suicidal_ideation", "crisis",
         r"\b(?:my )?last (?:day|night|hours?|words) (?:alive|on earth)\b|\b(?:tonight|"
         r"today)(?:'s| "
         r"is| will be) (?:my|the) last (?:night|day)(?=\s*(?:$|[.!?]))|\b(?:dying|death|"
         r"being dead|"
         r"not being here|ending it|not waking up) (?:would|will|might|could) (?:be|feel) (?:so )?"
         r"(?:easier|better|a relief|peaceful|a release)\b|\bby the time "
         r"(?:you|anyone|someone) (?:read|reads|see|sees|find|finds) this\b"),
    make("si.third_party", "suicidal_ideation", "crisis",
         r"\bmy (?:best )?(?:friend|mate|buddy|" + RELATION[3:-1] + r"|classmate|coworker|"
         r"colleague|student|teen|teenager)\b[^.!?]{0,40}?\b(?:(?:wants|wanted|is going|is gonna|"
         r"threatened|threatening|talking about|talks about|talked about|keeps talking about|"
         r"tried|trying|attempted|is planning|plans|said (?:she|he|they)(?:'d| would| will| wants| "
         r"want| is going|'s going|'s gonna| is gonna)?) (?:to )?(?:kill (?:himself|herself|"
         r"themselves|themself)|end "
         r"(?:his|her|their) (?:own )?life|die(?! (?:of|from) (?:embarrassment|laughter|laughing|"
         r"boredom|cringe|shame)| laughing)|commit suicide|suicide)|is (?:suicidal|talking "
         r"about suicide))\b", skip_in_fiction=True),
    # Asking how to die, or how much of something kills: dangerous on its own.
    make("si.lethal_dose", "suicidal_ideation", "crisis",
         r"\b(?:(?:lethal|fatal|deadly) (?:dose|dosage|amount|quantity|level)|(?:toxic|overdose) "
         r"(?:dose|dosage|amount|quantity))s?\b|"
         r"\bld ?50\b|\b(?:what|which) (?:\w+ )?(?:pills|medications?|meds|drugs|medicines|"
         r"substances|poisons?|plants?) (?:are|is|can be) (?:deadly|lethal|fatal)\b"),
    make("si.how_many_to_die", "suicidal_ideation", "crisis",
         r"\bhow (?:many|much) (?:[\w-]+ ){0,6}?(?:to|would|will|does it take to|would it take to|"
         r"it takes to|before (?:i|you|it|someone|a person)) (?:die|kill (?:me|you|myself|someone|"
         r"a person)|overdose|od|stop (?:my|your|a|someone'?s) heart|be fatal|be lethal|"
         r"not wake up)\b"),
    make("si.method_question", "suicidal_ideation", "crisis",
         r"\b(?:painless|easiest|easy|quickest|quick|fastest|best|surest|most effective|"
         r"least painful|peaceful|cleanest) (?:way|ways|method|methods) (?:to|of) (?:die|dying|"
         r"kill (?:myself|yourself|oneself)|end (?:it all|my life|your life)|commit suicide|"
         r"suicide)\b|\bsuicide methods?\b|\bhow (?:to|do (?:i|you|people)|can (?:i|you|"
         r"someone)|would (?:i|you|someone)) (?:kill (?:myself|yourself|oneself)|commit suicide|"
         r"hang (?:myself|yourself|oneself)|tie a noose|make a noose|slit (?:my|your) wrists|"
         r"overdose|od|die (?:painlessly|quickly|in (?:my|your) sleep)|poison (?:myself|yourself))"
         r"\b|\bhow long (?:does it|would it|will it|until|before) (?:take to )?(?:\w+ ){0,2}"
         r"(?:die|bleed out|suffocate|drown)\b"),
    make("si.ways_to_die", "suicidal_ideation", "crisis",
         r"\b(?:ways?|methods?|how) to (?:die|kill myself|end my life|commit suicide)\b",
         skip_in_fiction=True),
    make("si.how_many_take", "suicidal_ideation", "crisis",
         r"\bhow (?:many|much) (?:[\w-]+ ){0,3}?" + SUBSTANCE + r"(?: it)? (?:would|will|does it|"
         r"it would|it'?d|would it|do you need to|does it) (?:take|be enough)\b(?! (?:to|for) "
         r"(?:help|work|feel|kick|treat|get rid|sleep(?! forever)|start)\b)"),
    make("si.survive_fall", "suicidal_ideation", "crisis",
         r"\b(?:survive|die from|kill (?:you|me|someone|a person)|fatal) (?:a |the )?(?:fall|jump|"
         r"drop)\b(?! semester| term| season)|\b(?:fall|jump|drop)(?:ing)? (?:from|off) "
         r"[^.?!]{0,40}\b(?:fatal|lethal|deadly|survivable|kill (?:you|me|someone|a person))\b|"
         r"\b(?:high|tall|deep) enough to (?:die|kill|be fatal|"
         r"not survive)\b|\bwhat happens if (?:i|you|"
         r"someone) (?:take|takes|swallow|swallows) (?:a whole bottle|all|too many|an entire)\b"),
]

SELF_HARM = [
    make("sh.hurt_self", "self_harm", "crisis",
         r"\b" + _HARM_VERB + r" my ?self\b(?! (?:a|some|off|slack|short|out|free|loose|"
         r"into)\b)", negatable=True, suppress=ACCIDENT, calm=PAST),
    make("sh.body", "self_harm", "crisis",
         r"\bi(?:'ve|'m| have| am| keep| still| started)? (?:\w+ ){0,2}?" + _HARM_VERB +
         r" my (?:arms?|wrists?|legs?|thighs?|skin|stomach|body|hips?)\b", negatable=True,
         suppress=ACCIDENT, calm=PAST),
    make("sh.self_harm", "self_harm", "crisis",
         r"\b(?:i|i'?ve|i'?m|im|been|started|start|keep|still|relapsed|urges? to|want to|wanna|"
         r"need to|went back to|stop) (?:\w+ ){0,2}self[- ]?harm\w*\b|\brelaps\w* (?:and|on|into|"
         r"with) (?:cutting|cut|self[- ]?harm)|\b(?:started|start|been|keep|kept|still|back to|"
         r"went back to|resumed) (?:\w+ )?cutting\b(?! (?:back|down|out|off|corners|costs|class|"
         r"classes|school|it|the|my hair|hair|people|ties|carbs|sugar|\w+ (?:out|off)))",
         negatable=True, calm=PAST),
    make("sh.urge_to_cut", "self_harm", "crisis",
         r"\b(?:urges?|want|wanna|need|itching|craving) to (?:cut|bleed|burn)(?=$|[.!?,]| again| "
         r"so bad| tonight| right now| myself)"),
    make("sh.blade", "self_harm", "crisis",
         r"\b(?:razor|blade|lighter)s? (?:on|to|against|across) my (?:arms?|wrists?|legs?|skin|"
         r"thighs?)\b"),
    make("sh.purge", "self_harm", "crisis",
         r"\bmak(?:e|ing) my ?self (?:throw up|vomit|puke|purge)\b", negatable=True),
    make("sh.not_eating", "self_harm", "concern",
         r"\bhaven'?t eaten (?:anything )?in (?:days|a week|\d+ days)\b|\bstopped eating\b"),
]

DISTRESS = [
    make("di.hopeless", "distress", "concern",
         r"\b(?:i'?m|i am|im|i feel|feel(?:ing)?|felt|i'?ve become|makes me feel|i'?m such) "
         r"(?:(?:so|really|completely|totally|just|like|such|utterly|very|pretty|kind of|kinda|"
         r"a) )*(?:hopeless|worthless|useless|falling apart|a burden|a failure|a waste of space|"
         r"unlovable|"
         r"empty inside|empty|numb|broken|nothing|trapped|so alone|all alone|unwanted)\b|"
         r"\b(?:everything|life|it all|my life|my world|my situation)(?:'s| is| feels| seems) "
         r"(?:falling apart|crumbling|over)\b|"
         r"\b(?:everything|life|it all|my life|my situation)(?:'s| is| feels| seems) (?:so |"
         r"completely |totally |just )?(?:hopeless|pointless|meaningless)\b|\b(?:lost all|no) "
         r"hope\b|\bno future\b"),
    make("di.whats_the_point", "distress", "concern",
         r"\bwhat'?s the point(?: (?:anymore|of (?:anything|it all|trying|going on|even trying|me|"
         r"any of this|getting up|it))|\s*[?.!]*\s*$|\s*[?.!]+)|\bno point (?:in )?(?:anything|"
         r"trying|going on|getting up|even trying)\b|\bnothing matters\b"),
    make("di.cant_go_on", "distress", "concern",
         r"\b(?:can'?t|cannot|can not) (?:go on|keep going|do this anymore|take (?:it|this|much "
         r"more|any more)(?: anymore)?|cope(?: anymore)?|handle (?:it|this|anything) anymore)\b|"
         r"\bno way out\b|\bgiv(?:e|ing) up on (?:everything|life|myself)\b|\bi give up\b|"
         r"\bi'?ve given up\b"),
    make("di.make_it_stop", "distress", "concern",
         r"\bwant (?:it|it all|everything|this|the pain|all of this|my life|the thoughts) to "
         r"(?:stop|end|be over)\b"),
    make("di.self_hate", "distress", "concern",
         r"\bi (?:hate|despise|loathe|can'?t stand) (?:myself|my life|being alive|who i am)\b|"
         r"\bwish i (?:had )?never (?:been born|existed)\b|\b(?:want|wish|wanna) (?:i could |to )?"
         r"(?:just )?(?:disappear|vanish)\b"),
    make("di.nobody_cares", "distress", "concern",
         r"\b(?:no ?one|nobody) would (?:care|notice|miss me)\b|\b(?:if|when) i (?:died|was gone|"
         r"were gone|wasn'?t here|weren'?t here|disappeared)\b|\bwon'?t be (?:a burden|around|"
         r"here|a problem) (?:much longer|for long|anymore|soon|after (?:tonight|today))\b"),
    make("di.resolved", "distress", "concern",
         r"\bi know (?:exactly )?what i(?:'m going to|'m gonna| am going to| have to| need to| "
         r"must|'ll| will) do\b|\bmy mind is made up\b|\bi'?ve made my decision\b"),
    # Warning signs of preparation: concern alone, crisis together with other distress.
    make("prep.giving_away", "distress", "concern",
         r"\bg(?:ive|iving|ave|iven) away (?:all )?(?:of )?my (?:stuff|things|belongings|"
         r"possessions|cat|dog|pets?|clothes|books|games|guitar|plants)\b|\b(?:wrote|writing|"
         r"written|write) (?:\w+ ){0,2}(?:goodbye|farewell|final) (?:letters?|notes?|messages?)\b|"
         r"\bsa(?:y|ying|id) (?:my )?goodbyes? (?:to everyone|to everybody|for the last time|"
         r"forever)\b|\b(?:goodbye|bye) forever\b|\b(?:final|last) goodbye\b|\b(?:put|putting|"
         r"get|getting|got) my affairs in order\b"),
]
