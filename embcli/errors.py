"""The library's exceptions, all under `EmbcliError`.

A message says what is wrong in words that fit any caller. Where the caller can do
something about it, the error carries a `remedy`: a key that the Python API explains in
its own terms (`str(error)`) and the CLI in terms of its flags (`Error: ...`, exit 1).
"""

from __future__ import annotations

from collections.abc import Mapping

# How a Python caller overrides or avoids each error that has a remedy; `{subject}` is
# the error's subject (a path, say). Each text carries its own leading punctuation.
API_REMEDIES: Mapping[str, str] = {
    "allow_nonfinite": "; pass allow_nonfinite=True to write them",
    "allow_lossy": "; pass allow_lossy=True to write them anyway",
    "force": "; pass force=True to replace it",
    "choose_table": "; choose one by name",
    "any_weight": "; name one of its 2-D weights (Model.weights lists them)",
    "vocab": "; give one as vocab=PATH",
    "recover": "; embcli.recover({subject!r}) restores it",
    "npz_key": "; choose one with key=NAME",
    "metric_l2": " (try metric='l2')",
    "raw": "; read its stored values with raw=True",
    "rows": "; pass rows=... to replace some of them",
}


class EmbcliError(Exception):
    "Base class for every error embcli reports to the user"

    def __init__(
        self, message: str, *, remedy: str | None = None, detail: str = "", subject: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy
        self.detail = detail
        self.subject = subject

    def explain(self, remedies: Mapping[str, str]) -> str:
        """The message, with the remedy worded from `remedies`, then the detail."""
        text = self.message
        if self.remedy is not None and self.remedy in remedies:
            text += remedies[self.remedy].format(subject=self.subject)
        return text + self.detail

    def __str__(self) -> str:
        return self.explain(API_REMEDIES)

    def __reduce__(self):  # keeps the keyword arguments when pickled (multiprocessing)
        return (_rebuild, (type(self), self.message, self.remedy, self.detail, self.subject))


def _rebuild(cls: type[EmbcliError], message: str, remedy, detail: str, subject: str):
    return cls(message, remedy=remedy, detail=detail, subject=subject)


class UnsupportedFormat(EmbcliError):
    "The path is not a model artifact embcli can read"


class UnsafeFile(EmbcliError):
    "The file holds something embcli refuses to follow or read"


class MalformedFile(EmbcliError):
    "The file is damaged or inconsistent"


class NoSuchTable(EmbcliError):
    "No table matches the given name"


class AmbiguousTable(EmbcliError):
    "More than one table matches the given name"


class BadRowSpec(EmbcliError):
    "A row specification cannot be parsed or is out of range"


class BadVectors(EmbcliError):
    "A vector file cannot be used for the requested assignment"


class NonFiniteValues(BadVectors):
    "New values hold NaN or Inf"


class LossyCast(EmbcliError):
    "Values do not fit the table's dtype without loss"


class UnsupportedEdit(EmbcliError):
    "The table is stored in a way embcli cannot edit safely"


class StackedTable(EmbcliError):
    "The table is a stacked, sharded variable whose rows are not one token each"


class VerificationFailed(EmbcliError):
    "The written copy does not read back as intended"


class OutputExists(EmbcliError):
    "The output path exists and replacing it was not asked for"


class MissingDependency(EmbcliError):
    "An optional dependency is needed for this file"


class BadVocabulary(EmbcliError):
    "A vocabulary cannot be read or does not fit the table"


class UnknownToken(EmbcliError):
    "A token is not in the table's vocabulary"


class NoVocabulary(EmbcliError):
    "No vocabulary is known for the table"


class InterruptedEdit(EmbcliError):
    "An in-place edit was killed half done and must be rolled back first"


class ModelClosed(EmbcliError):
    "The model was used after it was closed"


class BadArgument(EmbcliError):
    "An argument to a library function has the wrong type or value"
