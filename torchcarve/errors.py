"""One exception family for everything torchcarve rejects: bad input, bad pipelines, broken graphs."""


class CarveError(Exception):
    """Base of every error torchcarve raises on purpose; `hint` says what to do next."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message}\n  hint: {self.hint}" if self.hint else message


class CaptureError(CarveError):
    """A model could not be turned into IR."""


class UnsupportedOpError(CarveError):
    """An op has no rule for what was asked (lowering, pruning, ...)."""


class VerifyError(CarveError):
    """A graph breaks an IR invariant; the message names the node and the rule."""


class ParseError(CarveError):
    """Text (IR or pipeline) could not be parsed; the message gives line:col."""


class PipelineError(ParseError):
    """A pipeline string names an unknown pass or option."""


class ShapeError(CarveError):
    """Shape inference failed or disagrees with a declared type."""


class FileFormatError(CarveError):
    """A file is missing, unreadable or not what it claims to be."""


class OutputPathError(CarveError):
    """An output path cannot be written as asked (an OS error, a file of another kind, a file we did not write)."""


class OpsetError(UnsupportedOpError):
    """A lowering needs a newer ONNX opset than the one asked for; `needed` is the lowest that works."""

    def __init__(self, message: str, needed: int, hint: str = "") -> None:
        super().__init__(message, hint)
        self.needed = needed
