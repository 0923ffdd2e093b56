"""Examples -> padded batches: the training stream (shuffled, endless, resumable) and eval.

A batch is a dict of two LongTensors of shape (B, T), T = the longest example in the batch:

    input_ids  token ids, right-padded with pad_id
    labels     the examples' labels, IGNORE_INDEX (-100) on padding

Right padding needs no attention mask for training: attention is causal, so no real token ever
looks at the padding that follows it, and padding carries no label, so it adds nothing to the
loss.

Group-by-length: examples are shuffled, cut into mega-chunks of CHUNK_BATCHES batches, and
sorted by length inside each chunk before being cut into batches, so a batch holds examples of
similar length (less padding, faster steps) while the data still arrives in a random order. The
batches are then shuffled, and the one holding the longest example goes first, so an
out-of-memory error shows up at the first step rather than hours in.

Batcher order is a pure function of (seed, epoch): the position in the stream is just
(epoch, index), which is all a checkpoint needs to resume on exactly the batches an
uninterrupted run would have seen.

Under torchrun (N ranks) the stream is one of global batches of N x batch_size examples, the
same on every rank, and each rank pads and returns only its own contiguous share of each
(rank_share). The shares are disjoint and together are the global batch, so N ranks see the
examples one process with --batch-size N x b would see, in the same steps. A short last batch
can leave a rank nothing; it then gets one padding-only row (no targets, so no loss and a zero
gradient), because every rank must still take part in the step's collectives.
"""

import random

import torch

from data.format import IGNORE_INDEX, Example
from model.errors import UserError

CHUNK_BATCHES = 50  # batches per group-by-length mega-chunk


def pad_id_for(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, else EOS (padding is never learned)."""
    return tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id


def pad_batch(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples to the longest one; returns input_ids and labels, both (B, T)."""
    longest = max(len(ex.input_ids) for ex in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)     # (B, T)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for b, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[b, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        labels[b, :n] = torch.tensor(ex.labels, dtype=torch.long)
    return {"input_ids": input_ids, "labels": labels}


def shuffled_batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices 0..n-1 in a random order, cut into batches (the last one may be smaller)."""
    order = list(range(n))
    rng.shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def length_grouped_batches(lengths: list[int], batch_size: int,
                           rng: random.Random) -> list[list[int]]:
    """Batches of similar-length examples in a random order; see the module docstring."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * CHUNK_BATCHES
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: lengths[i], reverse=True)
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
    batches[0], batches[longest] = batches[longest], batches[0]
    return batches


def rank_share(indices: list[int], rank: int, world_size: int) -> list[int]:
    """Rank `rank`'s contiguous share of a global batch: sizes differ by at most one, the
    first ranks take the extra examples, and the shares in rank order are `indices`."""
    base, extra = divmod(len(indices), world_size)
    start = rank * base + min(rank, extra)
    return indices[start:start + base + (1 if rank < extra else 0)]


def padding_only(pad_id: int) -> Example:
    """A row with no targets: what a rank gets when a short global batch leaves it nothing."""
    return Example(input_ids=[pad_id, pad_id], labels=[IGNORE_INDEX, IGNORE_INDEX])


def shard_batch(examples: list[Example], indices: list[int], pad_id: int, rank: int = 0,
                world_size: int = 1) -> dict[str, torch.Tensor]:
    """This rank's padded share of the global batch `indices` (the whole batch on one rank)."""
    mine = [examples[i] for i in rank_share(indices, rank, world_size)]
    return pad_batch(mine or [padding_only(pad_id)], pad_id)


class Batcher:
    """Training micro-batches forever, epoch after epoch, in an order fixed by (seed, epoch).

        batcher = Batcher(examples, batch_size=4, pad_id=pad_id_for(tok), group_by_length=True)
        batch = next(batcher)                  # {"input_ids": (B, T), "labels": (B, T)}
        state = batcher.state_dict()           # store in the checkpoint
        batcher.load_state_dict(state)         # ... and the stream continues where it stopped

    With rank and world_size (torchrun), batch_size is per rank: the stream is cut into global
    batches of world_size * batch_size and each rank gets its share (module docstring).
    """

    def __init__(self, examples: list[Example], batch_size: int, pad_id: int, seed: int = 3407,
                 shuffle: bool = True, group_by_length: bool = False, rank: int = 0, world_size: int = 1):
        if not examples:
            raise UserError("there are no training examples; check --data.")
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {batch_size}.")
        self.examples = examples
        self.rank, self.world_size = rank, world_size
        self.batch_size = batch_size * world_size   # the global batch: the stream's unit
        self.pad_id = pad_id
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.lengths = [len(ex.input_ids) for ex in examples]
        self.epoch = 0   # position of the next batch: epoch ...
        self.index = 0   # ... and batch index within that epoch
        self._batches = self.epoch_batches(0)

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-len(self.examples) // self.batch_size)  # ceil division

    @property
    def epochs_done(self) -> float:
        """Fractional epochs consumed so far, for logs."""
        return self.epoch + self.index / len(self)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The example indices of every batch of `epoch`, in order."""
        if not self.shuffle:
            return [list(range(i, min(i + self.batch_size, len(self.examples))))
                    for i in range(0, len(self.examples), self.batch_size)]
        rng = random.Random(f"{self.seed}:{epoch}")  # a str seed is hashed the same every run
        if self.group_by_length:
            return length_grouped_batches(self.lengths, self.batch_size, rng)
        return shuffled_batches(len(self.examples), self.batch_size, rng)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        indices = self._batches[self.index]
        self.index += 1
        if self.index == len(self._batches):  # epoch finished: the position moves on now
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = self.epoch_batches(self.epoch)
        return shard_batch(self.examples, indices, self.pad_id, self.rank, self.world_size)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed,
                "batch_size": self.batch_size, "n_examples": len(self.examples),
                "n_tokens": sum(self.lengths), "shuffle": self.shuffle,
                "group_by_length": self.group_by_length}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; the data and batching settings must be the same."""
        mine = self.state_dict()
        for key in ("seed", "batch_size", "n_examples", "n_tokens", "shuffle", "group_by_length"):
            if key in state and state[key] != mine[key]:
                raise UserError(f"the checkpoint's data position was saved with {key}="
                                f"{state[key]} but this run has {mine[key]}; resume with the same "
                                "--data, --max-len, --seed and global batch (--batch-size x ranks).")
        if not 0 <= state["index"] < len(self):
            raise UserError(f"the checkpoint's data position (batch {state['index']}) is past the "
                            f"{len(self)} batches of an epoch; resume with the data it was saved "
                            "with.")
        self.epoch, self.index = state["epoch"], state["index"]
        self._batches = self.epoch_batches(self.epoch)


def eval_batches(examples: list[Example], batch_size: int, pad_id: int, rank: int = 0, world_size: int = 1):
    """Padded batches of `examples` in their order, each example exactly once (over all ranks:
    each rank gets its share of every global batch of world_size * batch_size)."""
    step = batch_size * world_size
    for start in range(0, len(examples), step):
        yield shard_batch(examples, list(range(start, min(start + step, len(examples)))), pad_id,
                          rank, world_size)
