"""The one exception type for mistakes a user can make and fix.

Library code raises :class:`StdvsrError` with a message that names the file, flag or value at fault and says
how to fix it. The CLI prints it as a single ``Error: …`` line and exits with status 1 (full traceback only
with ``--debug``). Anything else that escapes is a bug in stdvsr, not the user's input.
"""


import errno


class StdvsrError(Exception):
    """A user-fixable problem: bad path, wrong layout, corrupt frame, odd size, unknown spec."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (how cluster schedulers preempt a job), raised in the main thread so that every long command stops
    as on Ctrl-C: finished steps are saved and the same command continues them."""


def message(error: StdvsrError) -> str:
    """The user's line of a :class:`StdvsrError`, also when it was raised in a DataLoader worker: PyTorch re-raises
    it in the main process with the worker's whole traceback as the message, whose last line is the original."""
    text = str(error)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(f"{StdvsrError.__name__}: ", 1)[-1]
    return text


_OS_ADVICE = {
    errno.ENOSPC: "the disk is full; free space or write elsewhere",
    errno.EDQUOT: "the disk quota is exceeded; free space or write elsewhere",
    errno.EACCES: "permission denied; choose a location you can write to (or read, for inputs)",
    errno.EPERM: "operation not permitted; choose a location you can write to",
    errno.EROFS: "the file system is read-only; choose a writable location",
    errno.ENOTDIR: "a part of the path is a file, not a folder; fix the path",
    errno.EISDIR: "it is a folder where a file is expected; fix the path",
    errno.ENOENT: "it does not exist; check the path",
    errno.ENAMETOOLONG: "the name is too long; use a shorter path",
}


def os_advice(error: OSError) -> str:
    """What happened and what to do, for an :class:`OSError` (without the path)."""
    return _OS_ADVICE.get(error.errno, error.strerror or type(error).__name__)


def os_error(error: OSError) -> str:
    """One line for an :class:`OSError` from the machine (full disk, read-only folder, a file in a folder's place):
    the path, what happened and what to do — these are the user's to fix, not bugs to report."""
    where = " → ".join(str(f) for f in (error.filename, error.filename2) if f) or "a file"
    return f"cannot use {where}: {os_advice(error)}"
