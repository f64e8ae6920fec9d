import subprocess
import sys
from pathlib import Path

import pytest

import napari_unet

GUI_MODULES = ("qtpy", "napari", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")


@pytest.mark.slow
def test_core_and_public_api_import_no_gui_toolkit():
    core = Path(napari_unet.__file__).parent / "core"
    modules = sorted(f"napari_unet.core.{p.stem}" for p in core.glob("*.py") if p.stem != "__init__")
    code = (
        "import sys, importlib\n"
        f"for name in {['napari_unet', 'napari_unet.cli', *modules]!r}: importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {GUI_MODULES!r})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert len(modules) >= 8
    assert result.stdout.strip() == "", f"GUI modules imported: {result.stdout}"
