"""The one exception type the project raises for bad input.

Scripts catch it and print its message as a single line; everything else is a bug and keeps
its traceback. A message is one sentence that names the file, key or flag and says what to do.
Rooms that need to tell their own apart subclass it: safety.SafetyError, synth.SynthError, and
chat_request.RequestError, which the server answers as an HTTP 400 naming the field.
"""


class UserError(Exception):
    """Bad input from the user: a missing file, a corrupt checkpoint, an unknown flag value."""
