"""Continuous batching (model/batch_generation.py and the server on it): requests that decode
together get exactly the tokens each would get alone, join and leave between steps, and give
their slot back when their consumer goes."""

import threading
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch

from assistant import Assistant
from model.batch_generation import BatchDecoder
from model.generation import SamplingConfig, generate
from model.tokenizer.chat import get_chat_format
from tests.server_kit import running_server

PROMPTS = ["I can't sleep before exams.",
           "My friend moved away last month and the evenings feel empty. What could help?",
           "hi",
           "How do I stop going over the same worries at night when I am trying to rest?",
           "Work has been overwhelming.",
           "What is a small thing I can do today to feel a little calmer?"]
SETTINGS = [SamplingConfig(max_new_tokens=20),
            SamplingConfig(max_new_tokens=9, temperature=0.8, seed=3),
            SamplingConfig(max_new_tokens=25, temperature=0.7, top_p=0.9, seed=5),
            SamplingConfig(max_new_tokens=14, top_k=1),
            SamplingConfig(max_new_tokens=3),
            SamplingConfig(max_new_tokens=18, temperature=1.0, top_k=20, seed=11)]


@pytest.fixture(scope="module")
def chat(smollm2_tokenizer):
    return get_chat_format(smollm2_tokenizer)


@contextmanager
def decoding(model, max_batch, max_len):
    """A BatchDecoder for the block, closed after it (its thread ends, its cache goes)."""
    decoder = BatchDecoder(model, max_batch=max_batch, max_len=max_len)
    try:
        yield decoder
    finally:
        decoder.close()


def prompt(chat, text):
    return chat.encode_prompt([{"role": "user", "content": text}])


def run_together(decoder, jobs) -> list[list[int]]:
    """Each (ids, settings) job streamed from its own thread, all at once."""
    out = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(k):
        start.wait()
        out[k] = list(decoder.stream(jobs[k][0], jobs[k][1], jobs[k][2]))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return out


@pytest.mark.slow
def test_requests_decoded_together_get_the_tokens_each_gets_alone(smollm2, chat):
    """Greedy and seeded sampling, different prompt lengths and token budgets, one batch."""
    jobs = [(prompt(chat, p), s, chat.stop_ids) for p, s in zip(PROMPTS, SETTINGS)]
    alone = [generate(smollm2, ids, s, stop).ids for ids, s, stop in jobs]
    with decoding(smollm2, 4, 512) as decoder:   # 6 requests: 2 wait for a slot
        together = run_together(decoder, jobs)
        assert together == alone
        assert decoder.steps < sum(len(t) for t in together)    # they really shared steps
        assert all(slot is None for slot in decoder.slots)


@pytest.mark.slow
def test_a_stop_id_ends_one_request_and_the_others_go_on(smollm2, chat):
    ids = prompt(chat, PROMPTS[0])
    free = generate(smollm2, ids, SamplingConfig(max_new_tokens=12)).ids
    stop = [free[4]]                       # greedy reaches this token at its fifth step
    expected = generate(smollm2, ids, SamplingConfig(max_new_tokens=12), stop).ids
    assert len(expected) < 12
    with decoding(smollm2, 2, 256) as decoder:
        got = run_together(decoder, [(ids, SamplingConfig(max_new_tokens=12), stop),
                                     (ids, SamplingConfig(max_new_tokens=12), ())])
        assert got == [expected, free]


@pytest.mark.slow
def test_closing_a_stream_frees_its_slot_for_the_next_request(smollm2, chat):
    # Computed first: the decoder's thread and generate() must not share the model at once.
    expected = generate(smollm2, prompt(chat, PROMPTS[2]), SamplingConfig(max_new_tokens=4)).ids
    with decoding(smollm2, 1, 256) as decoder:
        first = decoder.stream(prompt(chat, PROMPTS[1]), SamplingConfig(max_new_tokens=200))
        assert next(first) is not None
        first.close()                      # the consumer left after one token
        second = list(decoder.stream(prompt(chat, PROMPTS[2]), SamplingConfig(max_new_tokens=4)))
        assert second == expected
        assert decoder.slots == [None]


@pytest.mark.slow
def test_a_request_that_leaves_while_waiting_is_never_started(smollm2, chat):
    with decoding(smollm2, 1, 256) as decoder:
        busy = decoder.stream(prompt(chat, PROMPTS[0]), SamplingConfig(max_new_tokens=30))
        next(busy)                                      # holds the only slot
        left = decoder.stream(prompt(chat, PROMPTS[1]), SamplingConfig(max_new_tokens=30),
                              cancelled=lambda: True)
        rest = list(busy)
        assert list(left) == [] and len(rest) == 29


@pytest.mark.slow
def test_the_loop_runs_on_the_callers_thread_with_the_same_tokens(smollm2, chat):
    """own_thread=False (how server.serve decodes, on the main thread): this thread runs the loop
    while consumers stream from theirs; close() from a consumer ends run()."""
    jobs = [(prompt(chat, p), s, chat.stop_ids) for p, s in zip(PROMPTS[:3], SETTINGS[:3])]
    alone = [generate(smollm2, ids, s, stop).ids for ids, s, stop in jobs]
    decoder = BatchDecoder(smollm2, max_batch=4, max_len=512, own_thread=False)
    together = []

    def consumers():
        together.extend(run_together(decoder, jobs))
        decoder.close()

    thread = threading.Thread(target=consumers)
    thread.start()
    decoder.run()                          # returns once closed
    thread.join(60)
    assert together == alone and decoder.thread is None and not decoder.running


def test_closing_a_decoder_whose_loop_is_not_running_ends_its_waiting_requests(smollm2, chat):
    decoder = BatchDecoder(smollm2, max_batch=2, max_len=256, own_thread=False)
    stream = decoder.stream(prompt(chat, PROMPTS[0]), SamplingConfig(max_new_tokens=5))
    decoder.close()                        # run() was never called (or was interrupted)
    with pytest.raises(RuntimeError, match="shutting down"):
        next(stream)


def test_a_failing_model_ends_every_request_in_flight_with_its_error(smollm2, chat, monkeypatch):
    with decoding(smollm2, 2, 256) as decoder:
        stream = decoder.stream(prompt(chat, PROMPTS[0]), SamplingConfig(max_new_tokens=30))
        next(stream)

        def broken(*args, **kwargs):
            raise RuntimeError("the model fell over")

        monkeypatch.setattr(decoder, "_step", broken)
        with pytest.raises(RuntimeError, match="fell over"):
            list(stream)
    assert all(layer.self_attn.kv_cache is None for layer in smollm2.layers)   # not left installed


@pytest.mark.slow
def test_sixteen_concurrent_openai_clients_each_get_their_own_answer(smollm2, smollm2_tokenizer, chat):
    """Through the server: 16 requests at once, 8 slots, different prompts, budgets, stop
    strings and seeds; each answer equals what the same request gets on its own."""
    assistant = Assistant(smollm2, smollm2_tokenizer, chat, system_prompt=None)
    requests = []
    for k in range(16):
        requests.append({"messages": [{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}],
                         "max_tokens": 6 + k % 5, "temperature": 0.0 if k % 2 else 0.8,
                         "seed": k, "stop": ["\n\n"] if k % 3 == 0 else None})
    with running_server(assistant, SamplingConfig(max_new_tokens=8), max_batch=8) as httpd:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{httpd.server_address[1]}/v1",
                               api_key="x", max_retries=0, timeout=300)

        def ask(body):
            reply = client.chat.completions.create(model="m", **{k: v for k, v in body.items() if v is not None})
            return reply.choices[0].message.content, reply.usage.completion_tokens

        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(ask, requests))
        alone = [ask(body) for body in requests]      # one after another, same server
        steps = httpd.decoder.steps
    assert together == alone
    assert all(text for text, _ in together)
    assert steps > 0


@torch.inference_mode()
def test_per_row_positions_match_a_single_row_decode(smollm2, chat):
    """The model side: one step of (B, 1) tokens, each row at its own position, gives each row
    the logits a batch-1 step at that position gives."""
    rows = [prompt(chat, p) for p in PROMPTS[:3]]
    expected = []
    for ids in rows:
        smollm2.setup_cache(1, 256)
        smollm2(torch.tensor([ids]), start_pos=0)
        expected.append(smollm2(torch.tensor([[ids[-1]]]), start_pos=len(ids))[0, -1])
    smollm2.setup_cache(3, 256)
    try:
        for r, ids in enumerate(rows):
            smollm2.hidden_states(torch.tensor([ids]), start_pos=0, cache_row=r)
        last = torch.tensor([[ids[-1]] for ids in rows])
        got = smollm2(last, start_pos=torch.tensor([len(ids) for ids in rows]))[:, 0]
    finally:
        smollm2.clear_cache()
    for r in range(3):
        assert torch.allclose(got[r], expected[r], atol=1e-4, rtol=1e-4)
        assert int(got[r].argmax()) == int(expected[r].argmax())


def test_a_request_that_reaches_a_closed_decoder_ends_with_an_error_at_once(smollm2, chat):
    """What the server relies on while it shuts down: a late request is refused, never left
    waiting for a loop that has ended."""
    decoder = BatchDecoder(smollm2, max_batch=1, max_len=64, own_thread=False)
    decoder.close()
    stream = decoder.stream(prompt(chat, PROMPTS[0]), SamplingConfig(max_new_tokens=4))
    got = []

    def consume():
        try:
            next(stream)
        except RuntimeError as e:
            got.append(str(e))

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(10)
    assert got == ["the server is shutting down"]
