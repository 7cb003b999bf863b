"""The model's errors: refusals of an operation (PrereqError) and events a node cannot read.

Error codes are Ganeti's error types where one fits, so operators and scripts
that know Ganeti recognise them.
"""

WRONG_INPUT = "wrong_input"
WRONG_STATE = "wrong_state"
UNKNOWN_ENTITY = "unknown_entity"
ALREADY_EXISTS = "already_exists"
INSUFFICIENT_RESOURCES = "insufficient_resources"
NOT_UNIQUE = "not_unique"
QUEUE_DRAINED = "queue_drained"
PERMISSION_DENIED = "permission_denied"
FEATURE_LEVEL = "feature_level"

CODES = frozenset({
    WRONG_INPUT, WRONG_STATE, UNKNOWN_ENTITY, ALREADY_EXISTS, INSUFFICIENT_RESOURCES,
    NOT_UNIQUE, QUEUE_DRAINED, PERMISSION_DENIED, FEATURE_LEVEL,
})


class CairnError(Exception):
    """Base of Cairn's own errors."""


class PrereqError(CairnError):
    """An operation's prerequisites are not met; `code` is stable, `message` says what to do."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")

    def ganeti_text(self) -> str:
        """The three-line form Ganeti prints for a prerequisite failure."""
        return ("Failure: prerequisites not met for this operation:\n"
                f"error type: {self.code}, error details:\n{self.message}")


class UndecodableEvent(CairnError):
    """A committed event this node cannot decode: it must stop applying, never skip."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        self.seq = seq
        self.message = message
        where = f"event at seq {seq}: " if seq is not None else ""
        super().__init__(
            f"{where}{message}; this node stops applying the log here (it never skips an event). "
            "Upgrade cairn on this node to a version that knows the event, then restart it.")
