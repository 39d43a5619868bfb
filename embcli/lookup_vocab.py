"""The vocabulary of a lookup layer (`TextVectorization`, `StringLookup`,
`IntegerLookup`), inline in its config or in the archive's assets
(`assets/<group>/vocabulary.txt`), with its rows laid out as Keras's `IndexLookup` lays
them out: the mask token first (when the layer has one and returns integer ids), then
`num_oov_indices` OOV tokens, then the vocabulary proper.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat
from typing import Any

from embcli.config_graph import INTEGER_LOOKUP, STRING_LOOKUP, TEXT_VECTORIZATION, ConfigLayer
from embcli.errors import BadVocabulary
from embcli.formats.base import ModelFile
from embcli.formats.naming import LAYERS_CONTAINER, TF_KERAS_LAYERS_CONTAINER
from embcli.vocabulary import Vocabulary

VOCABULARY_ASSET = "vocabulary.txt"
TEXT_VECTORIZATION_INNER = "_lookup_layer"
TEXT_VECTORIZATION_SPECIALS = ("", "[UNK]", 1)
DEFAULT_OOV = {STRING_LOOKUP: "[UNK]", INTEGER_LOOKUP: -1}


@dataclass(frozen=True)
class LookupRules:
    mask: Any
    oov: Any
    num_oov: int
    integer: bool

    @property
    def oov_start(self) -> int:
        return 1 if self.mask is not None else 0

    @property
    def specials(self) -> list:
        return [self.mask] * self.oov_start + [self.oov] * self.num_oov


def lookup_rules(layer: ConfigLayer) -> LookupRules | None:
    """How a lookup layer lays out its rows, or None when it does not output ids."""
    config = layer.config
    if config.get("output_mode", "int") != "int" or config.get("invert", False):
        return None
    if layer.class_name == TEXT_VECTORIZATION:
        return LookupRules(*TEXT_VECTORIZATION_SPECIALS, False)
    integer = layer.class_name == INTEGER_LOOKUP
    num_oov = config.get("num_oov_indices", 1)
    if not isinstance(num_oov, int) or isinstance(num_oov, bool) or num_oov < 0:
        return None
    mask: Any = config.get("mask_token")
    oov: Any = config.get("oov_token", DEFAULT_OOV[layer.class_name])
    if integer:
        mask = _as_int(mask)
        oov = _as_int(oov)
    return LookupRules(mask, oov, num_oov, integer)


def _as_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def layer_vocabulary(model: ModelFile, layer: ConfigLayer) -> Vocabulary | None:
    rules = lookup_rules(layer)
    if rules is None:
        return None
    inline = layer.config.get("vocabulary")
    if isinstance(inline, list):
        values, source = inline, f"config:{layer.name}"
    else:
        found = _asset_vocabulary(model, layer, rules)
        if found is None:
            return None
        values, source = found
    if rules.integer:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return None
    elif not all(map(isinstance, values, repeat(str))):
        return None
    specials = rules.specials
    start = len(specials)
    tokens = values[start:] if list(values[:start]) == specials else values
    texts = [str(t) for t in tokens] if rules.integer else list(tokens)  # str: checked above
    return Vocabulary([_text(t) for t in specials] + texts, source, start, layer.name)


def _text(token: Any) -> str:
    return str(token) if token is not None else ""


def _asset_vocabulary(
    model: ModelFile, layer: ConfigLayer, rules: LookupRules
) -> tuple[list, str] | None:
    if layer.group is None:
        return None
    groups = [layer.group]
    if layer.class_name == TEXT_VECTORIZATION:
        groups.append(f"{layer.group}/{TEXT_VECTORIZATION_INNER}")
    groups += [g.replace(LAYERS_CONTAINER, TF_KERAS_LAYERS_CONTAINER) for g in groups]
    for group in groups:
        name = f"{group}/{VOCABULARY_ASSET}"
        data = model.asset(name)
        if data is None:
            continue
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise BadVocabulary(f"assets/{name} is not UTF-8 text") from None
        while lines and lines[-1] == "":
            lines.pop()
        if rules.integer:
            try:
                values: list = [int(line) for line in lines]
            except ValueError:
                raise BadVocabulary(f"assets/{name} holds a line that is not an integer") from None
        else:
            values = lines
        return values, f"asset:{name}"
    return None
