"""The Llama-3 family, written by hand, and everything needed to load and run it.

    from model import load_model, load_tokenizer

    config.py llama.py       the Llama-3 network       generation.py loss.py  decoding, the loss
    bert.py minilm.py        the sentence encoder      rnn.py                 char-RNN / char-LSTM
    tokenizer/               text <-> ids, chat formats
    quant/                   4-bit NF4 and Linear4bit
    checkpoint/              load_model, safetensors, the embedded GGUF, saving
    hub.py errors.py jsonl.py   shared by every room: hub access, UserError, JSON Lines
"""

from model.errors import UserError


# Both load on first use: `import model.errors` (the project's one error type) then stays free of
# torch, for the rooms that must run without it (the safety lexicon, synth).
def load_model(path_or_id=None, **options):
    """The Llama of a checkpoint: a folder, a hub repo id, or None (the embedded default).
    Options: dtype, device, quantize (None | "none" | "nf4"), compute_dtype, adapter, quiet;
    see model/checkpoint/load.py."""
    from model.checkpoint.load import load_model as load
    return load(path_or_id, **options)


def load_tokenizer(path_or_id=None):
    """A Tokenizer for a file, a model folder or a hub repo id (None: the embedded default)."""
    from model.tokenizer.load import load_tokenizer as _load
    from model.checkpoint.load import resolve_model_dir
    if path_or_id is None:
        path_or_id = resolve_model_dir(None, quiet=True)
    return _load(path_or_id)


__all__ = ["load_model", "load_tokenizer", "UserError"]
