"""A command's ``main(argv)`` called in the test's process: for checks of what a command refuses before it
starts any work, without the start-up of another Python (and its imports) per check."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Sequence


def call_main(main: Callable[[Sequence[str]], int | None], argv: Sequence[str], capfd,
              stream: str = "err") -> tuple[int | None, str]:
    """``main(argv)``'s status and what it wrote to stderr (its log lines; ``stream="out"``: to stdout, its
    summary line). The commands configure the root logger (``logging.basicConfig(force=True)``); it is put
    back as it was afterwards."""
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
    return status, getattr(capfd.readouterr(), stream)


@contextmanager
def session_settings_kept(spark):
    """The session's SQL settings as they were before the block: a job's ``main`` run in this process
    applies its settings to the shared session (``get_spark``: the defaults, ``spark.conf`` of the
    config, the Delta confs), which the tests after it must not inherit. The session's own conf object
    is used because some of those keys (``spark.master``, ``spark.jars``) are refused by ``spark.conf``
    yet were set in it."""
    before = spark.conf.getAll
    try:
        yield
    finally:
        conf = spark._jsparkSession.sessionState().conf()
        for key, value in spark.conf.getAll.items():
            if key not in before:
                conf.unsetConf(key)
            elif before[key] != value:
                conf.setConfString(key, before[key])
    assert spark.conf.getAll == before
