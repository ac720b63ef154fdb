"""Where the tritonserver binary and its backends come from.

Locally: the `nvidia-pytriton` wheel ships `tritonserver`, the Python backend and one backend stub per
Python version. We assemble a backend directory (the stub for *this* interpreter) and give the server an
environment in which the stub finds this interpreter's libpython and this environment's packages. The
wheel's tree can also be unpacked by hand (a GPU host without package access): point `CLIP_TRITON_HOME`
at its `tritonserver` folder. In NVIDIA's container the binary and backends are simply where the image
puts them.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

HOME_VARIABLE = "CLIP_TRITON_HOME"


class InstallationError(RuntimeError):
    """No usable tritonserver: the message says what is missing."""


@dataclass(frozen=True)
class Installation:
    """A tritonserver binary, its backend directory, and the environment to start it in."""

    binary: Path
    backends: Path
    environment: dict[str, str]


def container_installation(binary: Path, backends: Path) -> Installation:
    """NVIDIA's image: everything in place, environment as the container has it."""
    return Installation(Path(binary), Path(backends), dict(os.environ))


def triton_home() -> Path:
    """The tritonserver tree: $CLIP_TRITON_HOME, else the one inside the installed nvidia-pytriton wheel."""
    if os.environ.get(HOME_VARIABLE):
        home = Path(os.environ[HOME_VARIABLE])
    else:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise InstallationError("nvidia-pytriton is not installed: pip install 'clip-triton[serve]' "
                                    f"(or set {HOME_VARIABLE} to an unpacked tritonserver tree)")
        home = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (home / "bin" / "tritonserver").exists():
        raise InstallationError(f"no tritonserver binary under {home}")
    return home


def local_installation(workdir: Path) -> Installation:
    """The wheel's tritonserver with a backend directory (in `workdir`) holding this interpreter's stub."""
    home = triton_home()
    python = workdir / "backends" / "python"
    shutil.copytree(home / "backends" / "python", python, ignore=shutil.ignore_patterns("__pycache__"))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise InstallationError(f"the nvidia-pytriton wheel has no Python-backend stub for Python {version}")
    shutil.copy2(stub, python / "triton_python_backend_stub")
    return Installation(home / "bin" / "tritonserver", python.parent, local_environment(home))


def local_environment(home: Path) -> dict[str, str]:
    """This environment's `bin/` first on PATH, and this interpreter's libpython and the wheel's own
    libraries on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(home.parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")])
    return env
