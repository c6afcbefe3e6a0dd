"""The one error type the CLI turns into a single sentence and exit code 2."""


class UserError(Exception):
    """Something the user can fix: a bad name, a bad override, missing data.

    The message is one sentence that says what is wrong and what to do.
    """
