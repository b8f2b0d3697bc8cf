"""Run a module with some of reverserd's named constants set to other values.

A few behaviours run on a timer of a minute or more (the periodic retry of quarantined
objects); a test that proves one shortens that timer instead of waiting for it. As the
profiler does, it goes between the interpreter and the module it runs::

    python -m testbed.tuned reverserd.targets.consumer.QUARANTINE_RETRY_S=2 -m reverserd run ...

Each value is converted to the type the constant has. A name the module does not have is an
error, so a renamed constant fails the test that shortens it instead of leaving it waiting the
full time.
"""

from __future__ import annotations

import importlib
import runpy
import sys
from collections.abc import Mapping, Sequence


def interpreter_args(constants: Mapping[str, float]) -> list[str]:
    """What goes before ``-m reverserd`` to run it with ``constants`` (dotted name -> value)."""
    return ["-m", "testbed.tuned", *(f"{name}={value}" for name, value in constants.items())]


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


def main(argv: Sequence[str]) -> None:
    if "-m" not in argv:
        raise SystemExit("usage: python -m testbed.tuned NAME=VALUE ... -m MODULE ARGS...")
    split = list(argv).index("-m")
    for assignment in argv[:split]:
        override(assignment)
    module, *arguments = argv[split + 1 :]
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
