"""What a detection says: a level, and the risk categories behind it. Shared by the lexicon's
rules (detect.py) and the trained classifier (classifier.py), which names one category too."""

LEVELS = ("none", "concern", "crisis")
RISK_CATEGORIES = ("suicidal_ideation", "self_harm", "harm_to_others", "abuse",
                   "medical_emergency")
