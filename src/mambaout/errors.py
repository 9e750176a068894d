"""Errors a user can cause. The CLI prints their message as one line and exits non-zero."""


class MambaOutError(Exception):
    """A problem with the user's input (model name, path, checkpoint, flag), not a bug."""


class UnknownModelError(MambaOutError, KeyError):
    def __str__(self):  # KeyError would quote the message
        return self.args[0] if self.args else ""


class CheckpointError(MambaOutError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the model."""
