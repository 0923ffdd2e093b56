"""Command line: check text or a JSONL file with the safety layer.

    python -m safety "I lost my job. Which NYC bridges are taller than 25 meters?"
    python -m safety --file conversations.jsonl          # one JSON result per line
    python -m safety --screen "You have depression."     # check an assistant's output instead
    python -m safety --respond --locale GB "I want to end it all"
    python -m safety "thanks for everything, you won't hear from me after tonight"

Exit status 0 whatever the verdict; 2 when the input cannot be read (the message names the file
and line).
"""

import argparse
import json
import sys

from model.jsonl import BadLine, jsonl_objects

from .detect import DEFAULT, default_choice, detect, user_turns
from .errors import SafetyError
from .respond import crisis_response, locales
from .screen import screen_output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m safety",
        description="Detect risk in a person's messages, or screen an assistant's output. "
                    "Prints JSON: {level, categories, matches} for detection, "
                    "{safe, reasons, matches, text} with --screen.")
    parser.add_argument("text", nargs="?",
                        help="the text to check (a single user message, or with --screen an "
                             "assistant reply); leave out when using --file")
    parser.add_argument("--file", metavar="F",
                        help="JSONL file, one object per line: {\"messages\": [{\"role\", "
                             "\"content\"}, ...]} for a conversation or {\"text\": ...}; prints "
                             "one JSON result per line")
    parser.add_argument("--screen", action="store_true",
                        help="screen the text as assistant output (methods, doses, diagnoses); "
                             "with --file, a conversation's last assistant message is screened "
                             "against the turns before it")
    parser.add_argument("--respond", action="store_true",
                        help="print the crisis response for the text in --locale (always, so "
                             "the wording can be previewed); with --file, add a \"response\" "
                             "field that holds it for crisis lines and is null otherwise")
    parser.add_argument("--locale", default="US",
                        help=f"locale for crisis resources (default US; known: "
                             f"{', '.join(locales())}; also UK, EU, en-GB style); an unknown "
                             f"one falls back to INTL with a note")
    parser.add_argument("--classifier", action=argparse.BooleanOptionalAction, default=None,
                        help="also ask the trained crisis classifier (safety/classifier.py); "
                             "its score and threshold join the JSON (default: on, unless "
                             "LLAMACARE_SAFETY_CLASSIFIER=0; --no-classifier: the lexicon alone)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.text is None) == (args.file is None):
        parser.error("give either a text argument or --file F, not both or neither")
    args.classifier = default_choice() if args.classifier is None else \
        (DEFAULT if args.classifier else None)
    try:
        if args.text is not None:
            _check_utf8(args.text)
        if args.file is not None:
            for chunk in chunks(_read_jsonl(args.file), FILE_BATCH):
                _prefetch(chunk, args)
                for record in chunk:
                    try:
                        out = _check(record["conversation"], args)
                    except SafetyError as e:
                        raise SafetyError(f"{args.file} line {record['line']}: {e}") from None
                    print(json.dumps(out, ensure_ascii=False))
        elif args.screen:
            print(json.dumps(screen_output(args.text, locale=args.locale).to_dict(),
                             ensure_ascii=False))
        elif args.respond:
            print(crisis_response(detect(args.text, args.classifier), args.locale))
        else:
            print(json.dumps(detect(args.text, args.classifier).to_dict(), ensure_ascii=False))
    except SafetyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _check_utf8(text: str) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates; name them instead of crashing."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SafetyError(f"the text is not valid UTF-8 (at character {e.start + 1}); pass UTF-8 "
                          "text.") from None


FILE_BATCH = 128   # --file lines whose texts the classifier scores in one batched pass


def chunks(records, size: int):
    """Lists of `size` records in order (the last may be shorter), read lazily from an iterable.
    When reading fails (a bad --file line), the records before it come out first, so their
    results are printed before the one-line error, as without batching."""
    chunk = []
    try:
        for record in records:
            chunk.append(record)
            if len(chunk) == size:
                yield chunk
                chunk = []
    except SafetyError:
        if chunk:
            yield chunk
        raise
    if chunk:
        yield chunk


def _prefetch(chunk: list[dict], args) -> None:
    """Batch the classifier over a chunk of --file lines (one pass instead of one per line);
    lines that fail here are checked, and named, one by one in _check."""
    if args.screen or args.classifier != DEFAULT:
        return
    from .learned import default_classifier
    window = default_classifier()
    if window is None:
        return
    conversations = []
    for record in chunk:
        try:
            conversations.append([text for _, text in user_turns(record["conversation"])])
        except SafetyError:
            continue
    window.prefetch(conversations)


def _check(conversation, args) -> dict:
    """One line's result: detection (optionally with a response) or screening."""
    if args.screen:
        if isinstance(conversation, str):
            return screen_output(conversation, locale=args.locale).to_dict()
        last = max((i for i, m in enumerate(conversation) if m.get("role") == "assistant"),
                   default=None)
        if last is None:
            raise SafetyError("--screen needs an assistant message in \"messages\" to screen.")
        return screen_output(str(conversation[last].get("content") or ""),
                             conversation=conversation[:last], locale=args.locale).to_dict()
    result = detect(conversation, args.classifier)
    out = result.to_dict()
    if args.respond:
        out["response"] = crisis_response(result, args.locale) if result.is_crisis else None
    return out


def _read_jsonl(path: str):
    """Yields {"line": n, "conversation": str | list} per non-empty line; SafetyError if bad."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise SafetyError(f"cannot read --file {path}: {e.strerror}; pass an existing JSONL "
                          f"file.") from None
    with f:
        for n, obj in jsonl_objects(f):
            if isinstance(obj, BadLine):
                raise SafetyError(f"{path} line {n} {obj.problem}; write one UTF-8 JSON object "
                                  f"per line.")
            if isinstance(obj.get("messages"), list) and \
                    all(isinstance(m, dict) for m in obj["messages"]):
                yield {"line": n, "conversation": obj["messages"]}
            elif isinstance(obj.get("text"), str):
                yield {"line": n, "conversation": obj["text"]}
            else:
                raise SafetyError(f"{path} line {n}: expected an object with \"messages\" (a "
                                  f"list of {{role, content}}) or \"text\" (a string).")


if __name__ == "__main__":
    sys.exit(main())
