"""The Llama-3 family, written by hand, and everything needed to load and run it.

    from model import load_model, load_tokenizer
"""

from model.errors import UserError
from model.weights import load_model


def load_tokenizer(path_or_id=None):
    """A Tokenizer for a file, a model folder or a hub repo id (None: the embedded default)."""
    from model.tokenizer_files import load_tokenizer as _load
    from model.weights import resolve_model_dir
    if path_or_id is None:
        path_or_id = resolve_model_dir(None, quiet=True)
    return _load(path_or_id)


__all__ = ["load_model", "load_tokenizer", "UserError"]
