"""The one exception type for mistakes a user can make and fix.

Library code raises :class:`StdvsrError` with a message that names the file, flag or value at fault and says
how to fix it. The CLI prints it as a single ``Error: …`` line and exits with status 1 (full traceback only
with ``--debug``). Anything else that escapes is a bug in stdvsr, not the user's input.
"""


class StdvsrError(Exception):
    """A user-fixable problem: bad path, wrong layout, corrupt frame, odd size, unknown spec."""
