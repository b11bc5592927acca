"""What every stage script shares: logging set-up and the bad-input contract.

``run_main(main)`` runs a script's ``main()``; an :class:`~utils.errors.InputError` (or a
missing optional package) becomes ONE line ``error: <file>: <problem>`` on stderr and exit
status 2, with no traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

from utils.errors import InputError

EXIT_BAD_INPUT = 2


def setup_logging(quiet: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def run_main(main: Callable[[], object]) -> None:
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
        sys.exit(130)
