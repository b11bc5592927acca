"""What every stage script shares: logging set-up and the bad-input contract.

``run_main(main)`` runs a script's ``main()``; an :class:`~utils.errors.InputError` (or a
missing optional package) becomes ONE line ``error: <file>: <problem>`` on stderr and exit
status 2, with no traceback. An interrupt (Ctrl-C, or SIGTERM as sent by ``kill``, ``timeout`` and
cluster schedulers) unwinds the stack like an exception, so that every file being written through
:func:`utils.io.atomic_path` is removed and none is left half-written; the exit status is then
128 + the signal number (130, 143).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Callable

from utils.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import argparse

EXIT_BAD_INPUT = 2


def setup_logging(quiet: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def parse_model_stage(parser, missing_hint: str = "") -> "argparse.Namespace":
    """Parse a stage's command line, set up logging and check that ``-m`` names an existing model folder
    (``missing_hint`` is added to the message when it does not)."""
    args = parser.parse_args()
    setup_logging(args.quiet)
    if not args.model_path:
        parser.error("-m/--model_path is required")
    if not os.path.isdir(args.model_path):
        raise InputError(args.model_path, "model folder not found" + (f" ({missing_hint})" if missing_hint else ""))
    return args


def check_stage_options(parser, model_params, *groups) -> None:
    """The usage errors every stage shares: ``-s`` must come from the command line or the model's
    cfg_args, and each option group's ``check()`` must pass (its ValueError becomes ``parser.error``)."""
    if not model_params.source_path:
        parser.error("-s/--source_path is required (no cfg_args in the model folder)")
    try:
        for group in groups:
            group.check()
    except ValueError as exc:
        parser.error(str(exc))


#: the environment variables that configure PyTorch's CUDA caching allocator (the first is the newer name)
ALLOC_CONF_VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")
EXPANDABLE_SEGMENTS = "expandable_segments:True"


def default_cuda_allocator(environ=os.environ) -> bool:
    """Let PyTorch's CUDA caching allocator grow its segments in place (``expandable_segments``)
    unless the user configured the allocator (``PYTORCH_ALLOC_CONF`` / ``PYTORCH_CUDA_ALLOC_CONF``).

    3DGS tensors change size at every densification; with fixed-size segments the cache keeps a
    block of every size they had (fox at 30k: 3.3 GiB seen by nvidia-smi for 0.7 GiB allocated; 28 GiB
    for 3.2 GiB on a 1080p scene). Expandable segments reuse the same memory (docs/performance.md).
    Takes effect only before the process's first CUDA allocation: call it first thing in a
    script's ``main``. Returns whether it set the default."""
    if any(v in environ for v in ALLOC_CONF_VARS):
        return False
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        logging.getLogger(__name__).debug("CUDA already initialised: allocator settings unchanged")
        return False
    environ["PYTORCH_CUDA_ALLOC_CONF"] = EXPANDABLE_SEGMENTS
    return True


EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM (see :func:`run_main`)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def run_main(main: Callable[[], object]) -> None:
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        main()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Terminated:
        print("terminated", file=sys.stderr)
        sys.exit(EXIT_TERMINATED)
    finally:
        signal.signal(signal.SIGTERM, previous)
