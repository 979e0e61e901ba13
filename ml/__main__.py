"""`python -m ml ...`: see ml/cli.py."""

from ml.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
