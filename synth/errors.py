"""The exceptions synth raises on purpose.

SynthError is bad input or a refusal the user must fix (a missing key, an unknown model, a broken
file): the CLI prints its message as one line and exits with status 2. synth stands apart from
`model`, so it keeps its own small class instead of model.errors.UserError.

BadReply is a reply that arrived but cannot be used (empty, no score in it): like a dropped
connection, asking again may help, so the retry loop treats it as retryable.
"""


class SynthError(Exception):
    """Bad input or a refusal from the server; the message is one sentence saying what to do."""


class BadReply(Exception):
    """The server answered, but not with something usable; worth asking again."""
