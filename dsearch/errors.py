"""The error type the CLI turns into one clear line and a non-zero exit."""


class DsearchError(Exception):
    """Bad input or configuration; the message says what was wrong and what to do."""
