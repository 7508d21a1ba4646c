"""The ``batchllm`` command line: one subcommand per module.

To add a subcommand, write a module exposing ``add_parser(subparsers) -> argparse.ArgumentParser`` and
``run(args) -> int`` (the exit status) and list it in SUBCOMMAND_MODULES. Modules are imported when the
parser is built, so keep heavy imports (torch, transformers) inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "batchllm.entrypoints.analyze",
    "batchllm.entrypoints.generate",
    "batchllm.entrypoints.run_batch",
    "batchllm.entrypoints.report",
    "batchllm.entrypoints.bench",
    # register new subcommands here (modules with add_parser(subparsers) and run(args) -> int)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchllm", description="Offline batch LLM inference with global prefix sharing.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in SUBCOMMAND_MODULES:
        module = importlib.import_module(name)
        sub = module.add_parser(subparsers)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args))


if __name__ == "__main__":
    sys.exit(main())
