"""Reading a Hugging Face tokenizer.json (byte-level BPE) into a tiktoken-run BPETokenizer.

A tokenizer.json writes each token in GPT-2's printable stand-in alphabet (one character per
byte) and lists its merges in priority order. tiktoken wants raw bytes and a rank per token, so
the translation is: stand-in characters -> bytes, merge position -> rank, and the pre-tokenizer's
steps (Split regexes, ByteLevel's GPT-2 regex, individual Digits) -> one regex.
"""

import json
from pathlib import Path

import regex

from model.errors import UserError
from model.tokenizer.core import GPT2_PATTERN, BPETokenizer, TokenizerConfig


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's stand-in alphabet: one printable character for each byte value.

    Bytes that are already printable stand for themselves ("a" is byte 97); the other 68 (control
    characters, space, and a few Latin-1 ones) take characters from U+0100 on, in byte order,
    which is why a space appears as "Ġ" (U+0120) in a tokenizer.json.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    alphabet, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            alphabet[chr(byte)] = byte
        else:
            alphabet[chr(256 + extra)] = byte
            extra += 1
    return alphabet


def load_tokenizer_json(file: Path, config: TokenizerConfig | None) -> BPETokenizer:
    try:
        spec = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{file} is not valid JSON ({err}); download it again.") from None
    model = spec.get("model") or {}

    def refuse(key, value):
        raise UserError(f"{file}: {key} = {json.dumps(value)} is not supported (only byte-level "
                        "BPE as in Llama-3 and SmolLM2); use a tokenizer of that kind.")

    if model.get("type") != "BPE":
        refuse("model.type", model.get("type"))
    for key, allowed in [("dropout", (None, 0)), ("byte_fallback", (None, False)),
                         ("continuing_subword_prefix", (None, "")), ("end_of_word_suffix", (None, ""))]:
        if model.get(key) not in allowed:
            refuse(f"model.{key}", model.get(key))
    if spec.get("normalizer") is not None:
        refuse("normalizer", spec["normalizer"])

    # Added tokens are the special tokens; they are matched in raw text, never merged.
    special_tokens = {}
    for token in spec.get("added_tokens", []):
        for option in ("lstrip", "rstrip", "single_word"):
            if token.get(option):
                refuse(f"added_tokens[{token['content']!r}].{option}", True)
        special_tokens[token["content"]] = token["id"]
    special_ids = set(special_tokens.values())

    pre_split = _pre_tokenizer_patterns(spec.get("pre_tokenizer"), refuse)
    pattern = pre_split.pop() if pre_split else r"[\s\S]+"  # no split: the text is one piece

    # Ranks. tiktoken merges the neighbouring pair whose joined bytes have the lowest rank, so
    # a token's rank is the position of the first merge that makes it. Single bytes are never
    # the result of a merge; their rank only has to be unique.
    first_merge = {}
    for i, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge  # "a b" or ["a", "b"]
        first_merge.setdefault(left + right, i)
    ignore_merges = bool(model.get("ignore_merges"))  # look whole pieces up first, as tiktoken does

    alphabet = _byte_alphabet()
    token_bytes, mergeable = {}, []   # mergeable: (priority, id, bytes)
    for text, token_id in model.get("vocab", {}).items():
        if token_id in special_ids:
            continue
        try:
            data = bytes(alphabet[ch] for ch in text)
        except KeyError:
            refuse(f"model.vocab[{text!r}]", "a token outside the byte-level alphabet")
        token_bytes[token_id] = data
        if len(data) == 1:
            mergeable.append((-1, token_id, data))
        elif text in first_merge:
            mergeable.append((first_merge[text], token_id, data))
        elif ignore_merges:  # reachable only by whole-piece lookup, after every merged token
            mergeable.append((len(first_merge), token_id, data))
        # else: no merge makes it and whole pieces are not looked up, so it is never produced
    if not token_bytes:
        refuse("model.vocab", {})

    mergeable.sort()
    merged_ids = [token_id for priority, token_id, _ in mergeable if priority >= 0]
    if all(a < b for a, b in zip(merged_ids, merged_ids[1:])):
        ranks = {data: token_id for _, token_id, data in mergeable}  # ids already in merge order
        rank_to_id = None
    else:
        ranks = {data: rank for rank, (_, _, data) in enumerate(mergeable)}
        rank_to_id = [token_id for _, token_id, _ in mergeable]

    config = config or TokenizerConfig()
    first_special = _post_processor_bos(spec.get("post_processor"))
    if config.bos_token is None:
        config.bos_token = first_special
    if config.add_bos is None:
        config.add_bos = first_special is not None and first_special == config.bos_token
    if config.eos_token is None:  # no tokenizer_config.json: the usual names
        config.eos_token = next((t for t in ("<|end_of_text|>", "</s>", "<|endoftext|>")
                                 if t in special_tokens), None)
    return BPETokenizer(str(file), ranks, pattern, special_tokens, config,
                        pre_split=pre_split, rank_to_id=rank_to_id, token_bytes=token_bytes)


def _pre_tokenizer_patterns(step: dict | None, refuse) -> list[str]:
    """The pre_tokenizer as a list of regexes, applied one after the other. Each regex matches
    every character of its input, so that its matches are the pieces (tiktoken's convention)."""
    if step is None:
        return []
    kind = step.get("type")
    if kind == "Sequence":
        return [p for inner in step.get("pretokenizers", []) for p in _pre_tokenizer_patterns(inner, refuse)]
    if kind == "ByteLevel":  # bytes -> stand-in alphabet, which our conversion already undid
        if step.get("add_prefix_space"):
            refuse("pre_tokenizer ByteLevel.add_prefix_space", True)
        return [GPT2_PATTERN] if step.get("use_regex", True) else []
    if kind == "Digits":
        return [r"\p{N}|\P{N}+" if step.get("individual_digits") else r"\p{N}+|\P{N}+"]
    if kind == "Split":
        if step.get("behavior") != "Isolated" or step.get("invert"):
            refuse("pre_tokenizer Split behavior/invert", [step.get("behavior"), step.get("invert")])
        pattern = step.get("pattern", {})
        found = pattern["Regex"] if "Regex" in pattern else regex.escape(pattern.get("String", ""))
        # Isolated: each match is a piece and so is each stretch between matches.
        return [rf"(?:{found})|(?:(?!(?:{found}))[\s\S])+"]
    refuse("pre_tokenizer type", kind)


def _post_processor_bos(step: dict | None) -> str | None:
    """The special token HF's post-processor puts first (Llama-3: <|begin_of_text|>), if any."""
    if not step:
        return None
    if step.get("type") == "Sequence":
        found = [_post_processor_bos(inner) for inner in step.get("processors", [])]
        return next((f for f in found if f), None)
    if step.get("type") == "TemplateProcessing" and step.get("single"):
        first = step["single"][0]
        if "SpecialToken" in first:
            return first["SpecialToken"]["id"]
    return None
