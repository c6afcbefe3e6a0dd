"""`python cli.py ...` from a checkout runs the same Typer app as the installed `repro` command.

The app itself lives in `repro/cli.py` so that it installs inside the `repro` package: a top-level
`cli` module would shadow (or be shadowed by) the `cli` distribution on PyPI. For the same reason the
checkout leaves sys.path before anything is imported: its top-level `kernels/` and `experiments/`
folders install as `repro.kernels` and `repro.experiments`, and on sys.path they would shadow the
PyPI packages `kernels` (which transformers imports) and `experiments`.
"""

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]

from repro.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
