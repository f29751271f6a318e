"""One exception type for problems a user can fix: the CLI prints its message, never a traceback."""


class UserError(Exception):
    """Bad input or state the user can act on. The message names the file, the problem and the fix."""
