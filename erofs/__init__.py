"""EROFS image writer and reader."""
