"""CLI verbs that end on an expected error with one line on stderr and exit code 1, never a
traceback (a broker that will not start, a lake another process maintains, ...)."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

Command = Callable[[argparse.Namespace], int]


def one_line_errors(
    prefix: str, *errors: type[Exception], hint: str = ""
) -> Callable[[Command], Command]:
    """Wrap a verb: any of `errors` becomes `<prefix>: <error><hint>` on stderr, exit 1."""

    def wrap(command: Command) -> Command:
        @functools.wraps(command)
        def run(args: argparse.Namespace) -> int:
            try:
                return int(command(args))
            except errors as exc:
                print(f"{prefix}: {exc}{hint}", file=sys.stderr)
                return 1

        return run

    return wrap
