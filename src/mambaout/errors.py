"""Errors a user can cause. The CLI prints their message as one line and exits non-zero."""


class MambaOutError(Exception):
    """A problem with the user's input (model name, path, checkpoint, flag), not a bug."""


class UnknownModelError(MambaOutError, KeyError):
    def __str__(self):  # KeyError would quote the message
        return self.args[0] if self.args else ""


class CheckpointError(MambaOutError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the model."""


class TrainingDiverged(MambaOutError):
    """The loss became NaN or infinite (the command exits with code 3)."""


class WriteError(MambaOutError):
    """A file could not be written (disk full, quota, permission, read-only folder): one line
    naming the file and the operating system's reason."""

    def __init__(self, path, error: BaseException, what: str = ""):
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        other = getattr(error, "filename", None)        # e.g. a file standing where a folder must be
        where = f" ({other})" if other and str(other) != str(path) and ".tmp" not in str(other) else ""
        super().__init__(f"cannot write {what + ' ' if what else ''}{path}: {reason}{where}")
        self.path, self.error = path, error


def first_line(e: BaseException, limit: int = 300, default: str = None) -> str:
    """The first line of an exception's message, cut to `limit` characters; without a message,
    `default` (the exception's type name when None)."""
    lines = str(e).strip().splitlines()
    if lines:
        return lines[0][:limit]
    return type(e).__name__ if default is None else default


def require(module: str, extra: str, purpose: str, package: str = ""):
    """Import an optional dependency, or fail with one line naming the extra that installs it:
    require("onnx", "export", "ONNX export") -> the onnx module, or MambaOutError
    "ONNX export needs the onnx package: pip install 'mambaout[export]'"."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        name = package or module.split(".")[0]
        raise MambaOutError(f"{purpose} needs the {name} package: pip install 'mambaout[{extra}]'") from None
