"""Instruction/input/output rows -> token ids with a loss mask -> padded batches.

    train, evals, stats = load_train_eval("sample", max_chars=field_char_limit(512))
    print(stats.summary())       # rows kept, lines skipped (and where), fields cut  (data.rows)
    examples, fstats = build_examples(train, tokenizer, "chat", 512)     # data.format
    batcher = Batcher(examples, 4, pad_id_for(tokenizer))                # data.batches
    batch = next(batcher)        # {"input_ids": (B, T), "labels": (B, T)} LongTensors
"""

from data.batches import Batcher, eval_batches, pad_batch, pad_id_for
from data.cap import field_char_limit
from data.format import (IGNORE_INDEX, TEMPLATES, Example, FormatStats, build_examples,
                         format_row)
from data.rows import (DEFAULT_INSTRUCTION, SEED_DATASET, LoadStats, Row, load_rows,
                       load_train_eval, split_rows)

__all__ = [
    "Batcher", "eval_batches", "pad_batch", "pad_id_for", "field_char_limit",
    "IGNORE_INDEX", "TEMPLATES", "Example", "FormatStats", "build_examples", "format_row",
    "DEFAULT_INSTRUCTION", "SEED_DATASET", "LoadStats", "Row", "load_rows", "load_train_eval",
    "split_rows",
]
