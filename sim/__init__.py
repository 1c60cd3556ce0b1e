"""Network simulator running the real node code in virtual time."""
