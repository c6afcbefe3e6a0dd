"""The errors the CLI turns into a single sentence and an exit code, never a traceback."""


class UserError(Exception):
    """Something the user can fix: a bad name, a bad override, missing data. Exit code 2.

    The message is one sentence that says what is wrong and what to do.
    """

    exit_code = 2


class EnvironmentFailed(UserError):
    """The machine, not the input, stops the command: a full disk, a sandbox the OS does not allow.
    Exit code 1; the sentence names the place and what it needs."""

    exit_code = 1


class RunFailed(UserError):
    """A run that started but cannot finish (its training diverged). Exit code 1; the run directory is
    marked failed (`failed.json`) and never looks finished."""

    exit_code = 1


class Interrupted(UserError):
    """SIGINT or SIGTERM stopped a run (after checkpointing it when it was training). Exit code 128 +
    the signal number (130, 143), as a shell reports a process killed by that signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
