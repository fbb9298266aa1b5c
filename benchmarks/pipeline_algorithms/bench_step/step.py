"""A trivial pipeline step: count the files in {inputs}, write {outputs}/result.json. Nothing else."""

import json
import sys
from pathlib import Path

inputs, outputs = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(str(p.relative_to(inputs)) for p in inputs.rglob("*") if p.is_file())
(outputs / "result.json").write_text(json.dumps({"input_files": len(files)}))
