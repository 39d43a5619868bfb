"""The library's exceptions. The CLI turns each into `Error: ...` with exit status 1."""


class EmbcliError(Exception):
    "Base class for every error embcli reports to the user"


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


class LossyCast(EmbcliError):
    "Values do not fit the table's dtype without loss"


class UnsupportedEdit(EmbcliError):
    "The table is stored in a way embcli cannot edit safely"


class VerificationFailed(EmbcliError):
    "The written copy does not read back as intended"


class OutputExists(EmbcliError):
    "The output path exists and --force was not given"


class MissingDependency(EmbcliError):
    "An optional dependency is needed for this file"


class BadVocabulary(EmbcliError):
    "A vocabulary cannot be read or does not fit the table"


class UnknownToken(EmbcliError):
    "A token is not in the table's vocabulary"


class NoVocabulary(EmbcliError):
    "No vocabulary is known for the table"


class InterruptedEdit(EmbcliError):
    "An in-place edit was killed half done; `embcli recover` rolls it back"
