"""`kfn validate FILE...`: every problem of every file, by field path."""
from __future__ import annotations

import json
import sys

from kfn.cli.options import ValidateOptions
from kfn.core.manifests import ManifestError
from kfn.manifests import load_file


def validate(options: ValidateOptions) -> int:
    """0 when every file is valid, 1 otherwise; problems on stderr (text) or all on stdout (json)."""
    report: list[dict[str, object]] = []
    failed = False
    for file in options.files:
        try:
            functions = load_file(file)
        except ManifestError as e:
            failed = True
            report.append({"file": file, "valid": False, "errors": [
                {"document": p.document, "path": p.error.path, "message": p.error.message} for p in e.problems]})
            if options.output == "text":
                for problem in e.problems:
                    print(problem, file=sys.stderr)
            continue
        report.append({"file": file, "valid": True, "functions": [f.name for f in functions]})
        if options.output == "text":
            print(f"{file}: ok ({', '.join(f.name for f in functions)})")
    if options.output == "json":
        print(json.dumps(report, indent=2))
    return 1 if failed else 0
