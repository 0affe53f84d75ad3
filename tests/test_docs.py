"""The README and docs/ against the code: the lists the code owns cannot drift from what users read.

How the documents are read:

- A section is the text from its `## <title>` line to the next `## ` line (titles match exactly).
- A paragraph is a block of lines between blank lines; the Resuming paragraph is the README's one
  paragraph that starts with `**Resuming.**`, and the Populations paragraph the one that starts
  with `**Populations.**`.
- A name is "listed" in a paragraph when it appears there in backticks as a bare identifier
  (`num_epochs`; `--config.num_epochs` is a flag, not a listed name).
- A table row is a line starting with `|`; its first cell names what the row is about, by the
  names in backticks in that cell.

Nothing here imports JAX or compiles anything.
"""

import pathlib
import re

import pytest

from vae_jax import config as config_lib
from vae_jax import data

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT_BYTES = 15_000
README_SECTIONS = (
    "Quick start",
    "What a run leaves in its workdir",
    "Configuration",
    "Objectives",
    "Writing a variant",
    "Evaluation",
    "Python API",
    "Results",
    "Data",
    "Data attribution",
    "More",
)
IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def read(path: pathlib.Path) -> str:
    return path.read_text(encoding="utf-8")


def section_titles(text: str) -> list[str]:
    return [line[3:].strip() for line in text.splitlines() if line.startswith("## ")]


def section(text: str, title: str) -> str:
    """The body of the `## title` section; fails the test if there is not exactly one."""
    lines = text.splitlines()
    starts = [
        i for i, line in enumerate(lines) if line.startswith("## ") and line[3:].strip() == title
    ]
    assert len(starts) == 1, f"expected one '## {title}' section, found {len(starts)}"
    body = []
    for line in lines[starts[0] + 1 :]:
        if line.startswith("## "):
            break
        body.append(line)
    return "\n".join(body)


def paragraph(text: str, opening: str) -> str:
    """The one paragraph that starts with `opening`."""
    found = [p for p in re.split(r"\n\s*\n", text) if p.lstrip().startswith(opening)]
    assert len(found) == 1, f"expected one paragraph starting with {opening!r}, found {len(found)}"
    return found[0]


def backticked(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def listed_names(text: str) -> list[str]:
    """The bare identifiers in backticks."""
    return [name for name in backticked(text) if IDENTIFIER.fullmatch(name)]


def table_rows(text: str) -> list[list[str]]:
    """The cells of every table row in `text`, header and separator rows excluded."""
    rows = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            continue
        if set(line) <= set("|- :"):
            continue  # the separator row
        if i + 1 < len(lines) and set(lines[i + 1].strip()) <= set("|- :") and "-" in lines[i + 1]:
            continue  # a header row: the separator follows it
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        rows.append(cells)
    return rows


def first_cell_names(text: str) -> list[str]:
    """Every backticked name in the first cell of every table row of `text`."""
    return [name for row in table_rows(text) for name in backticked(row[0])]


def github_anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    slug = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return slug.replace(" ", "-")


def anchors(text: str) -> set[str]:
    return {github_anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


@pytest.fixture(scope="module")
def readme() -> str:
    return read(README)


# (a) resume-safe fields


def test_resuming_paragraph_lists_exactly_the_resume_safe_fields(readme):
    resuming = paragraph(section(readme, "What a run leaves in its workdir"), "**Resuming.**")
    listed = listed_names(resuming)
    assert len(listed) == len(set(listed)), f"listed twice: {sorted(listed)}"
    missing = sorted(config_lib.RESUME_SAFE_FIELDS - set(listed))
    extra = sorted(set(listed) - config_lib.RESUME_SAFE_FIELDS)
    assert not missing, f"resume-safe fields missing from the Resuming paragraph: {missing}"
    assert not extra, f"listed as resume-safe but not in RESUME_SAFE_FIELDS: {extra}"


# (b) objectives


def test_objectives_table_lists_exactly_config_objectives(readme):
    names = first_cell_names(section(readme, "Objectives"))
    assert len(names) == len(set(names)), f"an objective has two rows: {names}"
    assert set(names) == set(config_lib.OBJECTIVES), (
        f"missing: {sorted(set(config_lib.OBJECTIVES) - set(names))}; "
        f"not objectives: {sorted(set(names) - set(config_lib.OBJECTIVES))}"
    )


def test_populations_paragraph_names_every_objective_weight(readme):
    populations = paragraph(section(readme, "Objectives"), "**Populations.**")
    listed = set(listed_names(populations))
    for objective, weight in config_lib.POPULATION_WEIGHT_FIELDS.items():
        assert {objective, weight} <= listed, f"{objective}'s weight {weight} is not named"
    assert {"population_weights", "population_betas", "population_learning_rates"} <= listed
    objectives = listed & set(config_lib.OBJECTIVES)
    assert objectives == set(config_lib.POPULATION_WEIGHT_FIELDS), (
        f"objectives named with a weight that has none: "
        f"{sorted(objectives - set(config_lib.POPULATION_WEIGHT_FIELDS))}"
    )


# (c) data sources


def check_data_table(text: str, where: str) -> None:
    names = first_cell_names(text)
    prefixes = {name.partition(":")[0] + ":" for name in names if ":" in name}
    plain = {name for name in names if ":" not in name}
    expected_plain = set(data.BUILTIN_NAMES) | set(data.TFDS_NAMES)
    assert expected_plain <= plain, f"{where}: missing {sorted(expected_plain - plain)}"
    assert set(data.SOURCE_PREFIXES) <= prefixes, (
        f"{where}: missing prefixes {sorted(set(data.SOURCE_PREFIXES) - prefixes)}"
    )
    assert plain <= expected_plain, f"{where}: not data sets: {sorted(plain - expected_plain)}"
    assert prefixes <= set(data.SOURCE_PREFIXES), (
        f"{where}: not source prefixes: {sorted(prefixes - set(data.SOURCE_PREFIXES))}"
    )


def test_data_section_lists_every_source(readme):
    check_data_table(section(readme, "Data"), "README Data section")


def test_data_page_lists_every_source():
    check_data_table(read(DOCS / "data.md"), "docs/data.md")


# (d) the full schema


def configuration_rows() -> list[list[str]]:
    return table_rows(read(DOCS / "configuration.md"))


def test_configuration_page_names_every_field_once():
    names = [name for row in configuration_rows() for name in listed_names(row[0])]
    fields = set(config_lib.get_config())
    assert len(names) == len(set(names)), f"fields with two rows: {names}"
    assert fields <= set(names), (
        f"fields missing from docs/configuration.md: {sorted(fields - set(names))}"
    )
    assert set(names) <= fields, f"not fields of get_config(): {sorted(set(names) - fields)}"


def test_configuration_page_gives_each_default():
    defaults = config_lib.get_config()
    for row in configuration_rows():
        names = listed_names(row[0])
        assert len(names) == 1, f"docs/configuration.md: one field per row, not {names}"
        field = names[0]
        if field not in defaults:
            continue  # reported by test_configuration_page_names_every_field_once
        written = row[1].strip("`")
        value = eval(written, {"__builtins__": {}})  # Python literals, or (1000,) * 6
        expected = defaults[field]
        same_type = type(value) is type(expected) or (
            isinstance(expected, float) and type(value) is int
        )
        assert value == expected and same_type, (
            f"docs/configuration.md gives {field} the default {written}; "
            f"get_config() has {expected!r}"
        )


# (e) size


def test_readme_is_under_the_size_limit():
    size = len(README.read_bytes())
    assert size < README_LIMIT_BYTES, (
        f"README.md is {size} bytes; the limit is {README_LIMIT_BYTES}"
    )


# (f) links


def test_every_docs_page_linked_from_the_readme_exists(readme):
    linked = {target.split("#")[0] for target in LINK.findall(readme) if target.startswith("docs/")}
    assert linked, "the README links no docs/ page"
    missing = sorted(t for t in linked if not (ROOT / t).is_file())
    assert not missing, f"linked from the README but missing: {missing}"


def test_every_docs_page_is_in_the_readme_more_list(readme):
    more = section(readme, "More")
    linked = {target for target in LINK.findall(more)}
    pages = {f"docs/{page.name}" for page in DOCS.glob("*.md")}
    assert pages <= linked, f"docs pages not in the README's More list: {sorted(pages - linked)}"


@pytest.mark.parametrize(
    "page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: str(p.relative_to(ROOT))
)
def test_relative_links_resolve(page):
    text = read(page)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        assert destination.exists(), f"{page.name}: {target} does not exist"
        if anchor and destination.suffix == ".md":
            assert anchor in anchors(read(destination)), f"{page.name}: no heading for #{anchor}"


# The README's structure and the text other tools rely on


def test_readme_sections_in_order(readme):
    titles = section_titles(readme)
    assert tuple(titles) == README_SECTIONS, f"README sections: {titles}"


def test_quick_start_commands(readme):
    quick = section(readme, "Quick start")
    assert "pip install -e '.[test]' && python -m vae_jax.main --workdir runs/\n" in quick
    assert "\npython -m pytest\n" in quick


def test_data_attribution_keeps_the_licences(readme):
    attribution = section(readme, "Data attribution")
    for needed in ("Larochelle", "Murray", "LeCun", "CC BY-SA 3.0", "binarized_mnist.npz"):
        assert needed in attribution, f"the data attribution lost {needed!r}"


def test_performance_page_documents_the_accelerator_command():
    accelerators = section(read(DOCS / "performance.md"), "Accelerators")
    assert "python -m benchmarks.accelerator" in accelerators
    assert "python3 -m benchmarks.accelerator --output $OUT/accelerator.json" in accelerators


def test_layout_lists_exactly_the_package_modules():
    """development.md's Layout names every module of vae_jax/ (and its subpackages), and
    nothing that is gone."""
    layout = section(read(DOCS / "development.md"), "Layout")
    block = layout.split("```\n", 1)[1].split("```", 1)[0]
    listed = set(re.findall(r"\b([a-z_]+\.py|[a-z_]+/)", block)) - {"vae_jax/"}
    listed -= {"experiments/", "benchmarks/", "tests/"}
    package = ROOT / "vae_jax"
    actual = {p.name for p in package.glob("*.py")}
    actual |= {f"{p.parent.name}/" for p in package.glob("*/__init__.py")}
    assert listed == actual
