"""The one exception type the command turns into a one-sentence message instead of a traceback."""


class UserInputError(Exception):
    """Bad input from the user: a missing path, wrong channel count, NaN in data, unknown name.

    The message must be one sentence that names the file, argument or value at fault and says what
    was expected.
    """
