"""The `sgflow` command: `sgflow demo` (the main job: a program on the embedded model, CPU, seconds)
and `sgflow serve` (the HTTP server; same flags as `python -m runtime serve`)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv else "demo"
    if command == "demo":
        from sgflow.demo import main as demo_main

        return demo_main(argv)
    if command == "serve":
        from runtime.server.launch import main as serve_main

        return serve_main(argv) or 0
    print(f"usage: sgflow [demo|serve] ...  (unknown command {command!r})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
