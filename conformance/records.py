"""The trace's record kinds: the fields each must carry (spec/TRACE.md, RKC-TR-3) and,
made from those tables, one msgspec Struct per kind and a decoder for a line of any kind.

The decoder does in one C pass what `json` plus `Checker._shape` do in Python: parse a
line and check its envelope and fields. What it takes, `_shape` passes, with the same
values; it is never looser, only stricter where a finding must come from the exact path:
it refuses NaN, lone surrogates, a repeated `kind`, a bool where an int is read, a
`state` or `reason` that is not a string. A refused line is not a finding by itself:
the checker then reads that one line through `json` and `_shape`, whose finding, message
and line number are the report's. One looseness needs a guard: msgspec skips the fields
it ignores without checking their UTF-8, so a byte line that is not ASCII is decoded by
Python first (`as_text`). Both give up on nesting at Python's recursion limit, at call
depths a few frames apart: a line nested to within those frames of it is a record one
way and malformed the other.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, cast

import msgspec

from kvclaims.model.terms import TIERS
from kvclaims.trace import SCHEMA_VERSION

# kind -> required fields and their types (spec/TRACE.md, RKC-TR-3); a required string is non-empty.
FIELDS: dict[str, dict[str, type]] = {
    "runtime": {},
    "claim_submit": {"claim": str, "blocks": list},
    "claim": {"claim": str, "event": str},
    "request_submit": {"request": str},
    "request_admit": {"request": str},
    "request_wait": {"request": str},
    "request_grow": {"request": str},
    "request_refuse": {"request": str, "reason": str, "blocking_claims": list},
    "request_finish": {"request": str, "admit": bool},
    "request_abort": {"request": str},
    "block_store": {"blocks": list, "tier": str},
    "block_evict": {"blocks": list, "tier": str, "reason": str},
    "block_offload": {"blocks": list, "tier": str, "claim": str},
    "block_restore": {"blocks": list, "tier": str, "claim": str},
    "operator": {"action": str},
}
# kind -> optional fields the checker reads (spec/TRACE.md, RKC-TR-3), checked unless absent or null.
OPTIONAL: dict[str, dict[str, type]] = {
    "block_store": {"request": str},
    "claim": {"blocks": list},
    "runtime": {"model": str, "hash": str, "namespace": str, "B": int},
}
STRING_LISTS = ("blocks", "blocking_claims", "hit_blocks")  # lists of non-empty strings wherever present
# kind -> fields the checker reads of any JSON value (TRACE.md types them not): a record's
# Struct holds them as strings, so a line with another value takes the exact path.
UNTYPED: dict[str, tuple[str, ...]] = {"claim": ("state", "reason")}

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Count = Annotated[int, msgspec.Meta(ge=0)]
_TYPED: dict[type, Any] = {str: NonEmpty, bool: bool, int: int}


class Record(msgspec.Struct, tag_field="kind", gc=False):
    """The envelope (RKC-TR-1, RKC-TR-2): every kind's Struct extends it, tagged by `kind`.
    No gc: a record holds strings and lists of strings, never a cycle."""

    schema_version: Literal[SCHEMA_VERSION]  # type: ignore[valid-type]  # one value, the constant
    seq: Count
    time: Count


def _fields(kind: str) -> list[tuple[str, Any] | tuple[str, Any, Any]]:
    """The Struct fields of `kind`, required first: what `_shape` checks of it, as types.
    Absent optional fields are None; absent untyped ones UNSET, as `state`'s presence counts."""
    required, optional = FIELDS[kind], OPTIONAL.get(kind, {})
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for name, typ in required.items():
        if name == "tier":
            fields.append((name, Literal[TIERS]))  # type: ignore[valid-type]  # the model's tiers
        elif name in STRING_LISTS:
            fields.append((name, list[NonEmpty]))
        else:
            fields.append((name, _TYPED[typ]))
    for name in STRING_LISTS:  # a list anywhere: null is not absent here
        if name not in required:
            fields.append((name, list[NonEmpty], None))
    for name, typ in optional.items():
        if name not in STRING_LISTS:
            fields.append((name, _TYPED[typ] | None, None))
    if "tier" not in required:
        fields.append(("tier", Literal[TIERS], None))  # type: ignore[valid-type]
    fields += [(name, str, msgspec.UNSET) for name in UNTYPED.get(kind, ())]
    return fields


# kind -> its record's Struct (`kind` is its tag: a record's class names its kind)
TYPES: dict[str, type[Record]] = {
    kind: cast("type[Record]", msgspec.defstruct(kind, _fields(kind), bases=(Record,), tag=kind, module=__name__))
    for kind in FIELDS
}
DECODER = msgspec.json.Decoder(Union[tuple(TYPES.values())])  # a line to its kind's record


def as_text(line: str | bytes) -> str | bytes:
    """A line the decoder may read: one not ASCII, as text, so its UTF-8 is checked whole
    (msgspec checks only the strings it keeps); a bad byte raises, as in `trace.loads`."""
    return line.decode() if isinstance(line, (bytes, bytearray)) else line
