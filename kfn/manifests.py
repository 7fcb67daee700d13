"""Reading Function manifests from files, and `kfn validate`.

A file may hold several YAML documents (`---`), like the files `kubectl apply -f` takes; every
error names the file, the document's index when there is more than one, and the field path.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from kfn.functions import FieldError, Function, InvalidFunction, parse_function

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


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


def load_text(text: str, *, file: str = "<input>") -> list[Function]:
    """Every Function in a YAML (or JSON) text; ManifestError if any document is invalid."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(e, "problem", None) or str(e)
        raise ManifestError([Problem(file, None, FieldError("", f"not valid YAML{at}: {reason}"))]) from None
    if not documents:
        raise ManifestError([Problem(file, None, FieldError("", "no Function manifest in this file"))])
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


def load_file(path: str | Path) -> list[Function]:
    """Every Function in one manifest file; ManifestError (naming the file) if it cannot be used."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ManifestError([Problem(str(path), None, FieldError("", f"larger than {MAX_MANIFEST_BYTES} bytes"))])
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ManifestError([Problem(str(path), None, FieldError("", f"cannot read: {reason}"))]) from None
    return load_text(text, file=str(path))


def manifest_files(directory: str | Path) -> list[Path]:
    """The manifest files directly in `directory`, sorted by name (hidden files skipped)."""
    return sorted(
        p for p in Path(directory).iterdir()
        if p.is_file() and p.suffix in MANIFEST_SUFFIXES and not p.name.startswith(".")
    )


def validate_command(files: list[str], *, output: str = "text") -> int:
    """`kfn validate FILE...`: 0 when every file is valid, 1 otherwise, every problem printed."""
    report: list[dict[str, object]] = []
    failed = False
    for file in files:
        try:
            functions = load_file(file)
        except ManifestError as e:
            failed = True
            report.append({"file": file, "valid": False, "errors": [
                {"document": p.document, "path": p.error.path, "message": p.error.message} for p in e.problems]})
            if output == "text":
                for problem in e.problems:
                    print(problem, file=sys.stderr)
            continue
        report.append({"file": file, "valid": True, "functions": [f.name for f in functions]})
        if output == "text":
            print(f"{file}: ok ({', '.join(f.name for f in functions)})")
    if output == "json":
        print(json.dumps(report, indent=2))
    return 1 if failed else 0
