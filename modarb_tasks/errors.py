"""The one exception type for bad input anywhere in modarb.

Its message is a single line naming the problem and the fix; the `modarb` CLI prints it as
`modarb: error: <message>` and exits with status 2, without a traceback.
"""


class ModarbError(ValueError):
    """Bad input from the user (a path, a file, an argument, a spec): one line, problem and fix."""
