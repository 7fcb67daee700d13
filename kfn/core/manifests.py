"""Function manifests from text: every document of a YAML (or JSON) stream, checked by the model.

A text may hold several documents (`---`), like the files `kubectl apply -f` takes; every error
names the file, the document's index when there is more than one, and the field path. Hostile
text fails as cleanly as a typo: nesting deeper than `MAX_DEPTH`, numbers too long to convert and
anything else the YAML parser chokes on become one `ManifestError`, never a traceback.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from kfn.core.functions import FieldError, Function, InvalidFunction, parse_function

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Real manifests nest a dozen levels; the parser recurses once per level.
MAX_DEPTH = 64


@dataclass(frozen=True)
class Problem:
    file: str
    document: int | None     # 0-based index of the YAML document, when the file has several
    error: FieldError

    def __str__(self) -> str:
        where = self.file if self.document is None else f"{self.file}[{self.document}]"
        return f"{where}: {self.error}"


class ManifestError(ValueError):
    """A file that does not hold valid Function manifests; `problems` lists every one."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    @classmethod
    def of(cls, file: str, message: str) -> ManifestError:
        return cls([Problem(file, None, FieldError("", message))])


class _TooDeep(Exception):
    pass


class _Bounded:
    """Refuses to nest deeper than MAX_DEPTH (before Python's recursion limit would): a mixin
    before a loader whose nodes are composed in Python."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep()
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._depth -= 1


class _BoundedLoader(_Bounded, yaml.SafeLoader):
    """PyYAML's safe loader, bounded."""


_Loader: type = _BoundedLoader
if yaml.__with_libyaml__:
    from yaml.composer import Composer
    from yaml.constructor import SafeConstructor
    from yaml.cyaml import CParser  # type: ignore[attr-defined]
    from yaml.resolver import Resolver

    class _FastBoundedLoader(_Bounded, CParser, Composer, SafeConstructor, Resolver):
        """The same, reading with libyaml's scanner and parser (a thousand manifests in a seventh
        of the time); nodes are still composed in Python (libyaml's own composer is not bounded)."""

        check_node = Composer.check_node
        get_node = Composer.get_node
        get_single_node = Composer.get_single_node

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    _Loader = _FastBoundedLoader


def _documents(text: str, file: str) -> list[object]:
    try:
        return [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(e, "problem", None) or str(e)
        raise ManifestError.of(file, f"not valid YAML{at}: {reason}") from None
    except _TooDeep:
        raise ManifestError.of(file, f"nested more than {MAX_DEPTH} levels deep: not a Function manifest") from None
    except RecursionError:
        raise ManifestError.of(file, "nested too deeply: not a Function manifest") from None
    except (ValueError, OverflowError) as e:
        # e.g. an integer of thousands of digits (Python refuses to convert it)
        raise ManifestError.of(file, f"cannot be read: {e}") from None


def load_text(text: str, *, file: str = "<input>") -> list[Function]:
    """Every Function in a YAML (or JSON) text; ManifestError if any document is invalid."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise ManifestError.of(file, f"larger than {MAX_MANIFEST_BYTES} bytes: not a Function manifest")
    documents = _documents(text, file)
    if not documents:
        raise ManifestError.of(file, "no Function manifest in this file")
    functions: list[Function] = []
    problems: list[Problem] = []
    names: dict[tuple[str, str], int] = {}
    for index, document in enumerate(documents):
        doc_index = index if len(documents) > 1 else None
        try:
            function = parse_function(document)
        except InvalidFunction as e:
            problems.extend(Problem(file, doc_index, err) for err in e.errors)
            continue
        except (RecursionError, ValueError) as e:
            problems.append(Problem(file, doc_index, FieldError("", f"cannot be read: {type(e).__name__}")))
            continue
        key = (function.namespace, function.name)
        if key in names:
            problems.append(Problem(file, doc_index, FieldError(
                "metadata.name", f"duplicate Function {function.name!r} (also document {names[key]})")))
            continue
        names[key] = index
        functions.append(function)
    if problems:
        raise ManifestError(problems)
    return functions
