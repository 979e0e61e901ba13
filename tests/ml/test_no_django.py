"""`ml` is framework-free: importing it never pulls in Django (STYLE.md)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CODE = (
    "import ml, ml.data, ml.train, ml.evaluate, ml.inference, ml.cli, ml.video, ml.models, "
    "ml.stats, ml.gradcam; import sys; assert 'django' not in sys.modules, "
    "sorted(m for m in sys.modules if m.startswith('django'))"
)


def test_ml_imports_without_django():
    proc = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
