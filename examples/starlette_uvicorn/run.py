"""Starlette under uvicorn with 3 workers sharing sessions.

    python examples/starlette_uvicorn/run.py          # serve on 127.0.0.1 until Ctrl-C
    python examples/starlette_uvicorn/run.py --demo   # log in, read from every worker, log out
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _launch import main

if __name__ == "__main__":
    sys.exit(main(
        [sys.executable, "-m", "uvicorn", "--workers", "3", "--host", "127.0.0.1", "--port", "{port}",
         "--log-level", "warning", "app:app"],
        workers=3,
    ))
