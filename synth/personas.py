"""Who writes each synthetic patient message: a topic plus a persona (age, situation, tone,
length), fixed by --seed and the row's number alone.

Topics are dealt round-robin from an order shuffled by the seed, so any N rows cover the topics
evenly; the persona fields are drawn from a generator seeded with (seed, row number), so row 17
of seed 0 is always the same person no matter how many rows are made or in what order.
"""

import random
from dataclasses import dataclass

TOPICS = [
    "anxiety that shows up as a racing heart and constant worry",
    "grief after the death of a parent",
    "burnout at work",
    "loneliness after moving to a new city",
    "trouble falling asleep and waking at night",
    "conflict with parents or siblings",
    "exam stress and fear of failing",
    "coming out to family or friends",
    "caring for an ill or elderly relative",
    "low mood that has lasted for weeks",
    "panic attacks in public places",
    "a relationship breakup",
    "social anxiety at parties or meetings",
    "low self-esteem and harsh self-criticism",
    "anger that feels hard to control",
    "worries about drinking too much",
    "stress after losing a job",
    "adjusting to life after having a baby",
    "feeling stuck and without purpose",
    "bullying at school or at work",
    "intrusive thoughts and checking rituals",
    "worries about eating and body image",
    "money worries keeping them up at night",
    "feeling like an impostor at a new job or course",
    "a friendship that is falling apart",
    "living with chronic pain or illness",
    "memories of a frightening event that keep coming back",
    "procrastination and trouble focusing",
    "a partner who is controlling or belittling",
    "thoughts that life is not worth living",
    "homesickness while studying abroad",
    "pressure from social media and comparing themselves to others",
]

AGES = [15, 17, 19, 22, 26, 31, 38, 44, 52, 60, 68, 75]

# (youngest, oldest, situation): a situation is only given to an age it fits.
SITUATIONS = [
    (13, 18, "a secondary-school student"),
    (13, 18, "a teenager whose parents are divorcing"),
    (18, 30, "a university student living away from home"),
    (18, 30, "an unemployed graduate applying for jobs"),
    (22, 34, "a PhD student near the end of their thesis"),
    (22, 60, "a nurse working night shifts"),
    (22, 60, "a software developer working remotely"),
    (20, 50, "a single parent of two young children"),
    (18, 65, "a shop worker on a zero-hours contract"),
    (25, 70, "a small-business owner"),
    (18, 70, "a new immigrant learning the language"),
    (22, 50, "a stay-at-home parent"),
    (18, 60, "a warehouse worker on rotating shifts"),
    (25, 80, "a farmer in a rural area"),
    (58, 90, "a retired teacher living alone"),
    (55, 90, "a recently widowed grandparent"),
]

TONES = [
    "anxious and a little rambling",
    "matter-of-fact, downplaying how bad it is",
    "frustrated and blunt",
    "hesitant, unsure whether they should even be asking",
    "tired and flat",
    "hopeful but overwhelmed",
    "embarrassed and apologetic",
    "confused, asking several questions at once",
]

LENGTHS = [
    "one or two sentences",
    "a short paragraph of three to four sentences",
    "a longer paragraph of six to eight sentences",
]


@dataclass(frozen=True)
class Persona:
    age: int
    situation: str
    tone: str
    length: str


def topic_for(seed: int, index: int) -> str:
    order = list(TOPICS)
    random.Random(f"topics-{seed}").shuffle(order)
    return order[index % len(order)]


def persona_for(seed: int, index: int) -> Persona:
    rng = random.Random(f"persona-{seed}-{index}")  # a str seed is hashed the same every run
    age = rng.choice(AGES)
    fitting = [text for low, high, text in SITUATIONS if low <= age <= high]
    return Persona(age=age, situation=rng.choice(fitting), tone=rng.choice(TONES),
                   length=rng.choice(LENGTHS))
