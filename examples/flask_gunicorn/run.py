"""Flask under gunicorn with 4 workers sharing sessions.

    python examples/flask_gunicorn/run.py          # serve on 127.0.0.1 until Ctrl-C
    python examples/flask_gunicorn/run.py --demo   # log in, read from every worker, log out
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _launch import main

if __name__ == "__main__":
    sys.exit(main([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"], workers=4, hub=False))
