"""model.generation.sample_next at the edges of its settings: whatever the settings and logits,
it returns a token id and never hands torch.multinomial a NaN."""

import pytest
import torch

from model.generation import MIN_TEMPERATURE, SamplingConfig, sample_next

VOCAB = 50


@pytest.fixture
def logits():
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(0)) * 3


def sample(logits, **settings):
    return sample_next(logits, SamplingConfig(**settings), torch.Generator().manual_seed(1))


def test_top_p_zero_is_greedy(logits):
    assert sample(logits, temperature=1.0, top_p=0.0) == int(torch.argmax(logits))


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, MIN_TEMPERATURE / 2])
def test_temperature_below_the_minimum_is_greedy(logits, temperature):
    assert sample(logits, temperature=temperature) == int(torch.argmax(logits))


def test_temperature_at_the_minimum_still_samples_the_top_token(logits):
    # 1e-5 divides a logit gap of ~0.1 into ~1e4: all the mass is on the most likely token.
    assert sample(logits, temperature=MIN_TEMPERATURE) == int(torch.argmax(logits))


def test_top_p_tinier_than_the_top_token_keeps_the_top_token(logits):
    assert sample(logits, temperature=1.0, top_p=1e-300) == int(torch.argmax(logits))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_decode_greedily_without_error(logits, bad):
    logits = logits.clone()
    logits[7] = bad
    token = sample(logits, temperature=1.0, top_p=0.9)
    assert token == int(torch.argmax(logits))


def test_all_nan_logits_return_a_token_id():
    token = sample(torch.full((VOCAB,), float("nan")), temperature=0.7)
    assert 0 <= token < VOCAB


def test_multinomial_never_sees_a_nan(logits, monkeypatch):
    seen = []
    real = torch.multinomial

    def checking(probs, *args, **kwargs):
        seen.append(bool(torch.isfinite(probs).all()) and float(probs.sum()) > 0)
        return real(probs, *args, **kwargs)

    monkeypatch.setattr(torch, "multinomial", checking)
    nan_logits = logits.clone()
    nan_logits[3] = float("nan")
    for settings in [dict(temperature=1.0, top_p=0.0), dict(temperature=1e-300),
                     dict(temperature=2.0, top_p=1e-9), dict(temperature=1.0, top_k=3, top_p=0.5)]:
        sample(logits, **settings)
        sample(nan_logits, **settings)
    assert all(seen) and seen  # sampled at least once, and only ever from finite probabilities
