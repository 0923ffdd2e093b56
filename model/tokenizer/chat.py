"""Prompt formats: how a conversation becomes token ids, and which ids end a reply.

A conversation is a list of messages {"role": "system" | "user" | "assistant", "content": str}.

  llama3  <|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nHi<|eot_id|>
          <|start_header_id|>assistant<|end_header_id|>\\n\\n                  stops: <|eot_id|>
  chatml  <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n            stops: <|im_end|>
  alpaca  the seed project's instruction / input / response prompt          stops: eos
  none    the text as it is (no chat at all)                                 stops: eos

Control tokens are added by id; message text is always encoded with allow_special=False, so a
user who types "<|im_end|>" gets those characters, not the end of their turn. The ids equal
what Hugging Face's apply_chat_template gives, because the template's text between two control
tokens is exactly the text we encode here.
"""

from model.errors import UserError
from model.tokenizer.core import Tokenizer

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{}\n\n### Input:\n{}\n\n### Response:\n{}"
)
# SmolLM2's chat template adds this system message when a conversation has none of its own.
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
ROLES = ("system", "user", "assistant")


def alpaca_prompt(instruction: str, input: str, response: str = "") -> str:
    """The Alpaca prompt; with an empty response it ends where the model should start writing."""
    return ALPACA_PROMPT.format(instruction, input, response)


class ChatFormat:
    """The shared part: resolving control tokens and encoding plain text safely."""
    name = ""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.stop_ids: list[int] = []  # generation ends at any of these

    def encode_prompt(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """The conversation as ids; with add_generation_prompt, followed by the start of the
        assistant's turn so that the model writes the reply next."""
        raise NotImplementedError

    def end_of_turn_ids(self) -> list[int]:
        """The ids that close an assistant reply in training data."""
        raise NotImplementedError

    def _text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, allow_special=False)

    def _control(self, token: str) -> int:
        token_id = self.tokenizer.token_id(token)
        if token_id is None:
            raise UserError(f"Chat format {self.name!r} needs the special token {token}, which "
                            f"{self.tokenizer.source} does not have; choose another chat format.")
        return token_id

    def _stops(self, *ids: int | None) -> list[int]:
        """The given ids and the tokenizer's eos, each once, in that order."""
        stops = []
        for token_id in (*ids, self.tokenizer.eos_id):
            if token_id is not None and token_id not in stops:
                stops.append(token_id)
        return stops


class Llama3Format(ChatFormat):
    """Meta's Llama-3 instruct format. Content is stripped of surrounding whitespace, as both
    Meta's reference code and the Hugging Face template do."""
    name = "llama3"

    def __init__(self, tokenizer: Tokenizer):
        super().__init__(tokenizer)
        self.start_header = self._control("<|start_header_id|>")
        self.begin_of_text = self._control("<|begin_of_text|>")
        self.end_header = self._control("<|end_header_id|>")
        self.eot = self._control("<|eot_id|>")
        self.stop_ids = self._stops(self.eot, self._control("<|end_of_text|>"))

    def _header(self, role: str) -> list[int]:
        return [self.start_header, *self._text(role), self.end_header]

    def encode_prompt(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        ids = [self.begin_of_text]
        for message in check_messages(messages):
            ids += self._header(message["role"])
            ids += self._text("\n\n" + message["content"].strip())
            ids.append(self.eot)
        if add_generation_prompt:
            ids += self._header("assistant") + self._text("\n\n")
        return ids

    def end_of_turn_ids(self) -> list[int]:
        return [self.eot]


class ChatMLFormat(ChatFormat):
    """ChatML, as SmolLM2 (and Qwen) use it. No bos: the template has none."""
    name = "chatml"

    def __init__(self, tokenizer: Tokenizer):
        super().__init__(tokenizer)
        self.im_start = self._control("<|im_start|>")
        self.im_end = self._control("<|im_end|>")
        self.stop_ids = self._stops(self.im_end)
        template = tokenizer.chat_template or ""
        self.default_system = SMOLLM2_DEFAULT_SYSTEM if SMOLLM2_DEFAULT_SYSTEM in template else None

    def encode_prompt(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        messages = check_messages(messages)
        if self.default_system and messages and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.default_system}, *messages]
        ids = []
        for message in messages:
            ids.append(self.im_start)
            ids += self._text(f"{message['role']}\n{message['content']}")
            ids.append(self.im_end)
            ids += self._text("\n")
        if add_generation_prompt:
            ids += [self.im_start, *self._text("assistant\n")]
        return ids

    def end_of_turn_ids(self) -> list[int]:
        return [self.im_end]


class AlpacaFormat(ChatFormat):
    """The seed project's Alpaca prompt, which has no turns; a conversation is fitted in as:

      instruction  the system message; without one, the last user message
      input        the single user message after a system message, or else the earlier turns
                   as lines "User: ..." / "Assistant: ..." (empty when there are none)
      response     the final assistant message when add_generation_prompt is False (then eos
                   follows, as in the seed's training text); otherwise empty
    """
    name = "alpaca"

    def __init__(self, tokenizer: Tokenizer):
        super().__init__(tokenizer)
        if tokenizer.eos_id is None:
            raise UserError(f"Chat format 'alpaca' ends replies with eos, which "
                            f"{tokenizer.source} does not define; set eos_token in tokenizer_config.json.")
        self.stop_ids = [tokenizer.eos_id]

    def encode_prompt(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        turns = check_messages(messages)
        system = None
        if turns and turns[0]["role"] == "system":
            system, turns = turns[0]["content"], turns[1:]
        response = None
        if not add_generation_prompt and turns and turns[-1]["role"] == "assistant":
            response, turns = turns[-1]["content"], turns[:-1]

        if system is not None:
            instruction = system
            single_user = len(turns) == 1 and turns[0]["role"] == "user"
            input_text = turns[0]["content"] if single_user else transcript(turns)
        elif turns and turns[-1]["role"] == "user":
            instruction, input_text = turns[-1]["content"], transcript(turns[:-1])
        else:
            instruction, input_text = "", transcript(turns)

        ids = [self.tokenizer.bos_id] if self.tokenizer.add_bos else []
        ids += self._text(alpaca_prompt(instruction, input_text, response or ""))
        if response is not None:
            ids.append(self.tokenizer.eos_id)
        return ids

    def end_of_turn_ids(self) -> list[int]:
        return [self.tokenizer.eos_id]


class RawFormat(ChatFormat):
    """No chat format: the messages' text, one per line, as the model would read a document."""
    name = "none"

    def __init__(self, tokenizer: Tokenizer):
        super().__init__(tokenizer)
        self.stop_ids = self._stops()

    def encode_prompt(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        ids = [self.tokenizer.bos_id] if self.tokenizer.add_bos else []
        return ids + self._text("\n".join(m["content"] for m in check_messages(messages)))

    def end_of_turn_ids(self) -> list[int]:
        return self.stop_ids[:1]


CHAT_FORMATS = {"llama3": Llama3Format, "chatml": ChatMLFormat, "alpaca": AlpacaFormat,
                "none": RawFormat}


def get_chat_format(tokenizer: Tokenizer, name: str | None = None) -> ChatFormat:
    """The named format, or (name None) the one the tokenizer's special tokens point to."""
    if name is None:
        if tokenizer.token_id("<|start_header_id|>") is not None:
            name = "llama3"
        elif tokenizer.token_id("<|im_start|>") is not None:
            name = "chatml"
        else:
            name = "alpaca"
    if name not in CHAT_FORMATS:
        raise UserError(f"Unknown chat format {name!r}; choose one of {', '.join(CHAT_FORMATS)}.")
    return CHAT_FORMATS[name](tokenizer)


def check_messages(messages: list[dict]) -> list[dict]:
    """The messages, unchanged, after checking each has a known role and text content."""
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise UserError(f"Message {i} needs a role of {', '.join(ROLES)}; got {message!r:.80}.")
        if not isinstance(message.get("content"), str):
            raise UserError(f"Message {i} ({message['role']}) needs its content as a string.")
    return messages


def transcript(turns: list[dict]) -> str:
    """Turns as "User: ..." / "Assistant: ..." lines, for formats that have no turns."""
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns)
