"""`python -m runtime serve --model PATH [options]`: run the HTTP server (see runtime/server/launch.py)."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

USAGE = "usage: python -m runtime serve [--model PATH] [options]   (python -m runtime serve --help lists them)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] != "serve":
        print(f"unknown command {argv[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    from runtime.server.launch import main as serve

    return serve(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
