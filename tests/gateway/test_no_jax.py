"""The gateway never needs a GPU nor JAX: it runs beside Unity builds on machines without either."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_IMPORT_ALL = """
import importlib, json, pkgutil, sys
import gateway, common
names = []
for package in (gateway, common):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
        names.append(info.name)
print(json.dumps({"modules": names, "jax": sorted(m for m in sys.modules if m == "jax" or m.startswith(("jax.", "jaxlib")))}))
"""


def test_importing_every_gateway_and_common_module_loads_no_jax():
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "gateway.actor.numpy_policy" in result["modules"] and "gateway.env.workers" in result["modules"]
    assert result["jax"] == []


def test_no_gateway_source_imports_jax_even_lazily():
    pattern = re.compile(r"^\s*(import\s+(jax|jaxlib|flax|optax)\b|from\s+(jax|jaxlib|flax|optax)\b)", re.MULTILINE)
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("gateway", "common")
        for path in sorted((REPO / folder).rglob("*.py"))
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
