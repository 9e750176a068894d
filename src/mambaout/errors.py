"""Errors a user can cause. The CLI prints their message as one line and exits non-zero."""


class MambaOutError(Exception):
    """A problem with the user's input (model name, path, checkpoint, flag), not a bug."""


class UnknownModelError(MambaOutError, KeyError):
    def __str__(self):  # KeyError would quote the message
        return self.args[0] if self.args else ""


class CheckpointError(MambaOutError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the model."""


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
