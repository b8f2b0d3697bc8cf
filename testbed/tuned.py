"""Run a module with some of reverserd's named constants changed, or with faults injected.

A few behaviours run on a timer of a minute or more (the periodic retry of quarantined
objects); a test that proves one shortens that timer instead of waiting for it. A test of
recovery from an unexpected exception (a bug, in production) makes a function raise a few
times. As the profiler does, this goes between the interpreter and the module it runs::

    python -m testbed.tuned reverserd.targets.consumer.QUARANTINE_RETRY_S=2 \\
        reverserd.watch.watcher:StreamWatcher._journal!3 -m reverserd run ...

``package.module.NAME=value`` sets a constant, converted to the type it has.
``package.module:Owner.function!N`` makes the first N calls of that function (or method)
raise :class:`InjectedFault`, then lets calls through. A name the module does not have is an
error, so a renamed constant or function fails the test that uses it instead of leaving it
waiting the full time or never failing.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import runpy
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class InjectedFault(RuntimeError):
    """The exception a function made to fail raises: nothing in reverserd expects it."""


def interpreter_args(
    constants: Mapping[str, float] | None = None, faults: Mapping[str, int] | None = None
) -> list[str]:
    """What goes before ``-m reverserd`` to run it with ``constants`` (dotted name -> value)
    and ``faults`` (``module:Owner.function`` -> how many calls fail)."""
    assignments = [f"{name}={value}" for name, value in (constants or {}).items()]
    failures = [f"{name}!{count}" for name, count in (faults or {}).items()]
    return ["-m", "testbed.tuned", *assignments, *failures]


def override(assignment: str) -> None:
    """Apply one ``package.module.NAME=value``."""
    target, separator, text = assignment.partition("=")
    module_name, _, name = target.rpartition(".")
    if not separator or not module_name:
        raise SystemExit(f"testbed.tuned: {assignment!r} is not module.NAME=value")
    module = importlib.import_module(module_name)
    if not hasattr(module, name):
        raise SystemExit(f"testbed.tuned: {module_name} has no {name}")
    setattr(module, name, type(getattr(module, name))(text))


def inject(fault: str) -> None:
    """Apply one ``package.module:Owner.function!N``."""
    target, _, count = fault.partition("!")
    module_name, _, path = target.partition(":")
    if not path or not count.isdigit():
        raise SystemExit(f"testbed.tuned: {fault!r} is not module:Owner.function!N")
    owner: Any = importlib.import_module(module_name)
    *owners, name = path.split(".")
    for step in owners:
        owner = getattr(owner, step)
    original = getattr(owner, name)
    remaining = [int(count)]

    def check() -> None:
        if remaining[0] > 0:
            remaining[0] -= 1
            raise InjectedFault(f"fault injected into {target}")

    failing: Callable[..., Any]
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def failing(*args: Any, **kwargs: Any) -> Any:
            check()
            return await original(*args, **kwargs)

    else:

        @functools.wraps(original)
        def failing(*args: Any, **kwargs: Any) -> Any:
            check()
            return original(*args, **kwargs)

    setattr(owner, name, failing)


def main(argv: Sequence[str]) -> None:
    if "-m" not in argv:
        raise SystemExit("usage: python -m testbed.tuned NAME=VALUE|FUNCTION!N ... -m MODULE ...")
    split = list(argv).index("-m")
    for item in argv[:split]:
        if "=" in item:
            override(item)
        else:
            inject(item)
    module, *arguments = argv[split + 1 :]
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
