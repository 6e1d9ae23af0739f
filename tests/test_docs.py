"""The documentation: every command and option has its entry, the README stays a front door."""

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cli_reference", REPO / "scripts" / "cli_reference.py")
cli_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_reference)
_spec = importlib.util.spec_from_file_location("benchmark_pages", REPO / "scripts" / "benchmark_pages.py")
benchmark_pages = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark_pages)


def test_every_command_and_option_has_its_docs_entry():
    """Each command's page holds the table generated from the command itself: a new command
    without a page, or an option added without regenerating, fails here."""
    assert cli_reference.update(check=True) == []


def test_a_stale_page_is_found(tmp_path, monkeypatch):
    """The check can fail: a page whose table lost an option is reported, a missing page too."""
    pages = tmp_path / "commands"
    pages.mkdir()
    for page in (REPO / "docs" / "commands").glob("*.md"):
        text = page.read_text()
        if page.stem == "bench":
            text = text.replace("| `--warmup N` |", "| `--warm N` |")
        if page.stem != "doctor":
            (pages / page.name).write_text(text)
    monkeypatch.setattr(cli_reference, "PAGES", pages)
    monkeypatch.setattr(cli_reference, "ROOT", tmp_path)
    problems = cli_reference.update(check=True)
    assert any("bench.md" in p and "differ" in p for p in problems), problems
    assert any("doctor.md is missing" in p for p in problems), problems


def test_benchmark_results_page_is_what_the_benchmarks_wrote(tmp_path, monkeypatch):
    """docs/benchmark-results.md is generated from benchmarks/results/*.json: a figure edited by
    hand on the page, or a result file not rendered, fails here."""
    import json

    assert (REPO / "docs" / "benchmark-results.md").read_text() == benchmark_pages.render()
    results = sorted((REPO / "benchmarks" / "results").glob("*.json"))
    assert results, "no benchmark has written its results"
    for path in results:
        data = json.loads(path.read_text())
        assert data["machine"]["cpu"] and data["machine"]["isa"] is not None and data["date"], path.name
    copied = tmp_path / "results"
    copied.mkdir()
    data = json.loads(results[0].read_text())
    data["tables"][0]["rows"][0][-1] = "999 %"  # a figure that is not what the page shows
    (copied / results[0].name).write_text(json.dumps(data))
    monkeypatch.setattr(benchmark_pages, "RESULTS", copied)
    assert benchmark_pages.render() != (REPO / "docs" / "benchmark-results.md").read_text()


def test_every_page_is_in_the_navigation_and_every_link_resolves():
    """What `mkdocs build --strict` also checks (make docs), here without building: the nav
    lists every page, and relative Markdown links in docs/ and the README point at files."""
    nav = (REPO / "mkdocs.yml").read_text()
    docs = REPO / "docs"
    for page in docs.rglob("*.md"):
        assert str(page.relative_to(docs)) in nav, f"{page} is not in mkdocs.yml's nav"
    for page in [*docs.rglob("*.md"), REPO / "README.md"]:
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.relative_to(REPO)} links to missing {target}"


def test_the_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    for page in [REPO / "README.md", REPO / "CHANGELOG.md", *(REPO / "docs").rglob("*.md")]:
        text = page.read_text().lower()
        for words in ("the issue", "this stop", "the goal", "issue 1", "issue 2"):
            assert words not in text, f"{page.relative_to(REPO)} speaks to the team: {words!r}"
    for command in ("make demo", "make test", "vitedge inspect", "vitedge compile"):
        assert command in readme
