"""README.md and docs/ checked against the code where a machine can check them: README's length,
every `vfalloc` command and flag it shows (against the one parser, vfalloc.cli.build_parser),
every `make` target, every path and section the docs and the code cite, the module table and
the dependency direction of docs/architecture.md, and the imports docs/performance.md says the
hook avoids. Nothing in the repo may cite a file outside it."""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from conftest import REPO
from fakehost import i350

from vfalloc.cli import build_parser
from vfalloc.templates import HOOK_PYTHON

README = REPO / "README.md"
DOCS = REPO / "docs"
ARCHITECTURE = DOCS / "architecture.md"
README_MAX_LINES = 260
TOP_LEVEL = ("vfalloc", "tests", "docs", "bench", "demo", "hooks", "tools", ".ci")
TEXT_SUFFIXES = {".py", ".md", ".sh", ".cfg", ".toml", ".txt", ""}


@cache
def tracked() -> tuple[str, ...]:
    """The repo's files as git knows them (plus this one, before it is committed)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return tuple(sorted({line for line in out.splitlines() if line and (REPO / line).is_file()}))


def text_files() -> list[Path]:
    return [REPO / name for name in tracked() if Path(name).suffix in TEXT_SUFFIXES
            and "/data/" not in f"/{name}"]


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def fenced_and_prose(text: str) -> tuple[list[str], str]:
    """The lines inside ``` fences, and the text outside them."""
    fenced, prose, inside = [], [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        (fenced if inside else prose).append(line)
    return fenced, "\n".join(prose)


def inline_code(prose: str) -> list[str]:
    return [" ".join(m[2].split()) for m in re.finditer(r"(`+)(.+?)\1", prose, re.S)]


def shown_commands(text: str) -> list[str]:
    """Every `vfalloc ...` command line the text shows: typed in a code block (`$ ` or not), or
    as inline code."""
    fenced, prose = fenced_and_prose(text)
    found = []
    for line in fenced:
        line = line.strip().removeprefix("$ ")
        if line.startswith("vfalloc "):
            found.append(line.split(" #")[0])
    found += [code for code in inline_code(prose) if code.startswith("vfalloc ")]
    return found


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def all_options(parser: argparse.ArgumentParser) -> set[str]:
    found = options(parser)
    for sub in subcommands(parser).values():
        found |= all_options(sub)
    return found


FLAG = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*")


def test_readme_fits_an_admin_guide():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, more than {README_MAX_LINES}: keep it the admin's guide and "
        "move the rest to docs/")


def test_readme_commands_exist_in_the_parser():
    parser = build_parser()
    commands = shown_commands(README.read_text())
    assert len(commands) > 20, "README shows hardly any vfalloc command: is the extraction broken?"
    wrong = []
    for line in commands:
        words = line.split()
        current, path = parser, ["vfalloc"]
        for word in words[1:]:
            subs = subcommands(current)
            if not subs:
                break
            if word not in subs:
                wrong.append(f"{line!r}: {' '.join(path)} has no command {word!r}")
                break
            current, path = subs[word], [*path, word]
        known = options(current)
        wrong += [f"{line!r}: {' '.join(path)} has no flag {flag}" for flag in FLAG.findall(line)
                  if flag not in known]
    assert not wrong, "\n".join(wrong)


def test_readme_flags_exist():
    """A flag README shows on its own (`--dry-run`, `-c`) is a flag of some command."""
    known = all_options(build_parser())
    _, prose = fenced_and_prose(README.read_text())
    shown = [code for code in inline_code(prose) if code.startswith("-")]
    assert shown, "README shows no flag on its own: is the extraction broken?"
    wrong = [code for code in shown if (FLAG.match(code) or [""])[0] not in known]
    assert not wrong, f"README shows flags no command has: {wrong}"


def test_make_targets_the_docs_show_exist():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    shown = {m for doc in doc_files() for m in re.findall(r"(?<![\w-])make ([a-z][\w-]*)", doc.read_text())}
    assert shown, "the docs show no make target"
    assert shown <= targets, f"make targets the Makefile lacks: {sorted(shown - targets)}"


PATH = re.compile(
    r"(?<![\w./-])(?P<path>(?:(?:" + "|".join(re.escape(t) for t in TOP_LEVEL) + r")/[\w./*-]*[\w*])"
    r"|(?:[\w-]+/)*[\w-]+\.(?:py|md|sh|cfg|toml))(?![\w/-])")


def cited_paths(text: str) -> list[str]:
    """Repo paths a text names: `tests/fakes/libvirtd.py`, `host/cmdline.py`, `README.md`. A path right
    after a possessive ("CPython's Lib/dataclasses.py") is another project's file; a path after
    a slash is a host path (/etc/vfalloc/vfalloc.toml)."""
    found = []
    for m in PATH.finditer(text):
        if re.search(r"'s\s+$", text[max(0, m.start() - 4):m.start()]):
            continue
        found.append(m["path"].rstrip("."))
    return found


def exists_in_repo(path: str) -> bool:
    if "*" in path:
        return any(REPO.glob(path))
    if (REPO / path).exists():
        return True
    # a module named by its place in the package (host/cmdline.py) or a file by its name (rig.py)
    return any(name == path or name.endswith("/" + path) for name in tracked())


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: p.name)
def test_paths_the_docs_cite_exist(doc):
    paths = cited_paths(doc.read_text())
    missing = sorted({p for p in paths if not exists_in_repo(p)})
    assert not missing, f"{doc.relative_to(REPO)} cites paths the repo does not have: {missing}"


def test_dotted_module_names_in_the_docs_exist():
    wrong = []
    for doc in doc_files():
        for name in re.findall(r"(?<![\w/.-])vfalloc(?:\.[a-z_]+)+", doc.read_text()):
            parts = name.split(".")
            module = REPO.joinpath(*parts[:2])
            if not (module.with_suffix(".py").exists() or module.is_dir()):
                wrong.append(f"{doc.name}: {name}")
    assert not wrong, "modules that do not exist:\n" + "\n".join(wrong)


def headings(path: Path) -> set[str]:
    return {m[1].strip() for m in re.finditer(r"^#+\s+(.*)$", path.read_text(), re.M)}


CITATION = re.compile(r"(?<![\w/.-])(?P<file>(?:docs/)?[\w-]+\.md),\s+\"(?P<section>[^\"]+)\"")


def test_cited_sections_exist():
    """`docs/architecture.md, "The state file"` anywhere in the repo names a heading of that file."""
    wrong, seen = [], 0
    for path in text_files():
        for m in CITATION.finditer(path.read_text(errors="replace")):
            seen += 1
            target = REPO / m["file"]
            if not target.exists():
                target = DOCS / m["file"]
            if not target.exists():
                wrong.append(f"{path.relative_to(REPO)}: {m[0]}: no such file")
            elif " ".join(m["section"].split()) not in headings(target):  # a docstring may wrap it
                wrong.append(f"{path.relative_to(REPO)}: {m[0]}: no such section")
    assert seen, "no citation found: is the pattern broken?"
    assert not wrong, "\n".join(wrong)


def test_docs_the_code_names_exist():
    wrong = []
    for path in text_files():
        for name in re.findall(r"(?<![\w/.-])docs/[\w-]+\.md", path.read_text(errors="replace")):
            if not (REPO / name).exists():
                wrong.append(f"{path.relative_to(REPO)}: {name}")
    assert not wrong, "\n".join(wrong)


# Spelled in pieces so that this file does not match itself.
OUTSIDE = [re.compile(p) for p in (r"DESIGN" r"\.md", r"\.\./" r"shared\b", r"\bshared/" r"rig\b", r"/wo" r"rk/")]


def test_nothing_cites_a_file_outside_the_repo():
    wrong = []
    for path in text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if any(p.search(line) for p in OUTSIDE):
                wrong.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not wrong, "the repo cites files outside it:\n" + "\n".join(wrong)


# -- docs/architecture.md: the module table and the dependency direction --

LAYERS = ("core", "edge", "entry")


def module_table() -> dict[str, str]:
    """module name (vfalloc.host.cmdline) -> layer, from the table of docs/architecture.md."""
    rows = re.findall(r"^\| `([\w/]+)\.py` \| (\w+) \|", ARCHITECTURE.read_text(), re.M)
    return {"vfalloc." + name.replace("/", "."): layer for name, layer in rows}


@cache
def package_modules() -> frozenset[str]:
    return frozenset(".".join(p.relative_to(REPO).with_suffix("").parts)
                     for p in (REPO / "vfalloc").rglob("*.py") if p.name != "__init__.py")


def test_every_module_has_its_row():
    table = module_table()
    assert set(table) == package_modules(), (
        f"docs/architecture.md lacks {sorted(package_modules() - set(table))}, "
        f"names modules that do not exist: {sorted(set(table) - package_modules())}")
    assert set(table.values()) <= set(LAYERS)


@pytest.mark.parametrize("init", sorted((REPO / "vfalloc").glob("*/__init__.py")),
                         ids=lambda p: p.parent.name)
def test_a_package_init_imports_nothing(init):
    """The hook imports `vfalloc.fdb` at every call and `vfalloc.metrics.counts` at every refusal:
    a package that imported its modules would load them all for it (docs/architecture.md)."""
    tree = ast.parse(init.read_text())
    found = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not found, f"{init.relative_to(REPO)} imports {found}"


def imports_of(module: str) -> set[str]:
    """The vfalloc modules `module` imports, at the top or inside a function; not those only
    imported for type annotations."""
    path = REPO.joinpath(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    package = module.rsplit(".", 1)[0].split(".")
    modules = package_modules()
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:  # `from .host import numvfs` imports a module, `from .model import PF` a name
                found.add(f"{name}.{alias.name}" if f"{name}.{alias.name}" in modules else name)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found & modules


def test_dependencies_point_one_way():
    """No module imports an entry point, and the core imports only the core."""
    table = module_table()
    wrong = []
    for module, layer in sorted(table.items()):
        for dep in sorted(imports_of(module)):
            dep_layer = table.get(dep)
            if dep_layer == "entry" and layer != "entry":
                wrong.append(f"{module} ({layer}) imports the entry point {dep}")
            if layer == "core" and dep_layer != "core":
                wrong.append(f"{module} (core) imports {dep} ({dep_layer})")
    assert not wrong, "\n".join(wrong)


# -- docs/performance.md: what the hook does not import --

AVOIDED = ("datetime", "subprocess", "pathlib", "hashlib", "libvirt", "tomllib")
REPORT = ("import sys, atexit\n"
          "atexit.register(lambda: sys.stderr.write('\\nLOADED ' + ' '.join(sorted(sys.modules)) + '\\n'))\n")


def loaded(code: str, argv: list[str], env: dict[str, str], stdin: str = "") -> set[str]:
    r = subprocess.run([sys.executable, "-c", REPORT + code, *argv], input=stdin.encode(), env=env,
                       capture_output=True, timeout=60)
    last = r.stderr.decode().rsplit("\nLOADED ", 1)
    assert len(last) == 2, r.stderr.decode()
    assert r.returncode == 0, last[0]
    return set(last[1].split())


def test_prepare_and_release_avoid_the_imports_performance_md_names(scratch):
    i350(scratch.fs)
    scratch.write_config('[pools.lan0]\npfs = ["enp1s0f0"]\n')
    env = scratch.env()
    run_hook = HOOK_PYTHON + "\n"  # what the hook file runs for these calls

    def xml(n: int) -> str:
        return (f"<domain><name>vm{n}</name><uuid>00000000-0000-0000-0000-{n:012d}</uuid><metadata>"
                "<vfalloc:vfs xmlns:vfalloc='urn:vfalloc:1'><vfalloc:vf pool='lan0'/></vfalloc:vfs>"
                "</metadata><devices/></domain>")

    floor = loaded("import lxml.etree\n", [], env)
    first = loaded(run_hook, ["vm1", "prepare", "begin", "-"], env, xml(1))  # parses the config, keeps it
    assert "tomllib" in first, "the first call should parse the config: is the memo of another run in the way?"
    prepare = loaded(run_hook, ["vm2", "prepare", "begin", "-"], env, xml(2))
    release = loaded(run_hook, ["vm2", "release", "end", "destroyed"], env, xml(2))
    assert "vfalloc.leasing" in prepare and "vfalloc.state" in release, "the hook did not do its work"
    for name, mods in (("prepare begin", prepare), ("release end", release)):
        extra = sorted(m for m in AVOIDED if m in mods and m not in floor)
        assert not extra, f"`{name}` imports {extra}; docs/performance.md says it does not"


def test_the_projects_interpreter_starts_without_an_import_hook():
    """setup.cfg names the packages' root, so `make setup`'s editable install is a plain .pth
    line, not setuptools' import hook for a flat layout, which loads these at every start of the
    venv's Python (docs/testing.md: the emulated host starts it hundreds of times a run)."""
    code = "import sys; print(sorted(m for m in ('pathlib', 'fnmatch', 'urllib.parse', 're') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert (r.returncode, r.stdout) == (0, "[]\n"), r.stderr


# -- docs/performance.md: what the listings do not import --

LISTING_AVOIDS = ("typing", "shutil", "tomllib", "libvirt", "lxml", "datetime", "subprocess",
                  "vfalloc.fdb", "vfalloc.commands.audit")


@pytest.mark.parametrize("argv", [["list"], ["list", "--json"], ["pools"], ["pools", "--json"]],
                         ids=["list", "list-json", "pools", "pools-json"])
def test_listings_avoid_the_imports_performance_md_names(scratch, argv):
    """On a host where the hook ran (the config's parse kept) and the leases are reserved by
    hand, `vfalloc list` and `vfalloc pools` import none of these (typing alone is some 3 ms)."""
    i350(scratch.fs)
    scratch.write_config('[pools.lan0]\npfs = ["enp1s0f0"]\n')
    assert scratch.run("alloc", "--domain", "vm1", "--uuid", "00000000-0000-0000-0000-000000000001",
                       "--pool", "lan0").code == 0
    env = scratch.env()
    run_hook = HOOK_PYTHON + "\n"  # what the hook file runs for these calls
    xml = ("<domain><name>vm2</name><uuid>00000000-0000-0000-0000-000000000002</uuid><metadata>"
           "<vfalloc:vfs xmlns:vfalloc='urn:vfalloc:1'><vfalloc:vf pool='lan0'/></vfalloc:vfs></metadata>"
           "<devices/></domain>")
    assert "tomllib" in loaded(run_hook, ["vm2", "prepare", "begin", "-"], env, xml)  # keeps the config's parse
    loaded(run_hook, ["vm2", "release", "end", "destroyed"], env, xml)
    code = "import sys\nfrom vfalloc.cli import main\nrc = main(sys.argv[1:])\nsys.exit(rc)\n"
    mods = loaded(code, argv, env)
    assert "vfalloc.holdings" in mods, "the listing did not run"
    extra = sorted(m for m in LISTING_AVOIDS if m in mods)
    assert not extra, f"`vfalloc {' '.join(argv)}` imports {extra}; docs/performance.md says it does not"
