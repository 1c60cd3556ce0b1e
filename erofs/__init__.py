"""EROFS image writer and reader (issue 7)."""
