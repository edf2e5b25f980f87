"""``python -m cruijff_kit`` is ``ck``."""

from cruijff_kit._cli import main

if __name__ == "__main__":
    main()
