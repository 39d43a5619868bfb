"""keras-rs `DistributedEmbedding`, recognised from config.json as data (keras-rs is
never imported).

What keras-rs 0.4.0 saves (from `keras_rs/src/layers/embedding/`):

- A table placed on the default device is an `EmbedReduce` (a `keras.layers.Embedding`
  subclass) named after its `TableConfig`, held in the layer's dict attribute
  `_default_device_embedding_layers` (keyed by feature path, so a table shared by two
  features is one layer, saved once): `<layer>/_default_device_embedding_layers/
  embed_reduce[_N]/vars/0`, one row per id, like any Embedding.
- With JAX on a TPU with SparseCore, the tables placed there are stacked: the layer's
  own `vars/0, 1, ...` hold, per stack, `var:{stack}:table` of shape `(rows, width)`
  (each table's rows padded to a multiple of 8 x the SparseCore count and its width to a
  multiple of 8, mod-sharded over the SparseCores and concatenated shard by shard), then
  one variable per optimizer slot of the same shape, and last the scalar `iteration`.
  A row of such a variable is not one token of any table.
- With TensorFlow on such a TPU, the tables live in a `TPUEmbedding` outside Keras's
  weights file; the layer saves only a `(1,)` placeholder.

The layer's config lists its tables (`tables`: name, vocabulary_size, embedding_dim,
optimizer, placement) and, for a SparseCore layer, its `table_stacking`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embcli.formats.base import Stacked

DISTRIBUTED_EMBEDDING_CLASS = "DistributedEmbedding"
REGISTERED_PREFIX = "keras_rs>"
DEFAULT_DEVICE_CONTAINER = "_default_device_embedding_layers"
DEFAULT_DEVICE = "default_device"
TABLES_KEY = "tables"
FEATURES_KEY = "feature_configs"
STACKING_KEY = "table_stacking"
# Slot variables per optimizer, from jax-tpu-embedding's optimizer specs (0.1.0).
OPTIMIZER_SLOTS = {
    "sgd": (),
    "adagrad": ("accumulator",),
    "adam": ("momentum", "velocity"),
    "ftrl": ("accumulator", "linear"),
}
STACKED_LAYOUT = (
    "rows are padded, mod-sharded across SparseCores and interleaved with the other "
    "stacked tables' rows"
)
# jax-tpu-embedding's `_get_stack_name`: names longer than this are cut and hashed.
_STACK_NAME_LENGTH = 50
_STACK_HASH_LENGTH = 12


@dataclass(frozen=True)
class TableEntry:
    """One `TableConfig` of the layer's config."""

    name: str
    rows: int | None
    dim: int | None
    placement: str
    optimizer: str | None


@dataclass(frozen=True)
class DistributedLayer:
    """A `DistributedEmbedding` as its config describes it."""

    name: str
    tables: tuple[TableEntry, ...]
    stacking: Any
    trainable: bool

    def table(self, name: str | None) -> TableEntry | None:
        return next((t for t in self.tables if t.name == name), None)

    def off_device(self, on_default_device: set[str]) -> tuple[str, ...]:
        """The tables not on the default device: placed elsewhere by the config, or left
        to `auto` and absent from the default-device layers."""
        return tuple(
            t.name
            for t in self.tables
            if t.placement != DEFAULT_DEVICE and t.name not in on_default_device
        )


def distributed_layer(
    class_name: str | None, config: dict | None, registered_name: str | None, name: str
) -> DistributedLayer | None:
    """The `DistributedEmbedding` a config entry describes, or None."""
    if class_name != DISTRIBUTED_EMBEDDING_CLASS or not isinstance(config, dict):
        return None
    if registered_name is not None and not registered_name.startswith(REGISTERED_PREFIX):
        return None
    tables = config.get(TABLES_KEY)
    if not isinstance(tables, list) or FEATURES_KEY not in config:
        return None
    entries = []
    for table in tables:
        if not isinstance(table, dict) or not isinstance(table.get("name"), str):
            continue
        entries.append(
            TableEntry(
                name=table["name"],
                rows=_integer(table.get("vocabulary_size")),
                dim=_integer(table.get("embedding_dim")),
                placement=str(table.get("placement", "auto")),
                optimizer=_optimizer_name(table.get("optimizer")),
            )
        )
    return DistributedLayer(
        name=name,
        tables=tuple(entries),
        stacking=config.get(STACKING_KEY, "auto"),
        trainable=config.get("trainable", True) is not False,
    )


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _optimizer_name(value: Any) -> str | None:
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, dict) and isinstance(value.get("class_name"), str):
        return value["class_name"].lower()
    return None


def is_default_device_table(
    layer: DistributedLayer, container: str, saved_name: str | None
) -> bool:
    """Whether a sublayer group of the layer is one of its default-device tables."""
    return container == DEFAULT_DEVICE_CONTAINER and layer.table(saved_name) is not None


def stack_name(tables: list[str]) -> str:
    """The name jax-tpu-embedding gives a stack of these tables, in this order."""
    name = "_".join(tables)
    if len(name) <= _STACK_NAME_LENGTH:
        return name
    import hashlib

    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:_STACK_HASH_LENGTH]
    return name[:_STACK_NAME_LENGTH] + "..." + digest


def _stacks(layer: DistributedLayer, held: tuple[str, ...]) -> list[list[str]] | None:
    """The stacks the config fixes for certain: one per table when stacking is off or
    only one table is held, else an explicit single list of tables covering them."""
    if len(held) == 1:
        return [[held[0]]]
    if not held:
        return None
    stacking = layer.stacking
    if isinstance(stacking, list) and stacking and all(isinstance(s, str) for s in stacking):
        stacking = [stacking]
    if (
        isinstance(stacking, list)
        and len(stacking) == 1
        and isinstance(stacking[0], list)
        and sorted(stacking[0]) == sorted(held)
    ):
        return [list(stacking[0])]
    return None


def stacked_variables(
    layer: DistributedLayer, matrices: int, on_default_device: set[str]
) -> list[Stacked]:
    """What each of the layer's own 2-D variables is, in stored order.

    Each stack saves its table and then its optimizer's slots; where every held table
    uses one known optimizer and the count fits, each variable's role is known, and its
    name where the stack is known (a single stack the config fixes)."""
    held = layer.off_device(on_default_device)
    optimizers = {layer.table(name).optimizer for name in held}  # type: ignore[union-attr]
    slots: tuple[str, ...] | None = None
    if len(optimizers) == 1:
        slots = OPTIMIZER_SLOTS.get(next(iter(optimizers)) or "")
        if slots is not None and not layer.trainable:
            slots = ()
    group = 1 + len(slots) if slots is not None else 0
    if not group or matrices % group:
        return [Stacked(layer.name, held, "unknown", None, STACKED_LAYOUT)] * matrices
    stacks = _stacks(layer, held)
    if stacks is not None and len(stacks) * group != matrices:
        stacks = None
    found = []
    for position in range(matrices):
        stack, slot = divmod(position, group)
        holds = tuple(stacks[stack]) if stacks is not None else held
        variable = f"var:{stack_name(stacks[stack])}:table" if stacks is not None else None
        if slot and variable is not None and slots is not None:
            variable = f"{variable}:slot:{slots[slot - 1]}"
        found.append(
            Stacked(layer.name, holds, "slot" if slot else "table", variable, STACKED_LAYOUT)
        )
    return found


def refusal(table_name: str, stacked: Stacked) -> str:
    """Why rows of a stacked variable are not read or written."""
    what = "an optimizer slot of a" if stacked.role == "slot" else "a"
    holds = ", ".join(stacked.holds) or "its SparseCore tables"
    return (
        f"{table_name} is {what} stacked SparseCore variable of DistributedEmbedding "
        f"{stacked.layer!r} holding {holds}: its {stacked.layout}, so a row is not one "
        "token; embcli does not read or write it row by row"
    )
