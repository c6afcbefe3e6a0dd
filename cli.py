"""`python cli.py ...` from a checkout runs the same Typer app as the installed `repro` command.

The app itself lives in `repro/cli.py` so that it installs inside the `repro` package: a top-level
`cli` module would shadow (or be shadowed by) the `cli` distribution on PyPI.
"""

from repro.cli import main

if __name__ == "__main__":
    main()
