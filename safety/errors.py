"""The one exception the safety layer raises on purpose.

A SafetyError is a UserError (model/errors.py, which imports nothing, so the lexicon still runs
without torch): every script catches the one type. The message is one sentence that names the
file, line, key or argument and says what to do; the CLI prints it as one line and exits with 2.
"""

from model.errors import UserError


class SafetyError(UserError):
    """Bad input to the safety layer: an unreadable file, a malformed conversation."""
