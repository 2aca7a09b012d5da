"""The systems the bench compares, each behind the same small interface (see base.py)."""
