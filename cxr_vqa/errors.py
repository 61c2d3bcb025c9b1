"""The one base class for mistakes a person can fix: the command lines print it as one line and exit 2, the app
shows it with `gr.Error`. Anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """A mistake in the input, options or environment; str(err) is one line naming the problem and the fix."""
