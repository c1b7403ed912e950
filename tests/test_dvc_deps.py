"""dvc.yaml's code deps cannot drift: each stage lists every project file its command imports.

A stage whose deps miss a module it imports is served stale by DVC when that
module changes (a change in ocd/tasks.py' per-sample loss would not rerun
score_layers, whose scores come from it). The closure is read from the source
(every ``import`` and ``from ... import``, at any depth, inside functions too),
so a late import counts as an import.
"""

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ocd", "stages")


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name (a package's __init__.py), if it is ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(path: Path) -> set[Path]:
    """The project files ``path`` imports directly."""
    found = set()
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # a package's __init__ runs too
                f = module_file(".".join(parts[:i]))
                if f is not None:
                    found.add(f)
    found.discard(path)
    return found


def docstring_only(path: Path) -> bool:
    """A module that computes nothing: a package's __init__.py holding its description
    (and constants such as ``__version__``)."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, (ast.Expr, ast.Assign)) and isinstance(n.value, ast.Constant) for n in body)


def closure(path: Path) -> set[Path]:
    seen, todo = set(), [path]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo.extend(imports_of(f) - seen)
    return seen


def stage_scripts() -> dict[str, Path]:
    """DVC stage -> the script its command runs (`sh stages/ocd train-base ...` -> stages/train_base.py)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        words = stage["cmd"].split()
        command = words[words.index("stages/ocd") + 1]
        out[name] = ROOT / "stages" / f"{command.replace('-', '_')}.py"
    return out


def test_every_stage_lists_every_project_file_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    problems = []
    for name, script in stage_scripts().items():
        deps = {ROOT / d for d in stages[name]["deps"] if (ROOT / d).suffix == ".py"}
        needed = {f for f in closure(script) if not docstring_only(f)}
        missing = sorted(str(f.relative_to(ROOT)) for f in needed - deps)
        extra = sorted(str(f.relative_to(ROOT)) for f in deps - needed)
        if missing:
            problems.append(f"{name} imports {', '.join(missing)}: add them to its deps in dvc.yaml")
        if extra:
            problems.append(f"{name} lists {', '.join(extra)}, which it never imports: remove them from its deps")
    assert not problems, "\n".join(problems) + "\n(`python tests/test_dvc_deps.py --fix` rewrites them)"


def test_the_library_has_no_import_circle():
    """Every import of an ocd module, late ones too, points down: no module reaches itself,
    no family or loader imports its registry (ocd/models/registry.py, ocd/data/registry.py),
    and no package's __init__.py imports anything (it only describes the package)."""
    modules = sorted(m for m in (ROOT / "ocd").rglob("*.py") if "__pycache__" not in m.parts)
    assert len(modules) > 30 and any(m.parent.name == "hypernet" for m in modules)
    graph = {m: {f for f in imports_of(m) if ROOT / "ocd" in f.parents} for m in modules}
    for start in modules:
        todo, seen = list(graph[start]), set()
        while todo:
            m = todo.pop()
            path = sorted(str(p.relative_to(ROOT)) for p in seen)
            assert m != start, f"{start.relative_to(ROOT)} imports itself through {path}"
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
    for package in ("models", "data"):
        registry = ROOT / "ocd" / package / "registry.py"
        leaves = {m for m in graph[registry] if m.parent == registry.parent}
        assert leaves, package
        assert not [m.name for m in leaves if registry in graph[m]], package
    for init in (ROOT / "ocd").glob("*/__init__.py"):
        assert docstring_only(init) and not imports_of(init), f"{init.relative_to(ROOT)} computes or imports"


def test_the_models_import_without_the_store():
    """The denoiser, the scale model and the regressor are model code: no Zarr behind them."""
    import subprocess
    import sys

    code = ("import sys, ocd.hypernet.diffusion, ocd.hypernet.scale, ocd.hypernet.regressor, ocd.pipeline; "
            "print('zarr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_closure_finds_late_and_package_imports(tmp_path):
    # the case of issue 31: score_layers scores the per-sample loss of ocd/tasks.py
    assert ROOT / "ocd/tasks.py" in closure(ROOT / "stages/score_layers.py")
    assert ROOT / "ocd/params.py" in closure(ROOT / "stages/evaluate.py")


def fix() -> None:
    """Rewrite each stage's code deps in dvc.yaml to its import closure, in place (the other deps stay)."""
    lines = (ROOT / "dvc.yaml").read_text().split("\n")
    scripts = stage_scripts()
    out, stage, in_deps = [], None, False
    for line in lines:
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            stage, in_deps = line.strip()[:-1], False
        if stage in scripts and line == "    deps:":
            in_deps = True
            out.append(line)
            out += [f"      - {f}" for f in sorted(str(f.relative_to(ROOT)) for f in closure(scripts[stage])
                                                 if not docstring_only(f))]
            continue
        if in_deps and line.startswith("      - "):
            if line.strip().endswith(".py"):
                continue  # replaced by the closure above
            out.append(line)
            continue
        in_deps = in_deps and line.startswith("      ")
        out.append(line)
    (ROOT / "dvc.yaml").write_text("\n".join(out))


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--fix"]:
        fix()
