"""The one error a connector raises: its source cannot be read completely."""


class SourceError(RuntimeError):
    """The source cannot be read completely; the run must fail rather than publish part of it."""
