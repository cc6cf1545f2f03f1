"""tvmq's error type."""


class CompileError(Exception):
    """A model or its inputs cannot be compiled; the message says what and how to fix it."""
