"""The exceptions synth raises on purpose.

SynthError is bad input or a refusal the user must fix (a missing key, an unknown model, a broken
file): the CLI prints its message as one line and exits with status 2. It is a UserError
(model/errors.py, which imports nothing: synth still runs without torch), the one type every
script catches.

BadReply is a reply that arrived but cannot be used (empty, no score in it): like a dropped
connection, asking again may help, so the retry loop treats it as retryable.
"""

from model.errors import UserError


class SynthError(UserError):
    """Bad input or a refusal from the server; the message is one sentence saying what to do."""


class BadReply(Exception):
    """The server answered, but not with something usable; worth asking again."""
