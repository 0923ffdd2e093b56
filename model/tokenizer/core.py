"""Tokenizers: one interface over the three kinds of files Llama-family models ship.

  kind                      file                                  run by
  ------------------------  ------------------------------------  -------------
  Llama-3 tiktoken          tokenizer.model (text: "base64 rank")  tiktoken
  Hugging Face BPE          tokenizer.json (byte-level BPE)        tiktoken, after conversion
  sentencepiece (Llama-2)   tokenizer.model (protobuf)             sentencepiece

Byte-level BPE in one paragraph: text is cut into pieces by a regex (words, numbers, runs of
spaces), each piece is turned into UTF-8 bytes, and pairs of neighbouring tokens are merged,
lowest rank first, until no pair is in the vocabulary. tiktoken does exactly this, so a
tokenizer.json only has to be translated: its tokens are written in a printable stand-in
alphabet (one character per byte, see model/tokenizer/hf_json.py) and its merge list gives the ranks.

`load_tokenizer(path_or_id)` (model/tokenizer/load.py) finds the file (in a folder or on the
Hugging Face hub) and picks the kind. Special tokens (`<|eot_id|>`, `<|im_end|>`, ...) are only recognised in text when the
caller asks for it (`allow_special=True`), so user text can never smuggle in a control token.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import regex  # like `re`, but knows the \p{L} (letter) and \p{N} (number) classes
import sentencepiece
import tiktoken

from model.errors import UserError

# How Llama-3 cuts text into pieces before merging: contractions, a word with at most one
# leading non-letter, numbers of at most three digits, punctuation runs, newlines, spaces.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# GPT-2's pattern, which a tokenizer.json asks for with ByteLevel(use_regex=true).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

LLAMA3_NUM_BASE_TOKENS = 128000  # lines in Llama-3's tokenizer.model; special ids follow
LLAMA3_SPECIAL_TOKENS = [  # ids 128000, 128001, ... in this order
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]  # 246 more: 256 in all

# What a folder may hold, in the order we prefer it (tokenizer.json carries its special tokens).


@dataclass
class TokenizerConfig:
    """The few settings that live beside the vocabulary (tokenizer_config.json)."""
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    add_bos: bool | None = None      # does HF's tokenizer(text) put bos first? None: not said
    chat_template: str | None = None


class Tokenizer:
    """What every kind offers. Subclasses supply `_encode_ordinary` and `decode_bytes`."""

    def __init__(self, source: str, special_tokens: dict[str, int], vocab_size: int,
                 config: TokenizerConfig):
        self.source = source                      # the file, for error messages
        self.special_tokens = special_tokens      # {"<|eot_id|>": 128009, ...}
        self.vocab_size = vocab_size
        self.bos_id = self._config_token_id(config.bos_token, "bos_token")
        self.eos_id = self._config_token_id(config.eos_token, "eos_token")
        self.pad_id = self._config_token_id(config.pad_token, "pad_token")
        self.add_bos = bool(config.add_bos) and self.bos_id is not None
        self.chat_template = config.chat_template
        # Longest first, so that a special token that starts another one never wins early.
        names = sorted(special_tokens, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None

    def _config_token_id(self, token: str | None, key: str) -> int | None:
        if token is None:
            return None
        if token not in self.special_tokens:
            raise UserError(f"{key} {token!r} in the tokenizer config is not a special token of "
                            f"{self.source}; fix {key} in tokenizer_config.json.")
        return self.special_tokens[token]

    def token_id(self, token: str) -> int | None:
        """The id of a special token such as "<|eot_id|>", or None if this tokenizer lacks it."""
        return self.special_tokens.get(token)

    def encode(self, text: str, bos: bool = False, eos: bool = False,
               allow_special: bool = False) -> list[int]:
        """Text -> ids. With allow_special, special-token strings in the text become their ids;
        without it they are ordinary text (the safe choice for anything a user typed)."""
        ids = [self._required_id(self.bos_id, "bos")] if bos else []
        if allow_special and self._special_re is not None:
            # split() with a group alternates: text, special, text, special, ..., text
            for i, part in enumerate(self._special_re.split(text)):
                if i % 2 == 1:
                    ids.append(self.special_tokens[part])
                elif part:
                    ids.extend(self._encode_ordinary(part))
        else:
            ids.extend(self._encode_ordinary(text))
        if eos:
            ids.append(self._required_id(self.eos_id, "eos"))
        return ids

    def _required_id(self, token_id: int | None, what: str) -> int:
        if token_id is None:
            raise UserError(f"{self.source} defines no {what} token; set {what}_token in "
                            "tokenizer_config.json beside it.")
        return token_id

    def decode(self, ids: list[int]) -> str:
        """Ids -> text; bytes that are not (yet) valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def _encode_ordinary(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode_bytes(self, ids: list[int]) -> bytes:
        """Ids -> raw bytes, where decode_bytes(a + b) == decode_bytes(a) + decode_bytes(b), so a
        stream can add one token at a time and print only once the bytes are complete UTF-8."""
        raise NotImplementedError

    def _unknown_id(self, token_id: int) -> UserError:
        return UserError(f"Token id {token_id} is not in {self.source} (vocab size "
                         f"{self.vocab_size}); the model and the tokenizer do not belong together.")


class BPETokenizer(Tokenizer):
    """Byte-level BPE run by tiktoken: the Llama-3 file as it is, a tokenizer.json converted.

    `ranks` maps token bytes to merge priority. `pattern` is the piece-cutting regex tiktoken
    applies; `pre_split` are regexes applied before it, one after the other, for tokenizer.json
    files that chain several pre-tokenizers. When ranks are not the model's ids, `rank_to_id`
    translates them.
    """

    def __init__(self, source: str, ranks: dict[bytes, int], pattern: str,
                 special_tokens: dict[str, int], config: TokenizerConfig,
                 pre_split: list[str] | None = None, rank_to_id: list[int] | None = None,
                 token_bytes: dict[int, bytes] | None = None):
        self._tiktoken = tiktoken.Encoding(Path(source).name, pat_str=pattern,
                                           mergeable_ranks=ranks, special_tokens={})
        self._pre_split = [regex.compile(p) for p in pre_split or []]
        self._rank_to_id = rank_to_id
        # Some vocabularies lack a few byte values (control characters, bytes UTF-8 never uses).
        self._missing_bytes = bytes(b for b in range(256) if bytes([b]) not in ranks)
        self._last_split = regex.compile(pattern)
        if token_bytes is None:  # ranks are ids
            token_bytes = {rank: token for token, rank in ranks.items()}
        for name, token_id in special_tokens.items():
            token_bytes[token_id] = name.encode("utf-8")
        self._token_bytes = token_bytes
        super().__init__(source, special_tokens, max(token_bytes) + 1, config)

    def _encode_ordinary(self, text: str) -> list[int]:
        pieces = [text]
        for splitter in self._pre_split:
            pieces = [part for piece in pieces for part in splitter.findall(piece)]
        if self._missing_bytes and self._has_missing_bytes(text):
            ranks = self._encode_without_missing_bytes(pieces)
        else:
            ranks = [r for piece in pieces for r in self._tiktoken.encode_ordinary(piece)]
        if self._rank_to_id is None:
            return ranks
        return [self._rank_to_id[r] for r in ranks]

    def _has_missing_bytes(self, text: str) -> bool:
        data = text.encode("utf-8", errors="surrogatepass")
        return len(data.translate(None, self._missing_bytes)) != len(data)

    def _encode_without_missing_bytes(self, pieces: list[str]) -> list[int]:
        """The slow path, for text with a byte the vocabulary lacks. Hugging Face's BPE drops
        such a byte after cutting the piece and before merging, so its neighbours may merge."""
        ranks = []
        for piece in pieces:
            for part in self._last_split.findall(piece):
                data = part.encode("utf-8", errors="surrogatepass").translate(None, self._missing_bytes)
                if data:
                    ranks.extend(self._tiktoken._encode_single_piece(data))  # merge, no regex
        return ranks

    def decode_bytes(self, ids: list[int]) -> bytes:
        try:
            return b"".join(self._token_bytes[i] for i in ids)
        except KeyError as err:
            raise self._unknown_id(err.args[0]) from None


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model (Llama-2 family), run by the sentencepiece package.

    decode() is sentencepiece's own (it drops control tokens and the space in front of the first
    word). decode_bytes() turns each piece into its bytes ("▁" -> space, "<0x0A>" -> newline) and
    keeps every space, because a stream decodes one token at a time. Special tokens are the
    control pieces (<s>, </s>) and <unk>; sentencepiece itself never reads those from text.
    """

    def __init__(self, source: str, config: TokenizerConfig | None):
        self._sp = sentencepiece.SentencePieceProcessor(model_file=source)
        sp = self._sp
        special_tokens, self._piece_bytes = {}, []
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if sp.is_control(i) or sp.is_unknown(i):
                special_tokens[piece] = i
            if sp.is_byte(i):               # "<0xE2>": one raw byte
                self._piece_bytes.append(bytes([int(piece[3:-1], 16)]))
            elif sp.is_control(i):          # <s>, </s>: not text
                self._piece_bytes.append(b"")
            elif sp.is_unknown(i):
                self._piece_bytes.append(" \u2047 ".encode())  # what sentencepiece prints
            else:
                self._piece_bytes.append(piece.replace("\u2581", " ").encode("utf-8"))
        config = config or TokenizerConfig()
        if config.add_bos is None:
            config.add_bos = True  # Llama-2 starts every sequence with <s>
        for key in ("bos", "eos", "pad"):  # the model file knows its own ids; config overrides
            token_id = getattr(sp, f"{key}_id")()
            if getattr(config, f"{key}_token") is None and token_id >= 0:
                setattr(config, f"{key}_token", sp.id_to_piece(token_id))
        super().__init__(source, special_tokens, sp.get_piece_size(), config)

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        self.decode_bytes(ids)  # the same check for ids out of range
        return self._sp.decode(list(ids))

    def decode_bytes(self, ids: list[int]) -> bytes:
        try:
            return b"".join(self._piece_bytes[i] for i in ids)
        except IndexError:
            bad = next(i for i in ids if not 0 <= i < len(self._piece_bytes))
            raise self._unknown_id(bad) from None
