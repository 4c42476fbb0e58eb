"""One-line errors for the command-line programs.

A user's mistake (a wrong path, flag value or dataset) should end a program with one line that
names what is wrong, like `e2e_tf.train: error: --top_k=50 exceeds the 33 labels of ...`, not
with a traceback or absl's full flag help. Programming errors still raise with a traceback.
"""

import contextlib
import sys
from collections.abc import Iterator

# What a user's input can raise: bad values, missing or clashing files.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def exit_with_error(program: str, message: object) -> None:
    """Ends `program` (e.g. "e2e_tf.train") with `program: error: message` and exit status 1."""
    sys.exit(f"{program}: error: {message}")


@contextlib.contextmanager
def user_errors_exit(program: str, errors: tuple[type[BaseException], ...] = USER_ERRORS) -> Iterator[None]:
    """Turns `errors` raised inside the block into `exit_with_error(program, error)`."""
    try:
        yield
    except errors as error:
        exit_with_error(program, error)
