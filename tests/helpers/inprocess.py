"""A command's ``main(argv)`` called in the test's process: for checks of what a command refuses before it
starts any work, without the start-up of another Python (and its imports) per check."""
from __future__ import annotations

import logging
from typing import Callable, Sequence


def call_main(main: Callable[[Sequence[str]], int | None], argv: Sequence[str], capfd) -> tuple[int | None, str]:
    """``main(argv)``'s status and what it wrote to stderr (its log lines). The commands configure the root
    logger (``logging.basicConfig(force=True)``); it is put back as it was afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    capfd.readouterr()
    try:
        status = main(list(argv))
    finally:
        for h in root.handlers:
            if h not in handlers:
                h.flush()
        root.handlers[:] = handlers
        root.setLevel(level)
    return status, capfd.readouterr().err
