"""``python -m ganforge`` (also what ``torchrun -m ganforge`` runs)."""

import sys

from ganforge.cli import main

if __name__ == "__main__":
    sys.exit(main())
