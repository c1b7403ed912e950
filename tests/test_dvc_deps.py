"""dvc.yaml's code deps cannot drift: each stage lists every project file its command imports.

A stage whose deps miss a module it imports is served stale by DVC when that
module changes (a change in ocd/tasks.py' per-sample loss would not rerun
score_layers, whose scores come from it). The closure is read from the source
(every ``import`` and ``from ... import``, at any depth, inside functions too),
so a late import counts as an import.

A family's or a loader's modules are imported by name, through their registry
(ocd/models/registry.py, ocd/data/registry.py), so no import statement reaches
them. A stage whose closure holds a registry depends instead on
``stages/deps/models/${model.name}`` and ``stages/deps/data/${data.name}``:
folders of links, one per file the entry's modules import beyond the registry's
own closure. DVC's templating puts a param's value into a path but cannot map
a name to a list of files; a folder of links can, and DVC hashes the files they
point to. So an edit to the separator leaves an MNIST pipeline clean, and a new
entry changes nothing already run. ``python tests/test_dvc_deps.py --fix``
writes both the links and the deps.
"""

import ast
import importlib
import os
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ocd", "stages")
LINKS = ROOT / "stages" / "deps"
# registry module -> (its kind, the param that names an entry)
REGISTRIES = {"ocd/models/registry.py": ("models", "model.name"), "ocd/data/registry.py": ("data", "data.name")}


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
    """The project files ``path`` imports directly, when it runs (not those it imports
    for type checkers only, under ``if TYPE_CHECKING:``)."""
    found = set()
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                   for inner in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
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


def entry_modules(kind: str) -> dict[str, set[Path]]:
    """Each entry of the ``kind`` registry -> the files of the modules it names."""
    if kind == "models":
        entries = importlib.import_module("ocd.models.registry").MODELS
    else:
        entries = importlib.import_module("ocd.data.registry").DATASETS
    return {name: {module_file(entry.module)} for name, entry in entries.items()}


def entry_links(kind: str) -> dict[str, set[Path]]:
    """Each entry -> the files its folder of links must hold: the closure of its
    modules, less what the registry imports itself (every stage with the registry lists those)."""
    registry = ROOT / next(r for r, (k, _) in REGISTRIES.items() if k == kind)
    shared = closure(registry)
    out = {}
    for name, modules in entry_modules(kind).items():
        files = set().union(*(closure(m) for m in modules))
        out[name] = {f for f in files - shared if not docstring_only(f)}
    return out


def links_on_disk(kind: str) -> dict[str, set[Path]]:
    folder = LINKS / kind
    if not folder.is_dir():
        return {}
    return {d.name: {Path(os.path.normpath(link.parent / os.readlink(link))) for link in d.iterdir()
                     if link.is_symlink()} for d in folder.iterdir() if d.is_dir()}


def templated_deps(script: Path) -> list[str]:
    """The link folders a stage whose command is ``script`` depends on, as dvc.yaml writes them."""
    found = closure(script)
    return [f"stages/deps/{kind}/${{{param}}}" for registry, (kind, param) in REGISTRIES.items()
            if ROOT / registry in found]


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
        templated = [d for d in stages[name]["deps"] if "${" in d]
        if templated != templated_deps(script):
            problems.append(f"{name} depends on {templated}, its registries need {templated_deps(script)}")
    assert not problems, "\n".join(problems) + "\n(`python tests/test_dvc_deps.py --fix` rewrites them)"


def test_each_entry_has_its_folder_of_links():
    """stages/deps/<kind>/<name>/ links exactly the files that entry imports beyond its registry:
    its own module and what that imports (the separator's eSpeak wrapper, the text stack)."""
    for kind in ("models", "data"):
        wanted, found = entry_links(kind), links_on_disk(kind)
        assert set(found) == set(wanted), f"stages/deps/{kind}: folders {sorted(found)}, entries {sorted(wanted)}"
        for name, files in wanted.items():
            assert found[name] == files, (f"stages/deps/{kind}/{name} links {sorted(map(str, found[name]))}, "
                                          f"it imports {sorted(map(str, files))}")
        assert wanted["mnist5k" if kind == "data" else "lenet5"]
    # the case of issue 42: the separator's code is not an MNIST model's
    assert ROOT / "ocd/models/mulcat.py" not in entry_links("models")["lenet5"]
    assert ROOT / "ocd/data/espeak.py" in entry_links("data")["speech_mix"]
    assert ROOT / "ocd/data/espeak.py" not in entry_links("data")["mnist5k"]


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
        leaves = set().union(*entry_modules(package).values())
        assert leaves and not leaves & graph[registry], f"{package}: the registry imports its entries"
        assert not [m.name for m in leaves if registry in closure(m)], package
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


def test_only_what_samples_the_denoiser_imports_it():
    """Issue 42: the scale model and the regressor read the conditioning (ocd/hypernet/conditioning.py)
    and the regressor the target (ocd/hypernet/targets.py); neither imports the denoiser, its U-Net
    or its schedule, so an edit to the U-Net reruns neither stage."""
    denoiser = {ROOT / "ocd/hypernet" / f for f in ("diffusion.py", "unet.py", "schedule.py", "vecnet.py")}
    scripts = stage_scripts()
    for stage in ("train_scale", "train_regressor"):
        assert not closure(scripts[stage]) & denoiser, stage
    assert denoiser <= closure(scripts["train_diffusion"]) and denoiser <= closure(scripts["evaluate"])


def test_the_closure_finds_late_and_package_imports(tmp_path):
    # the case of issue 31: score_layers scores the per-sample loss of ocd/tasks.py
    assert ROOT / "ocd/tasks.py" in closure(ROOT / "stages/score_layers.py")
    assert ROOT / "ocd/params.py" in closure(ROOT / "stages/evaluate.py")


def fix_links() -> None:
    """Rewrite stages/deps/: one folder of relative links per registry entry."""
    for kind in ("models", "data"):
        for name, files in entry_links(kind).items():
            folder = LINKS / kind / name
            folder.mkdir(parents=True, exist_ok=True)
            for link in folder.iterdir():
                link.unlink()
            for f in sorted(files):
                rel = f.relative_to(ROOT)
                (folder / "-".join(rel.parts)).symlink_to(os.path.relpath(f, folder))
        for folder in (LINKS / kind).iterdir():
            if folder.name not in entry_links(kind):
                for link in folder.iterdir():
                    link.unlink()
                folder.rmdir()


def fix() -> None:
    """Rewrite each stage's code deps in dvc.yaml to its import closure, in place (the other deps stay)."""
    fix_links()
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
            out += [f"      - {d}" for d in templated_deps(scripts[stage])]
            continue
        if in_deps and line.startswith("      - "):
            if line.strip().endswith(".py") or "${" in line:
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
