"""Token counts from the replies' `usage`, and what they cost.

Prices are US dollars per 1M tokens (input, output), from the providers' public price pages when
this table was written; they change, so --price-in/--price-out override them. A model that is
not in the table, or any model on a local server, is counted at 0.
"""

import threading
from dataclasses import dataclass, field

PRICES_PER_1M = {
    # model name prefix: (input $, output $)
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
}


def price_for(model: str) -> tuple[float, float] | None:
    """(input, output) $ per 1M tokens for a model name; dated names like gpt-4o-2024-08-06
    match their family. The longest matching prefix wins, so gpt-4o-mini is not priced as gpt-4o.
    """
    matches = [name for name in PRICES_PER_1M if model.startswith(name)]
    return PRICES_PER_1M[max(matches, key=len)] if matches else None


@dataclass
class UsageMeter:
    """Prompt and completion tokens per model, added to from many worker threads."""

    prompt: dict[str, int] = field(default_factory=dict)
    completion: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self.prompt[model] = self.prompt.get(model, 0) + prompt_tokens
            self.completion[model] = self.completion.get(model, 0) + completion_tokens

    def totals(self) -> tuple[int, int]:
        return sum(self.prompt.values()), sum(self.completion.values())

    def cost(self, *, local: bool, price_in: float | None = None,
             price_out: float | None = None) -> tuple[float, list[str]]:
        """(estimated $, models that had no price and were counted at 0)."""
        if local:
            return 0.0, []
        total, unpriced = 0.0, []
        for model in self.prompt:
            known = price_for(model)
            if known is None and (price_in is None or price_out is None):
                unpriced.append(model)
            p_in = price_in if price_in is not None else (known[0] if known else 0.0)
            p_out = price_out if price_out is not None else (known[1] if known else 0.0)
            total += (self.prompt[model] * p_in + self.completion[model] * p_out) / 1e6
        return total, unpriced
