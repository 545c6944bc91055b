"""Typed params.yaml blocks (pydantic v2) with the repository's error messages.

A block is a `Block` (a pydantic model that rejects unknown keys) whose fields use the value types
below: `Int`, `Float`, `Str`, `Bool`, `List`, `Mapping`. Each checks the type (a float accepts an int;
a bool is never an int or a float; nothing is coerced, so a value reaches the run config exactly as
YAML read it), the range (`ge`/`gt`/`le`/`lt`), the allowed values (`choices`) and, for lists, the
items. `parse(Model, data, where)` validates one mapping and turns pydantic's errors into one
`ConfigError` that names the key path (`params.yaml: hu19.profiles.cpu.table2.batch_size: expected
>= 1, got 0`), the expected type or the allowed values, and for unknown keys the known ones.

Checks that need more than one field (a key that only some methods need, min_epochs < epochs, ...)
go in a model validator that calls `fail(path, message)`, `require(...)` or `less_than(...)`.
"""
from __future__ import annotations

import math
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from common.errors import ConfigError

PROFILES = ("smoke", "cpu", "paper")
RUNNER_BACKENDS = ("local", "ray")
PASS_MODES = ("train", "eval")      # = common.meta.lookahead.MODES (tested), kept here to keep torch out


def number_as_text_hint(value) -> str:
    """For a string that is a number YAML left as text (`1e-3`, `"2"`): how to write it instead."""
    if not isinstance(value, str) or not any(ch.isdigit() for ch in value):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    if "e" in value.lower():
        return (f" (YAML reads {value} as text: write 0.001-style decimals, or exponents with a dot and a "
                "signed exponent such as 1.0e-3)")
    return f" (a quoted number is text in YAML: write {value} without quotes)"


def type_names(kinds: Iterable[type], nullable: bool = False) -> str:
    names = ["null" if k is type(None) else k.__name__ for k in kinds] + (["null"] if nullable else [])
    return " or ".join(names)


def type_problem(value, kinds: tuple[type, ...], nullable: bool = False) -> str | None:
    """None if `value` is of one of `kinds` (float accepts int; bool only where listed), else the message."""
    if value is None and (nullable or type(None) in kinds):
        return None
    accepted = tuple(t for k in kinds for t in ((int, float) if k is float else (k,)))
    if isinstance(value, accepted) and not (isinstance(value, bool) and bool not in kinds):
        return None
    hint = number_as_text_hint(value) if {int, float} & set(kinds) else ""
    return f"expected {type_names(kinds, nullable)}, got {type(value).__name__} {value!r}{hint}"


_BOUNDS = (("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
           ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b))


@dataclass(frozen=True)
class Value:
    """What one params value may be. `problem(value)` gives (path suffix, message) or None."""

    kinds: tuple[type, ...]
    nullable: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    noun: str | None = None            # "unknown <noun> 'x'; expected one of [...]"
    item: Value | None = None          # lists and mappings: every item (mapping: every value)
    keys: Value | None = None          # mappings: every key
    min_len: int = 0
    length: int | None = None          # lists: exactly this many items, described by `shape` in the message
    shape: str | None = None
    unique: bool = False
    nonblank: bool = False
    blank_message: str = "expected a non-empty string"

    def expected(self) -> str:
        """For a 'missing' message: the allowed values, else the type (a wrong value names the range)."""
        return f"one of {list(self.choices)}" if self.choices is not None else type_names(self.kinds, self.nullable)

    def bounds(self) -> str:
        return " and ".join(f"{sign} {getattr(self, key)}" for key, sign, _ in _BOUNDS
                            if getattr(self, key) is not None)

    def problem(self, value) -> tuple[str, str] | None:
        bad = type_problem(value, self.kinds, self.nullable)
        if bad:
            return "", bad
        if value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return "", f"expected a finite number, got {value!r}"
        if any(getattr(self, key) is not None and not ok(value, getattr(self, key)) for key, _, ok in _BOUNDS):
            noun = "" if self.kinds == (int,) else "a number "
            return "", f"expected {noun}{self.bounds()}, got {value!r}"
        if self.choices is not None and value not in self.choices:
            unknown = f"unknown {self.noun} " if self.noun else ""
            return "", f"{unknown}{value!r}; expected one of {list(self.choices)}"
        if self.nonblank and isinstance(value, str) and not value.strip():
            return "", self.blank_message
        if isinstance(value, (list, dict)):
            return self._items_problem(value)
        return None

    def _items_problem(self, value) -> tuple[str, str] | None:
        if len(value) < self.min_len:
            return "", f"expected at least {self.min_len} item(s), got {value!r}"
        if self.length is not None and len(value) != self.length:
            return "", f"expected {self.shape or f'{self.length} item(s)'}, got {value!r}"
        if isinstance(value, dict):
            for key, item in value.items():
                for spec, checked in ((self.keys, key), (self.item, item)):
                    bad = spec.problem(checked) if spec else None
                    if bad:
                        return f".{key}{bad[0]}", bad[1]
            return None
        for i, item in enumerate(value):
            bad = self.item.problem(item) if self.item else None
            if bad:
                return f"[{i}]{bad[0]}", bad[1]
        if self.unique:
            repeated = sorted({v for v in value if value.count(v) > 1}, key=str)
            if repeated:
                return "", f"repeats {repeated}; expected distinct values"
        return None

    def validate(self, value):
        bad = self.problem(value)
        if bad:
            raise PydanticCustomError("repro", "{message}", {"message": bad[1], "path": bad[0]})
        return value                   # unchanged: an int stays an int, a list stays the same list


def typed(spec: Value, python_type: Any = Any) -> Any:
    """A field type checked by `spec` (the value is kept as is)."""
    return Annotated[python_type, PlainValidator(spec.validate), spec]


def Int(*, nullable: bool = False, **bounds) -> Any:
    return typed(Value((int,), nullable, **bounds), int)


def Float(*, nullable: bool = False, kinds: tuple[type, ...] = (float,), **bounds) -> Any:
    return typed(Value(kinds, nullable, **bounds), float)


def Str(*, nullable: bool = False, **options) -> Any:
    return typed(Value((str,), nullable, **options), str)


def Bool() -> Any:
    return typed(Value((bool,)), bool)


def List(item: Value | None = None, **options) -> Any:
    return typed(Value((list,), item=item, **options), list)


def Mapping(item: Value | None = None, keys: Value | None = None, **options) -> Any:
    return typed(Value((dict,), item=item, keys=keys, **options), dict)


def MinorityMajority(noun: str) -> Any:
    """An imbalanced table's `classes`: [minority, majority], two distinct non-negative ids."""
    return List(Value((int,), ge=0), length=2, unique=True, shape=f"[minority {noun}, majority {noun}]")


# Common value kinds.
PosInt = Int(ge=1)
NonNegInt = Int(ge=0)
PosFloat = Float(gt=0)
NonNegFloat = Float(ge=0)
OptionalPosInt = Int(ge=1, nullable=True)


class Block(BaseModel):
    """One params mapping: unknown keys are errors; values keep their YAML types."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def given(self) -> dict[str, Any]:
        """The keys the params block spelled out, with their values (in field order)."""
        return {key: getattr(self, key) for key in type(self).model_fields if key in self.model_fields_set}


def fail(path: str, message: str):
    """Raise, from a validator, an error for `path` (relative to the block being validated)."""
    raise PydanticCustomError("repro", "{message}", {"message": message, "path": f".{path}" if path else "",
                                                     "from_block": True})


def expected_of(model: type[Block], key: str) -> str:
    """What a field of `model` expects, for a 'missing' message."""
    field = model.model_fields[key]
    spec = next((m for m in field.metadata if isinstance(m, Value)), None)
    return spec.expected() if spec else "a mapping"


def require(block: Block, keys: Iterable[str], prefix: str = "", needed_by: Iterable[str] = ()) -> None:
    """Every key of `keys` spelled out in `block` (at `prefix`), else a 'missing' error that says
    which listed methods need it."""
    users = sorted(needed_by)
    for key in keys:
        if key not in block.model_fields_set:
            why = f"; needed by {', '.join(users)}" if users else ""
            fail(f"{prefix}.{key}" if prefix else key, f"missing (expected {expected_of(type(block), key)}{why})")


def less_than(path: str, value, limit_name: str, limit) -> None:
    if value is not None and limit is not None and not value < limit:
        fail(path, f"expected < {limit_name} ({limit}), got {value}")


class TableBlock(Block):
    """A paper table's block: `methods` and the names of `settings`/`not_run` are checked against the
    table's definition, passed as validation context {"table", "methods", "settings"}."""

    @field_validator("methods", check_fields=False)
    @classmethod
    def _known_methods(cls, methods, info):
        table = (info.context or {}).get("table")
        known = (info.context or {}).get("methods")
        bad = [m for m in methods if known is not None and m not in known]
        if bad:
            raise PydanticCustomError("repro", "{message}", {
                "message": f"unknown method(s) {bad} for {table}; expected a subset of {list(known)}", "path": ""})
        return methods

    @field_validator("settings", "not_run", mode="before", check_fields=False)
    @classmethod
    def _known_settings(cls, value, info):
        table = (info.context or {}).get("table")
        known = (info.context or {}).get("settings")
        if isinstance(value, dict) and known is not None:
            for name in value:
                if name not in known:
                    raise PydanticCustomError("repro", "{message}", {
                        "message": f"unknown setting {name!r} for {table}; expected one of {list(known)}",
                        "path": ""})
        if info.field_name == "settings" and value == {}:
            raise PydanticCustomError("repro", "{message}", {
                "message": f"expected at least one setting (of {list(known or [])})", "path": ""})
        return value


def table_context(table: str, definition) -> dict:
    """Validation context of a TableBlock: the table's name, methods and settings."""
    return {"table": table, "methods": tuple(definition.methods), "settings": tuple(definition.settings)}


# --- shared blocks ----------------------------------------------------------------------------------

class MetaStep(Block):
    """A table's `meta_step` block: overrides of the official meta step's pass modes (absent keys keep
    the official values of the method, see papers/hu19)."""

    per_example: Str(choices=PASS_MODES) = None
    dev: Str(choices=PASS_MODES) = None
    dev_batch_size: OptionalPosInt = None      # null: the whole dev set in one pass
    chunk: OptionalPosInt = None               # null: one lookahead per batch
    uniform_before_adam_state: Bool() = None


class Runner(Block):
    """`base.runner`."""

    backend: Str(choices=RUNNER_BACKENDS, noun="backend")
    workers: PosInt
    threads_per_worker: PosInt
    # ray only (accepted and ignored by the local backend)
    ray_address: Str(nonblank=True, blank_message="expected 'auto', 'local', 'host:port' or 'ray://host:port', "
                                                  "got an empty string") = "auto"
    num_cpus: Float(kinds=(int, float), ge=0) = 1
    num_gpus: Float(kinds=(int, float), ge=0) = 0


class Base(Block):
    """The `base` group of params.yaml."""

    profile: Str(choices=PROFILES, noun="profile")
    data_mirror: Str(nullable=True)
    tracking_uri: Str()
    results_dir: Str()
    splits_dir: Str()
    runner: Runner


class MlmProfile(Block):
    """`mlm.profiles.<profile>`: the shared backbone MLM (`repro mlm`, dvc stage mlm)."""

    backbone: Str(nonblank=True)            # checked against the installed backbones by `repro mlm`
    datasets: List(Value((str,)), unique=True, min_len=1)
    steps: Int(ge=0)                        # 0: a backbone that ships its head, saved as is
    batch_size: PosInt
    lr: Float(gt=0)
    max_seq_len: Int(ge=8)
    seed: Int(ge=0)
    imdb_limit: OptionalPosInt
    out_dir: Str(nonblank=True)
    threads: PosInt = 2                     # pinned intra-op threads: same bits on one CPU kind (train_mlm)


RUNNER_DEFAULTS = {key: field.default for key, field in Runner.model_fields.items() if not field.is_required()}


# --- validation and messages --------------------------------------------------------------------------

def parse(model: type[Block], data, where: str, context: dict | None = None) -> Block:
    """`data` validated as `model`; a ConfigError naming `where` + the key path otherwise."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(error_message(exc, model, where)) from None


def _path(loc) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def _model_at(model: type[Block], loc) -> type[Block] | None:
    """The Block class validating the mapping at `loc` (None if it is not a Block)."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, Block):
            field = current.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, Block) else None


def error_message(exc: ValidationError, model: type[Block], where: str) -> str:
    """One message for a ValidationError: the shallowest block's problem first, and within a block
    unknown keys (a misspelt key is the likelier cause of a missing one), then missing keys, then values."""
    rank = {"extra_forbidden": 0, "missing": 1}
    errors = exc.errors(include_url=False)

    def block_of(err):       # the mapping the error is about: a block-level check's own loc, else the parent
        from_block = err["type"] == "repro" and err.get("ctx", {}).get("from_block")
        return tuple(err["loc"]) if from_block else tuple(err["loc"][:-1])

    def order(item):
        i, err = item
        return len(block_of(err)), rank.get(err["type"], 2), i

    _, err = min(enumerate(errors), key=order)
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        block = loc[:-1]
        unknown = sorted(str(e["loc"][-1]) for e in errors
                         if e["type"] == "extra_forbidden" and tuple(e["loc"][:-1]) == block)
        owner = _model_at(model, block)
        known = sorted(owner.model_fields) if owner else []
        return f"{where}{_path(block)}: unknown key(s) {unknown}; known: {known}"
    if err["type"] == "missing":
        owner = _model_at(model, loc[:-1])
        expected = expected_of(owner, loc[-1]) if owner and loc[-1] in owner.model_fields else "a value"
        return f"{where}{_path(loc)}: missing (expected {expected})"
    if err["type"] == "repro":
        return f"{where}{_path(loc)}{err['ctx']['path']}: {err['ctx']['message']}"
    value = err.get("input")
    if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return f"{where}{_path(loc)}: expected a mapping, got {type(value).__name__} {value!r}"
    return f"{where}{_path(loc)}: {err['msg']} (got {type(value).__name__} {value!r})"
