"""Make PyPI's CUDA torchvision importable beside torch's CPU build (idempotent).

torchvision/_meta_registrations.py registers fake kernels for torchvision::nms
even when the C ops failed to load, which raises "operator torchvision::nms
does not exist". vLLM's Pixtral path uses only torchvision's pure-torch parts,
so importing that module only when the C ops loaded is enough.
"""

import importlib.util
import sys
from pathlib import Path

MARKER = "# pixtral-serve: meta registrations need torchvision's C ops\n"

spec = importlib.util.find_spec("torchvision")
if spec is None or spec.origin is None:
    sys.exit("torchvision is not installed")
init = Path(spec.origin)
text = init.read_text()
if MARKER in text:
    print(f"{init}: already patched")
    sys.exit(0)
if "    _meta_registrations,\n" not in text:
    sys.exit(f"{init}: unexpected layout, not patched")
text = text.replace("    _meta_registrations,\n", "", 1)
text += "\n" + MARKER + "if extension._has_ops():\n    from torchvision import _meta_registrations  # noqa: F401\n"
init.write_text(text)
print(f"{init}: patched")
