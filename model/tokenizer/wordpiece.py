"""BERT's WordPiece tokenizer: text -> [CLS] word pieces [SEP] ids, padded into a batch.

Two stages, as in the original BERT release:

  1. the *basic* tokenizer cleans the text and cuts it into words and punctuation:
       - drop NUL, U+FFFD and control/format characters; every whitespace becomes " "
       - put spaces around CJK ideographs, so each one is a word of its own
       - for an uncased vocabulary: NFD-decompose, drop the accents (category Mn), lowercase
       - split on whitespace, then make every punctuation character a word of its own

  2. *WordPiece* cuts each word into the longest vocabulary pieces, left to right:
         "sleeplessness" -> ["sleep", "##lessness"]   ("##" marks a piece inside a word)
     A word with no full cover (or longer than 100 characters) becomes a single [UNK].

Special-token strings typed in the text ("[SEP]", "[MASK]", ...) are kept as those tokens and
never cleaned or split, which is what the Hugging Face fast tokenizer does too.

On ordinary text the ids equal those of the Hugging Face fast BERT tokenizer. They can differ
for a few hundred rare characters that recent Unicode versions added or reclassified, because
Python's character tables are newer than the reference's.

The vocabulary comes from `vocab.txt` (one piece per line; the line number is the id) or from
the "model.vocab" table of a `tokenizer.json`.
"""

import json
import re
import unicodedata
from pathlib import Path

import torch

from model.errors import UserError

DEFAULT_MAX_LENGTH = 256       # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
MAX_CHARS_PER_WORD = 100       # longer "words" are not worth cutting: they become [UNK]
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# CJK Unified Ideographs and their extensions / compatibility blocks (Unicode code points).
# Japanese kana and Korean hangul are not in these blocks: they are written with spaces or
# split by WordPiece like any other script.
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_control(ch: str) -> bool:
    # Tab, newline and carriage return are whitespace to BERT, not control characters.
    if ch in "\t\n\r":
        return False
    # Unassigned code points (Cn) are kept: the reference tokenizer keeps them too.
    return unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co")


def _is_whitespace(ch: str) -> bool:
    # Called after control characters are gone, so the Unicode space separators are all
    # that remain of the White_Space property besides tab/newline/return.
    return ch in "\t\n\r " or unicodedata.category(ch) in ("Zs", "Zl", "Zp")


def _is_punctuation(ch: str) -> bool:
    # All of ASCII's non-alphanumeric printable characters count ("$", "+", "^", "`" are
    # symbols in Unicode but BERT splits them too), plus every Unicode punctuation class.
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class WordPieceTokenizer:
    """Text to BERT input ids. `batch_encode` gives the padded ids and attention mask."""

    def __init__(self, vocab: dict[str, int], lowercase: bool = True,
                 strip_accents: bool | None = None, max_length: int = DEFAULT_MAX_LENGTH):
        for token in ("[UNK]", "[CLS]", "[SEP]", "[PAD]"):
            if token not in vocab:
                raise UserError(f"the WordPiece vocabulary has no {token} entry; "
                                "use the vocab.txt or tokenizer.json that came with the model")
        if max_length < 3:
            raise UserError(f"max_length {max_length} leaves no room for text between "
                            "[CLS] and [SEP]; use at least 3")
        self.vocab = vocab
        self.lowercase = lowercase
        # BERT's convention: when strip_accents is unset it follows lowercase.
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.max_length = max_length
        self.unk_id = vocab["[UNK]"]
        self.cls_id = vocab["[CLS]"]
        self.sep_id = vocab["[SEP]"]
        self.pad_id = vocab["[PAD]"]
        specials = [t for t in SPECIAL_TOKENS if t in vocab]
        self._special_re = re.compile("(" + "|".join(re.escape(t) for t in specials) + ")")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int | None = None) -> "WordPieceTokenizer":
        """Read vocab.txt or tokenizer.json, the casing flags, and the sequence length.

        The length is `max_seq_length` from sentence_bert_config.json when that file exists
        (sentence-transformers' setting), else 256; an explicit `max_length` wins over both.
        """
        folder = Path(folder)
        vocab = _read_vocab(folder)
        lowercase, strip_accents = True, None
        cfg_path = folder / "tokenizer_config.json"
        if cfg_path.is_file():
            cfg = _read_json(cfg_path)
            lowercase = bool(cfg.get("do_lower_case", lowercase))
            strip_accents = cfg.get("strip_accents", strip_accents)
        elif (folder / "tokenizer.json").is_file():
            norm = _read_json(folder / "tokenizer.json").get("normalizer") or {}
            lowercase = bool(norm.get("lowercase", lowercase))
            strip_accents = norm.get("strip_accents", strip_accents)
        if max_length is None:
            max_length = DEFAULT_MAX_LENGTH
            st_path = folder / "sentence_bert_config.json"
            if st_path.is_file():
                max_length = int(_read_json(st_path).get("max_seq_length", max_length))
        return cls(vocab, lowercase=lowercase, strip_accents=strip_accents, max_length=max_length)

    # ------------------------------------------------------------------ stage 1: basic
    def _clean(self, text: str) -> str:
        out = []
        for ch in text:
            if ch in ("\x00", "\ufffd") or _is_control(ch):
                continue
            if _is_whitespace(ch):
                out.append(" ")
            elif _is_cjk(ch):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        text = "".join(out)
        if self.strip_accents:
            text = "".join(c for c in unicodedata.normalize("NFD", text)
                           if unicodedata.category(c) != "Mn")
        if self.lowercase:
            # Character by character (no context-dependent final-sigma rule), like the
            # reference tokenizer.
            text = "".join(c.lower() for c in text)
        return text

    def basic_tokenize(self, text: str) -> list[str]:
        """Cleaned words and single punctuation characters, in order."""
        words = []
        for chunk in self._clean(text).split(" "):
            current = ""
            for ch in chunk:
                if _is_punctuation(ch):
                    if current:
                        words.append(current)
                    words.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    # ------------------------------------------------------------------ stage 2: WordPiece
    def wordpiece(self, word: str) -> list[str]:
        """Greedy longest-match pieces of one word; ["[UNK]"] when it cannot be covered."""
        if len(word) > MAX_CHARS_PER_WORD:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            piece = None
            while start < end:                      # shrink from the right until it is known
                candidate = word[start:end] if start == 0 else "##" + word[start:end]
                if candidate in self.vocab:
                    piece = candidate
                    break
                end -= 1
            if piece is None:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """All word pieces of `text`, without [CLS]/[SEP] and without truncation."""
        tokens = []
        for i, part in enumerate(self._special_re.split(text)):
            if i % 2 == 1:                           # a special token typed in the text
                tokens.append(part)
                continue
            for word in self.basic_tokenize(part):
                tokens.extend(self.wordpiece(word))
        return tokens

    # ------------------------------------------------------------------ ids
    def encode(self, text: str) -> list[int]:
        """[CLS] + pieces + [SEP] as ids, the pieces cut to fit `max_length`."""
        pieces = self.tokenize(text)[: self.max_length - 2]
        return [self.cls_id] + [self.vocab.get(p, self.unk_id) for p in pieces] + [self.sep_id]

    def windows(self, text: str, size: int, overlap: int) -> list[list[int]]:
        """The whole text as overlapping windows of `size` pieces, each [CLS] ... [SEP].

            pieces  p0 p1 ... p(size-1) | ... p(2*size-overlap-1) | ...
            window  [CLS] p0 .. p(size-1) [SEP],  [CLS] p(size-overlap) .. [SEP],  ...

        Nothing is cut: the last window ends at the last piece. An empty text is one window
        of [CLS] [SEP]. `overlap` pieces are shared so a phrase on a border is whole in one.
        """
        if not 0 <= overlap < size:
            raise ValueError(f"window overlap {overlap} must be in [0, size {size})")
        ids = [self.vocab.get(p, self.unk_id) for p in self.tokenize(text)]
        step = size - overlap
        starts = range(0, max(len(ids) - overlap, 1), step)
        return [[self.cls_id] + ids[s:s + size] + [self.sep_id] for s in starts]

    def batch_encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and a 1/0 attention mask, both (B, T) with T the longest row."""
        rows = [self.encode(t) for t in texts]
        T = max((len(r) for r in rows), default=0)
        input_ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        return input_ids, attention_mask


# ---------------------------------------------------------------------- file reading
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read this JSON file ({e}); replace it with the "
                        "model's original") from None


def _read_vocab(folder: Path) -> dict[str, int]:
    vocab_txt = folder / "vocab.txt"
    if vocab_txt.is_file():
        lines = vocab_txt.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return {token: i for i, token in enumerate(lines)}
    tok_json = folder / "tokenizer.json"
    if tok_json.is_file():
        model = _read_json(tok_json).get("model") or {}
        if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
            raise UserError(f"{tok_json}: not a WordPiece tokenizer (model.type is "
                            f"{model.get('type')!r}); this encoder needs a BERT vocabulary")
        return {token: int(i) for token, i in model["vocab"].items()}
    raise UserError(f"{folder}: no vocab.txt or tokenizer.json here; a BERT model folder "
                    "needs one of them")
