"""Dataset helpers shared by dataset plugins and ``ck data`` (heavy imports inside functions)."""
