"""tvmq's error type."""


class CompileError(Exception):
    """A model or its inputs cannot be compiled; the message says what and how to fix it."""


class CalibrationWarning(UserWarning):
    """The calibration data looks degenerate (constant, repeated samples, a tensor with a zero
    range): the ranges it sets may not fit real inputs."""
