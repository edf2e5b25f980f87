"""``python -m cruijff_kit`` is ``ck``."""

from cruijff_kit.cli import main

if __name__ == "__main__":
    main()
