"""Packaging: what Databricks Apps and `pip install .` install is enough to run the app.

- Every third-party module the code imports is a pinned runtime dependency in
  requirements.txt (the only file Databricks Apps installs); pyproject.toml declares the same
  pins, and requirements-dev.txt the same as the "dev" extra.
- The wheel holds every module and the assets (`static/`, `sql/`, `templates/`), which the
  code finds from its own location.
- Installed from the wheel, beside nothing but requirements.txt's distributions, `dwbench
  serve` runs from another directory, serves the UI and starts the local stack (slow).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import DATABRICKS_ONLY
from writers.sql_connector import LOCAL_REASON

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements.txt"
REQUIREMENTS_DEV = ROOT / "requirements-dev.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ASSET_DIRS = ("static", "sql", "templates")
# pip of this environment, offline: nothing is downloaded.
_PIP = (sys.executable, "-m", "pip", "--quiet", "--no-input")

# Directories of the checkout that hold no code of the app (besides dot-directories).
_NOT_CODE = {"tests", "build", "dist", "results", "test-artifacts", "node_modules", "__pycache__"}
# Runtime dependencies no module imports, and why they are needed anyway.
USED_WITHOUT_IMPORT: dict[str, str] = {}


# -- declared dependencies ---------------------------------------------------------------


def requirement_lines(path: Path) -> list[str]:
    """The requirement lines of a requirements file, without comments and `-r` includes."""
    lines = (raw.split("#", 1)[0].strip() for raw in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def canonical(requirement: str) -> str:
    req = Requirement(requirement)
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{canonicalize_name(req.name)}{extras}{req.specifier}{marker}"


def differences(label_a: str, a: list[str], label_b: str, b: list[str]) -> list[str]:
    set_a, set_b = {canonical(r) for r in a}, {canonical(r) for r in b}
    return [f"only in {label_a}: {r}" for r in sorted(set_a - set_b)] + [
        f"only in {label_b}: {r}" for r in sorted(set_b - set_a)
    ]


def test_requirements_txt_lists_the_pyproject_dependencies() -> None:
    diff = differences(
        "requirements.txt",
        requirement_lines(REQUIREMENTS),
        "pyproject.toml [project] dependencies",
        PYPROJECT["project"]["dependencies"],
    )
    assert not diff, "the two lists of runtime pins differ:\n" + "\n".join(diff)


def test_requirements_dev_txt_is_the_dev_extra_on_top_of_requirements_txt() -> None:
    assert "-r requirements.txt" in REQUIREMENTS_DEV.read_text().splitlines()
    diff = differences(
        "requirements-dev.txt",
        requirement_lines(REQUIREMENTS_DEV),
        "pyproject.toml's dev extra",
        PYPROJECT["project"]["optional-dependencies"]["dev"],
    )
    assert not diff, "the two lists of dev pins differ:\n" + "\n".join(diff)


def test_every_dependency_is_pinned_and_installed_at_its_pin() -> None:
    problems = []
    for line in requirement_lines(REQUIREMENTS) + requirement_lines(REQUIREMENTS_DEV):
        req = Requirement(line)
        pins = [s.version for s in req.specifier if s.operator == "=="]
        if len(pins) != 1 or len(req.specifier) != 1:
            problems.append(f"{line}: pin one version, name==version")
            continue
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != pins[0]:
            problems.append(f"{line}: {installed} in this environment (run make to reinstall)")
    assert not problems, "\n".join(problems)


# -- what the code imports ---------------------------------------------------------------


def source_files() -> list[Path]:
    """Every .py file of the app, the benchmarks and the local stack: all but tests."""
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".") and d not in _NOT_CODE and not d.endswith(".egg-info")
        ]
        files += [Path(dirpath, name) for name in filenames if name.endswith(".py")]
    return sorted(files)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """Absolute imports as (module, line): `import a.b`, `from a.b import c` (as a.b.c, which
    may be a module), and `importlib.import_module("a")` / `find_spec("a")` with a literal."""

    def __init__(self) -> None:
        self.found: list[tuple[str, int]] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # for the type checker only, never run
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, node.lineno) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.found += [
                (node.module if alias.name == "*" else f"{node.module}.{alias.name}", node.lineno)
                for alias in node.names
            ]

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("import_module", "find_spec") and node.args:
            arg = node.args[0]
            literal = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            if literal and not arg.value.startswith("."):
                self.found.append((arg.value, node.lineno))
        self.generic_visit(node)


def third_party_imports() -> list[tuple[str, str]]:
    """(module, "file:line") for every import of a module that is neither the standard
    library's nor the project's own."""
    files = source_files()
    own = {f.relative_to(ROOT).parts[0].removesuffix(".py") for f in files}
    out = []
    for path in files:
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        for module, line in visitor.found:
            top = module.split(".")[0]
            if top not in own and top not in sys.stdlib_module_names:
                out.append((module, f"{path.relative_to(ROOT)}:{line}"))
    return out


@functools.cache
def _top_level_owners() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


@functools.cache
def _module_names(distribution: str) -> frozenset[str]:
    """Dotted names of the modules and packages a distribution's files make up."""
    names: set[str] = set()
    for file in importlib.metadata.distribution(distribution).files or []:
        if file.parts[0] == "..":
            continue
        parts = [*file.parts[:-1], file.parts[-1].split(".")[0]]
        names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(names)


def owners(module: str) -> list[str]:
    """The distributions that provide `module`: for a namespace several distributions share
    (databricks, google), the ones that hold its deepest matching sub-package."""
    parts = module.split(".")
    candidates = _top_level_owners().get(parts[0], [])
    if len(candidates) > 1:
        for depth in range(len(parts), 1, -1):
            prefix = ".".join(parts[:depth])
            providers = [d for d in candidates if prefix in _module_names(d)]
            if providers:
                return providers
    return candidates


def _declared_runtime() -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirement_lines(REQUIREMENTS)}


def test_every_third_party_import_is_a_declared_runtime_dependency() -> None:
    declared = _declared_runtime()
    missing: dict[str, set[str]] = {}
    for module, where in third_party_imports():
        top, providers = module.split(".")[0], owners(module)
        if not providers:
            missing.setdefault(f"{top}, which no installed distribution provides", set()).add(where)
        elif not declared & {canonicalize_name(p) for p in providers}:
            pin = " or ".join(f"{p}=={importlib.metadata.version(p)}" for p in providers)
            missing.setdefault(pin, set()).add(f"{where} ({top})")
    assert not missing, (
        "imported by the app's code but not declared: add each pin to requirements.txt and "
        "pyproject.toml's [project] dependencies (same line in both)\n"
        + "\n".join(f"  {pin}: imported by {', '.join(sorted(w))}" for pin, w in missing.items())
    )


def test_every_runtime_dependency_is_imported() -> None:
    imported = {canonicalize_name(p) for module, _ in third_party_imports() for p in owners(module)}
    unused = _declared_runtime() - imported - set(USED_WITHOUT_IMPORT)
    assert not unused, (
        f"declared in requirements.txt but imported by no module of the app: {sorted(unused)} "
        "(drop them, or list them in USED_WITHOUT_IMPORT with the reason)"
    )


# -- the wheel ---------------------------------------------------------------------------


def _copy_ignore(directory: str, names: list[str]) -> set[str]:
    ignored = {n for n in names if n.startswith(".") or n == "__pycache__" or n.endswith(".pyc")}
    ignored |= {n for n in names if n.endswith(".egg-info")}
    if Path(directory) == ROOT:
        ignored |= set(names) & _NOT_CODE
    return ignored


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built offline with this environment's setuptools from a copy of
    the working tree (a build in place leaves build/ and *.egg-info in the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist = tmp / "src", tmp / "dist"
    shutil.copytree(ROOT, src, ignore=_copy_ignore)
    build = subprocess.run(
        [*_PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), src],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, f"pip wheel failed:\n{build.stdout}\n{build.stderr}"
    (built,) = dist.glob("*.whl")
    return built


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_the_wheel_holds_every_module_and_asset(wheel: Path) -> None:
    names = _wheel_names(wheel)
    expected = {f.relative_to(ROOT).as_posix() for f in source_files()}
    for directory in ASSET_DIRS:
        expected |= {
            f.relative_to(ROOT).as_posix()
            for f in (ROOT / directory).rglob("*")
            if f.is_file() and "__pycache__" not in f.parts
        }
    missing = sorted(expected - names)
    assert not missing, (
        "not in the wheel (a new package goes into [tool.setuptools.packages.find] include, "
        "a new kind of asset file into [tool.setuptools.package-data] in pyproject.toml): "
        + ", ".join(missing)
    )
    assert "static/index.html" in names
    assert any(n.startswith("static/vendor/") for n in names)
    assert any(n.startswith("sql/") and n.endswith(".sql") for n in names)
    assert any(n.startswith("proto/") and n.endswith("_pb2.py") for n in names)
    strays = sorted(n for n in names if n.startswith("tests/") or "__pycache__" in n)
    assert not strays, f"the wheel should not hold {strays}"


def test_the_wheel_declares_the_pins_and_the_command(wheel: Path) -> None:
    dist_info = next(n.split("/")[0] for n in _wheel_names(wheel) if ".dist-info/" in n)
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    requires = [
        line.removeprefix("Requires-Dist: ")
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ") and "extra ==" not in line
    ]
    diff = differences("the wheel", requires, "requirements.txt", requirement_lines(REQUIREMENTS))
    assert not diff, "\n".join(diff)
    assert "dwbench = dwbench.cli:main" in entry_points


# -- installed ---------------------------------------------------------------------------


def runtime_distributions() -> list[importlib.metadata.Distribution]:
    """requirements.txt's distributions and all they require (markers and extras evaluated),
    as installed in this environment: what installing requirements.txt alone brings."""
    dists = importlib.metadata.distributions()
    installed = {canonicalize_name(d.metadata["Name"]): d for d in dists}
    extras_seen: dict[str, set[str]] = {}
    todo = [Requirement(line) for line in requirement_lines(REQUIREMENTS)]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        first = name not in extras_seen
        new_extras = set(req.extras) - extras_seen.get(name, set())
        if not first and not new_extras:
            continue
        extras_seen.setdefault(name, set()).update(new_extras)
        assert name in installed, f"{req} is required but not installed (run make)"
        environments = ([""] if first else []) + sorted(new_extras)
        for text in installed[name].requires or []:
            sub = Requirement(text)
            if sub.marker is None:
                if first:
                    todo.append(sub)
            elif any(sub.marker.evaluate({"extra": extra}) for extra in environments):
                todo.append(sub)
    return [installed[name] for name in sorted(extras_seen)]


def link_distributions(distributions: list[importlib.metadata.Distribution], target: Path) -> None:
    """A directory of symlinks to the files of these distributions, and nothing else."""
    for dist in distributions:
        for file in dist.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue
            source, link = Path(dist.locate_file(file)), target / file
            if source.exists() and not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


@pytest.fixture
def installed(wheel: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(venv, its site-packages, a working directory elsewhere): a fresh virtualenv with the
    wheel installed and, on a .pth line, a directory holding only the distributions
    requirements.txt brings. Outside pytest's temporary root, which is 0700: as root, the
    local stack's Postgres runs as an unprivileged user that must reach its binaries."""
    base = Path(tempfile.mkdtemp(prefix="dwbench-installed-"))
    try:
        base.chmod(0o755)
        venv = base / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        python = venv / "bin" / "python"
        install = subprocess.run(
            [*_PIP, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert install.returncode == 0, f"pip install failed:\n{install.stdout}\n{install.stderr}"
        site = Path(
            subprocess.run(
                [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
        link_distributions(runtime_distributions(), base / "runtime-deps")
        (site / "runtime_deps.pth").write_text(f"{base / 'runtime-deps'}\n")
        workdir = base / "elsewhere"
        workdir.mkdir(mode=0o755)
        yield venv, site, workdir
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABRICKS_", "PG", "LOCAL_STACK_"))
        and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    return {**env, **extra}


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:  # a short-lived Postgres worker, gone already
        return []


def _stop(proc: subprocess.Popen[bytes], children: list[psutil.Process]) -> list[int]:
    """SIGTERM to the server, and the pids of what it started and left running (killed)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _, alive = psutil.wait_procs(children, timeout=30)
    for child in alive:
        child.kill()
    return [child.pid for child in alive]


@pytest.mark.slow
def test_the_installed_wheel_serves_the_ui_from_another_directory(
    installed: tuple[Path, Path, Path],
) -> None:
    venv, site, workdir = installed
    env = _clean_env()

    probe = subprocess.run(
        [venv / "bin" / "python", "-c", "import importlib.util as u, main, emulator; "
         "print(main.__file__); print(emulator.__file__); print(u.find_spec('pytest'))"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    main_file, emulator_file, pytest_spec = probe.stdout.splitlines()
    assert Path(main_file).is_relative_to(site), main_file
    assert Path(emulator_file).is_relative_to(site), emulator_file
    assert pytest_spec == "None", "the venv should see requirements.txt's distributions only"

    help_run = subprocess.run(
        [venv / "bin" / "dwbench", "--help"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert help_run.returncode == 0, help_run.stderr
    assert "serve" in help_run.stdout

    port, log_path = _free_port(), workdir / "serve.log"
    serve_env = _clean_env(
        APP_MODE="local", DATA_DIR="data", LOCAL_STACK_TOKEN=secrets.token_urlsafe(16)
    )
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [venv / "bin" / "dwbench", "serve", "--port", str(port)],
            cwd=workdir, env=serve_env, stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    children: list[psutil.Process] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, f"dwbench serve exited:\n{_tail(log_path)}"
                assert time.monotonic() < deadline, f"no /health in time:\n{_tail(log_path)}"
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            children = psutil.Process(proc.pid).children(recursive=True)

            index = client.get("/")
            assert index.status_code == 200, _tail(log_path)
            assert index.content == (ROOT / "static" / "index.html").read_bytes()
            app_js = client.get("/static/app.js")
            assert app_js.status_code == 200
            assert app_js.content == (ROOT / "static" / "app.js").read_bytes()

            writers = client.get("/api/v1/writers")
            assert writers.status_code == 200, _tail(log_path)
            unavailable = {w["name"]: w["reason"] for w in writers.json() if not w["available"]}
            # Only the writers the local stack cannot serve, each saying so.
            assert unavailable == dict.fromkeys(DATABRICKS_ONLY, LOCAL_REASON), (
                f"{unavailable}\n{_tail(log_path)}"
            )

        (stack,) = [c for c in children if "emulator" in _cmdline(c)]
        assert Path(stack.cwd()).is_relative_to(site), "the local stack runs the installed copy"
        assert (workdir / "data" / "local-stack").is_dir()
    finally:
        left_running = _stop(proc, children)
    # uvicorn shuts down, then ends itself with the signal it got.
    assert proc.returncode in (0, -signal.SIGTERM), _tail(log_path)
    assert "Application shutdown complete" in _tail(log_path)
    assert not left_running, f"dwbench serve left {left_running} running"
