"""The wheels a GPU machine with its own torch lacks for ``make gpu-check``, downloaded here into one folder.

A GPU machine brings its own torch (built for its driver) and often no network. This picks what the check
imports (a ``--dry`` run of ``bench/gpu_check.py`` says which distributions it loaded) and what the trainer
requires, plus bitsandbytes (QLoRA, imported on GPUs only), leaves out torch and everything torch itself
requires, and downloads those exact versions (as installed here, or pinned in
``deploy/docker/constraints.txt``) as wheels for the GPU machine's Python: ``make gpu-env`` there installs
them into a venv that sees the system's torch.

Usage: ``python bench/gpu_wheels.py --dest .gpu-wheels [--python-version 3.11]``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
GPU_ONLY = ["bitsandbytes"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64", "any"]


def closure(requirements: list[str]) -> set[str]:
    """Canonical names of these requirements and, for what is installed here, everything they require."""
    seen: set[str] = set()
    queue = [Requirement(r) for r in requirements]
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        queue += [r for r in map(Requirement, requires) if r.marker is None or r.marker.evaluate({"extra": ""})]
    return seen


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "deploy" / "docker" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#") and "==" in line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version.strip()
    return out


def needed(imported: list[str], skip: list[str]) -> dict[str, str]:
    """{name: version} of what the GPU machine must be given: the trainer's requirements that the check imports,
    with what they require, and bitsandbytes; not torch's side, not ``skip`` (what the machine has already)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    loaded = {canonicalize_name(d) for d in imported}
    direct = [r for r in list(project["dependencies"]) + extras["trainer"] + extras["gpu"] if canonicalize_name(Requirement(r).name) in loaded]
    required = closure(direct)
    wanted = (loaded & required) | {canonicalize_name(n) for n in GPU_ONLY}
    wanted -= closure(["torch"]) | {canonicalize_name(n) for n in skip}
    pinned = pins()
    versions = {}
    for name in sorted(wanted):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = pinned[name]
    return versions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, required=True)
    parser.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    parser.add_argument("--skip", nargs="*", default=[], help="distributions the GPU machine has already (e.g. numpy)")
    parser.add_argument("--list", action="store_true", help="print what would be downloaded, download nothing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        dry = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry", "--work", work], capture_output=True, text=True)
    if dry.returncode != 0:
        print(dry.stdout[-2000:], dry.stderr[-2000:], file=sys.stderr)
        return 1
    imported = json.loads(dry.stdout.strip().splitlines()[-1])["distributions"]
    versions = needed(imported, args.skip)
    print(" ".join(f"{n}=={v}" for n, v in versions.items()))
    if args.list:
        return 0
    args.dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--dest", str(args.dest),
               "--python-version", args.python_version, "--implementation", "cp"]  # fmt: skip
    for platform in PLATFORMS:
        command += ["--platform", platform]
    return subprocess.run(command + [f"{n}=={v}" for n, v in versions.items()]).returncode


if __name__ == "__main__":
    sys.exit(main())
