"""Continuous batching: many requests decode together, joining and leaving between steps.

A batch-1 decode step is bound by reading the weights, so eight rows cost little more than one.
The decoder owns the model's KV cache, one row ("slot") per request, and runs one loop, on a
thread of its own or on the caller's (run()):

    requests waiting --a free slot?--> prefill the prompt into that slot's cache row (B = 1)
                                        -> its first token
    every active slot --one forward, (slots, 1) tokens, each at its own position--> logits
                      -> each request samples with its own settings and generator; a stop id,
                         its token budget or its consumer leaving frees the slot

Each request gets the tokens one request alone would get: its rows never see another slot's
keys (the attention mask is per row), greedy picks the same argmax, and sampling uses the
request's own torch.Generator seeded like generate_stream's.

    decoder = BatchDecoder(model, max_batch=8, max_len=4096)
    for token in decoder.stream(prompt_ids, SamplingConfig(seed=1), stop_ids):   # any thread
        ...

Which thread decodes matters on a CPU. torch's OpenMP threads run a batched step fastest on the
thread that has used them from the start (the main thread, which loaded the model); a new thread
gets a team of its own, and on 2 cores the two teams make every parallel region slower.
bench/bench_serve.py measures both: the server (server.serve) therefore decodes on the main
thread, with own_thread=False and run(), and answers HTTP on other threads.
"""

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from model.generation import GenerationResult, SamplingConfig, sample_next

_END = object()   # what a finished request's queue receives last


@dataclass
class _Request:
    prompt_ids: list[int]
    cfg: SamplingConfig
    stop: set
    budget: int
    result: GenerationResult
    generator: torch.Generator | None
    out: queue.Queue = field(default_factory=queue.Queue)   # token ids, then _END (or an error)
    gone: Callable[[], bool] | None = None   # asked before the request gets a slot
    cancelled: bool = False
    slot: int = -1
    pos: int = 0          # where the next token's key and value go in the slot's cache row
    last: int = 0         # the last token sampled: the next step's input


class BatchDecoder:
    def __init__(self, model, max_batch: int = 8, max_len: int = 4096, own_thread: bool = True):
        """own_thread=False: no thread is started, and the caller runs the loop with run()."""
        self.model, self.max_batch = model, max_batch
        self.device = model.embed_tokens.weight.device
        # The decoder's own KV cache, one per layer, put into the model only for its own forward
        # passes: the same model can still decode alone (generate_stream) between them.
        self.max_len = model.setup_cache(max_batch, max_len)   # the model's context at most
        self.caches = [layer.self_attn.kv_cache for layer in model.layers]
        model.clear_cache()
        self.slots: list[_Request | None] = [None] * max_batch
        self.waiting: list[_Request] = []
        self.wake = threading.Condition()
        self.steps = 0                       # decode steps run (for tests and benchmarks)
        self.closed = False
        self.running = False                 # a thread is inside run()
        self.thread = None
        if own_thread:
            self.thread = threading.Thread(target=self.run, name="batch-decoder", daemon=True)
            self.thread.start()

    def stream(self, prompt_ids: list[int], cfg: SamplingConfig, stop_ids=(),
               result: GenerationResult | None = None, cancelled=None) -> "_Stream":
        """Yields new token ids like generate_stream. Closing the iterator (or dropping it)
        frees the request's slot at the next step. `cancelled()`, when given, is asked before a
        waiting request gets a slot: True drops it unstarted (the server: "has the client left?")."""
        n_prompt = len(prompt_ids)
        budget = min(cfg.max_new_tokens, self.max_len - n_prompt)
        if budget <= 0:
            raise ValueError(f"the prompt has {n_prompt} tokens; a slot holds {self.max_len}")
        result = result if result is not None else GenerationResult([], False, n_prompt)
        result.prompt_tokens = n_prompt
        generator = None
        if cfg.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        request = _Request(list(prompt_ids), cfg, set(stop_ids), budget, result, generator,
                           gone=cancelled)
        with self.wake:
            if self.closed:   # after close(): nothing would ever answer it
                request.out.put(RuntimeError("the server is shutting down"))
            else:
                self.waiting.append(request)
                self.wake.notify()
        return _Stream(self, request)

    def _cancel(self, request: _Request):
        request.cancelled = True
        with self.wake:
            self.wake.notify()

    # ------------------------------------------------------------------ the decoding thread
    def close(self):
        """Ends the decoding loop once the step in flight is done; requests still waiting or
        decoding end with an error. The model's KV cache is freed."""
        with self.wake:
            self.closed = True
            self.wake.notify()
            if not self.running:   # no loop left to end them (run() was interrupted or never ran)
                self._shut()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()

    def run(self):
        """The decoding loop, until close(): admit waiting requests, prefill them, step every
        active slot once, repeat. Runs on the decoder's own thread, or on the caller's."""
        with self.wake:
            self.running = True
        try:
            self._loop()
        finally:
            with self.wake:
                self.running = False

    def _loop(self):
        while True:
            with self.wake:
                while not self.waiting and not any(self.slots) and not self.closed:
                    self.wake.wait()
                if self.closed:
                    return self._shut()
                self._drop_cancelled()
                admitted = self._admit()
            try:
                with torch.inference_mode():
                    self._install(self.caches)
                    for request in admitted:
                        self._prefill(request)
                    if any(self.slots):
                        self._step()
            except Exception as e:  # a failing model ends every request in flight, with the error
                for i, request in enumerate(self.slots):
                    if request is not None:
                        request.out.put(e)
                        self.slots[i] = None
            finally:
                self._install([None] * len(self.caches))

    def _install(self, caches):
        for layer, cache in zip(self.model.layers, caches):
            layer.self_attn.kv_cache = cache

    def _shut(self):
        for request in self.waiting + [r for r in self.slots if r is not None]:
            request.out.put(RuntimeError("the server is shutting down"))
        self.waiting, self.slots, self.caches = [], [None] * self.max_batch, []

    def _drop_cancelled(self):
        self.waiting = [r for r in self.waiting if not r.cancelled]
        for i, request in enumerate(self.slots):
            if request is not None and request.cancelled:
                self.slots[i] = None

    def _admit(self) -> list[_Request]:
        admitted = []
        for i in range(self.max_batch):
            while self.slots[i] is None and self.waiting:
                request = self.waiting.pop(0)
                if request.gone is not None and request.gone():
                    request.cancelled = True
                    request.out.put(_END)     # left while waiting: nothing generated
                    continue
                request.slot = i
                self.slots[i] = request
                admitted.append(request)
        return admitted

    def _prefill(self, request: _Request):
        ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=self.device)  # (1, T)
        h = self.model.hidden_states(ids, start_pos=0, cache_row=request.slot)[0, -1]    # (dim,)
        request.pos = len(request.prompt_ids)
        self._take(request, self.model.output(h))

    def _step(self):
        active = [r for r in self.slots if r is not None]
        # Slots are filled lowest first, so the step runs rows 0..n-1 only: n = 1 for a lone
        # request. An empty slot below n computes a throwaway row at its position 0.
        n = max(r.slot for r in active) + 1
        tokens = torch.zeros(n, 1, dtype=torch.long, device=self.device)    # (n, 1)
        positions = torch.zeros(n, dtype=torch.long, device=self.device)    # (n,)
        for r in active:
            tokens[r.slot, 0], positions[r.slot] = r.last, r.pos
        logits = self.model(tokens, start_pos=positions)[:, 0]             # (n, vocab)
        self.steps += 1
        for r in active:
            r.pos += 1
            self._take(r, logits[r.slot])

    def _take(self, request: _Request, logits: torch.Tensor):
        """Samples the request's next token from its logits (vocab,), hands it over, and frees
        the slot when the request is done."""
        if request.cancelled:
            self.slots[request.slot] = None
            return
        token = sample_next(logits, request.cfg, request.generator)
        done = token in request.stop
        if done:
            request.result.stopped = True
        else:
            request.result.ids.append(token)
            request.out.put(token)
            request.last = token
            done = len(request.result.ids) == request.budget
        if done:
            request.out.put(_END)
            self.slots[request.slot] = None


class _Stream:
    """One request's tokens as an iterator; close() (or dropping it) gives its slot back."""

    def __init__(self, decoder: BatchDecoder, request: _Request):
        self.decoder, self.request = decoder, request

    def __iter__(self):
        return self

    def __next__(self) -> int:
        item = self.request.out.get()
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        if not self.request.cancelled:
            self.decoder._cancel(self.request)

    def __del__(self):
        self.close()
