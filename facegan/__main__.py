"""``python -m facegan`` is the ``facegan`` command (what ``torchrun -m facegan`` runs)."""

from facegan.cli import main

if __name__ == "__main__":
    main()
