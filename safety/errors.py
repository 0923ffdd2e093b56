"""The one exception the safety layer raises on purpose.

safety is used by light tools that must not pull in `model` (and with it torch), so it keeps its
own small class instead of model.errors.UserError. The message is one sentence that names the
file, line, key or argument and says what to do; the CLI prints it as one line and exits with 2.
"""


class SafetyError(Exception):
    """Bad input to the safety layer: an unreadable file, a malformed conversation."""
