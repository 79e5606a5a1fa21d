"""Command-line options built from the configs' dataclass fields: the dataclass is the interface.

A command such as ``finetune`` takes one ``TuneArgs``; its flags, defaults and help come from the fields
and their attribute docstrings (as litgpt's CLI takes them from function signatures), so an option is
declared once, where the Python API declares it. Commands whose Python API is a few loose calls (loading,
then evaluating, measuring or writing) declare their options the typer way (``command``), where a parameter
typed with a config dataclass (``questions: Questions``) shows that dataclass's fields; the option types
several of them share are declared once, at the end of this module.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from llamanas.deploy.gguf import TYPES as GGUF_TYPES
from llamanas.model.device import DEVICE_HELP, DTYPE_HELP


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string literal after each field), one line each."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(nxt.value.value).split())
    return docs


def _cli_type(tp: Any) -> tuple[Any, bool]:
    """(annotation typer understands, whether values are a comma-separated tuple)."""
    origin = typing.get_origin(tp)
    if origin is tuple:  # tuple[str, ...]: one comma-separated option
        return str | None, True
    return tp, False


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one field appears on the command line when its name or help differ from the field's."""

    name: str | None = (
        None  # e.g. "--out" for the field ``out`` needs nothing; "--constraint" for ``constraints``
    )
    help: str | None = None  # extra sentence appended to the field's docstring
    repeat: bool = False  # a repeatable option (list) instead of one comma-separated value


class _Field(typing.NamedTuple):
    field: dataclasses.Field
    help: str  # the field's attribute docstring
    type: Any
    default: Any


def _fields(cls: type, instance: Any = None) -> list[_Field]:
    """A config dataclass's fields with their help and type, and their defaults (``instance``'s values when
    given): what one option per field needs."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)

    def default(f: dataclasses.Field) -> Any:
        if instance is not None:
            return getattr(instance, f.name)
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]

    return [_Field(f, docs.get(f.name, ""), hints[f.name], default(f)) for f in dataclasses.fields(cls)]


def dataclass_command(
    app: typer.Typer,
    cls: type,
    *,
    name: str | None = None,
    required: Iterable[str] = (),
    exclude: Iterable[str] = (),
    flags: dict[str, Flag] | None = None,
    **command_kwargs,
) -> Callable[[Callable], Callable]:
    """Register ``fn(args: cls, **extra)`` as a command whose options are ``cls``'s fields plus ``fn``'s extra
    keyword parameters (declared the usual typer way)."""
    flags = flags or {}
    exclude = set(exclude)
    required = set(required)

    # A field whose type is itself a dataclass (``questions: Questions``) shows its fields as options and is
    # rebuilt from them: its flags and help are declared once, on the inner dataclass.
    leaves: list[tuple[str | None, _Field]] = []  # (the outer field, or None; the option's field)
    nested: dict[str, type] = {}
    for leaf in _fields(cls):
        if leaf.field.name in exclude:
            continue
        if dataclasses.is_dataclass(leaf.type):
            nested[leaf.field.name] = leaf.type
            inner = _fields(leaf.type, leaf.default)
            leaves += [(leaf.field.name, g) for g in inner if g.field.name not in exclude]
        else:
            leaves.append((None, leaf))

    def decorator(fn: Callable) -> Callable:
        params: list[inspect.Parameter] = []
        tuple_fields: set[str] = set()
        for _, (f, doc, field_type, default) in leaves:
            flag = flags.get(f.name, Flag())
            tp, is_tuple = _cli_type(field_type)
            if flag.repeat:
                tp, is_tuple = list[str] | None, True
            if is_tuple:
                tuple_fields.add(f.name)
            help_text = " ".join(x for x in (doc, flag.help or "") if x)
            if is_tuple and not flag.repeat:
                help_text += " Comma-separated."
            decls = [flag.name] if flag.name else []
            if is_tuple:
                default = None if flag.repeat else (",".join(map(str, default)) if default else None)
            option = typer.Option(*decls, help=help_text, show_default=f.name not in required)
            params.append(
                inspect.Parameter(
                    f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    annotation=Annotated[tp, option],
                    default=inspect.Parameter.empty if f.name in required else default,
                )
            )
        extra, fn = expand_dataclass_params(fn, skip=1)
        names = {leaf.field.name for _, leaf in leaves}

        @functools.wraps(fn)
        def command(**kwargs):
            values = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            for k in tuple_fields & values.keys():
                v = values[k]
                values[k] = tuple(v or ()) if isinstance(v, list) or v is None else _split(v)
            for k, v in values.items():
                if isinstance(v, Path):
                    values[k] = str(v)
            for outer, inner in nested.items():
                values[outer] = inner(
                    **{g.field.name: values.pop(g.field.name) for o, g in leaves if o == outer}
                )
            return fn(cls(**values), **kwargs)

        return _register(app, name or fn.__name__, command, params + extra, command_kwargs)

    return decorator


def _register(app: typer.Typer, name: str, command: Callable, params: list, command_kwargs: dict) -> Callable:
    """Register ``command`` under ``name`` with ``params`` as the signature typer reads."""
    params = sorted(params, key=lambda p: p.default is not inspect.Parameter.empty)  # typer: required first
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__dict__.pop("__wrapped__", None)  # typer must read the signature above, not the wrapped one's
    app.command(name, **command_kwargs)(command)
    return command


def expand_dataclass_params(fn: Callable, skip: int = 0) -> tuple[list[inspect.Parameter], Callable]:
    """``fn``'s parameters (after the first ``skip``) as keyword-only options, where one annotated with a frozen
    dataclass (``questions: Questions = Questions()``) becomes that dataclass's fields, with their docstrings
    as help; returns them and a wrapper of ``fn`` that takes those options and rebuilds the dataclass."""
    signature = inspect.signature(fn, eval_str=True)
    params: list[inspect.Parameter] = []
    nested: dict[str, tuple[type, list[str]]] = {}
    for p in list(signature.parameters.values())[skip:]:
        if not (isinstance(p.annotation, type) and dataclasses.is_dataclass(p.annotation)):
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
            continue
        cls = p.annotation
        inner = _fields(cls, cls() if p.default is inspect.Parameter.empty else p.default)
        nested[p.name] = (cls, [g.field.name for g in inner])
        params += [
            inspect.Parameter(
                g.field.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[g.type, typer.Option(help=g.help)],
                default=g.default,
            )
            for g in inner
        ]
    if not nested:
        return params, fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for name, (cls, fields) in nested.items():
            kwargs[name] = cls(**{f: kwargs.pop(f) for f in fields})
        return fn(*args, **kwargs)

    return params, wrapper


def command(app: typer.Typer, name: str | None = None, **command_kwargs) -> Callable[[Callable], Callable]:
    """``app.command`` for a function whose options are its parameters (declared the typer way), where a
    parameter typed with a config dataclass (``questions: Questions``) shows that dataclass's fields."""

    def decorator(fn: Callable) -> Callable:
        params, wrapper = expand_dataclass_params(fn)
        if wrapper is fn:
            return app.command(name or fn.__name__, **command_kwargs)(fn)
        return _register(app, name or fn.__name__, wrapper, params, command_kwargs)

    return decorator


# --- option types several commands share (a command's own options stay in its signature) ----------------

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="'default' (SmolLM2-135M-Instruct, offline), a local HF model folder, a super-network folder, or a hub id.",
    ),
]
SUBNET_HELP = "Sub-network config: JSON file, inline JSON, or RUN_DIR:ID of a search run."
SubnetOpt = Annotated[str | None, typer.Option("--subnet", help=f"{SUBNET_HELP} Default: the full network.")]
SpaceOpt = Annotated[
    str | None,
    typer.Option(
        "--space",
        help="YAML/JSON file that narrows the search space (see docs/search_space.md), or a space by name: "
        "width (every layer kept, MLP 50-100%, 2-3 of 3 KV groups) or full (layer and block drops as well).",
    ),
]
TasksOpt = Annotated[
    str, typer.Option(help="Comma-separated tasks, e.g. arc_easy,piqa. See `llamanas tasks`.")
]
LimitOpt = Annotated[int | None, typer.Option(help="Evaluate a seeded random subset of N items per task.")]
FewshotOpt = Annotated[int | None, typer.Option(help="Few-shot examples (default: the task's, usually 0).")]
SeedOpt = Annotated[int | None, typer.Option(help="Seed of the --limit subset.")]
DeviceOpt = Annotated[str, typer.Option(help=DEVICE_HELP)]
DtypeOpt = Annotated[str, typer.Option(help=DTYPE_HELP + ". Recorded in every output.")]
ImportanceOpt = Annotated[
    str,
    typer.Option(
        help="Importance score that orders channels before slicing: rms (activation RMS) | wanda (activation x "
        "output-weight norm) | taylor (first-order |w x grad| of the calibration loss)."
    ),
]
CompensateOpt = Annotated[
    bool,
    typer.Option(
        help="Bias compensation (FLAP): a slice adds the mean contribution of the channels it removes as an "
        "output bias; measured once on calibration text, carried into extracted checkpoints and GGUF."
    ),
]
NoOrderOpt = Annotated[
    bool,
    typer.Option("--no-order", help="Skip importance ordering (slices keep the first channels as they are)."),
]
GGUFTypeOpt = Annotated[
    str,
    typer.Option(
        "--type",
        help=f"GGUF weight type: {' | '.join(GGUF_TYPES)} (a config with per-layer bits uses them for its layers).",
    ),
]
GroupSizeOpt = Annotated[int, typer.Option(help="INT4 group size (columns sharing one scale).")]

__all__ = [
    "CompensateOpt",
    "DeviceOpt",
    "DtypeOpt",
    "FewshotOpt",
    "Flag",
    "GGUFTypeOpt",
    "GroupSizeOpt",
    "ImportanceOpt",
    "LimitOpt",
    "ModelOpt",
    "NoOrderOpt",
    "SUBNET_HELP",
    "SeedOpt",
    "SpaceOpt",
    "SubnetOpt",
    "TasksOpt",
    "command",
    "dataclass_command",
    "expand_dataclass_params",
    "field_docs",
]
