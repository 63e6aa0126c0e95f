"""Every ```python block of every docs page runs as written.

Each page's blocks run in page order in one fresh namespace (as a reader pasting
them one after the other into a new interpreter would), with the working
directory a new temporary directory, torch seeded with 0, and context variables
(e.g. the kernels' precision) reset afterwards.
Blocks marked ``<!-- no-run: reason -->`` are skipped; the list is kept short.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import textwrap

import pytest
import torch

from tests.docs.snippets import DOCS, Block, parse_blocks, pages_with_python

PAGES = pages_with_python()
# Blocks that cannot run on a CPU-only test machine; every entry needs a reason on the page.
MAX_NO_RUN = 3


def _run_page(blocks: list[Block]) -> None:
    namespace: dict[str, object] = {"__name__": "__docs_page__"}
    for block in blocks:
        if block.no_run is not None:
            continue
        code = compile(block.code, f"docs/{block.page}:{block.line}", "exec")
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                exec(code, namespace)  # noqa: S102 - the documentation's own examples
            except Exception as err:
                listing = textwrap.indent(block.code, "    ")
                raise AssertionError(
                    f"docs/{block.page}, block at line {block.line} failed: {type(err).__name__}: {err}\n{listing}"
                ) from err


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_blocks_run(page: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    # A copied context keeps settings held in context variables (e.g. the kernels' precision) inside the page.
    contextvars.copy_context().run(_run_page, PAGES[page])


def test_no_run_markers_are_few_and_explained() -> None:
    skipped = [b for blocks in PAGES.values() for b in blocks if b.no_run is not None]
    assert len(skipped) <= MAX_NO_RUN, [f"{b.page}:{b.line}" for b in skipped]
    assert all(len(b.no_run) >= 10 for b in skipped), [f"{b.page}:{b.line}: {b.no_run!r}" for b in skipped]


def test_collector_finds_the_known_blocks() -> None:
    # The getting-started page is the longest runnable walk-through; losing its blocks means the parser broke.
    assert len(PAGES.get("getting-started.md", [])) >= 5
    assert sum(len(blocks) for blocks in PAGES.values()) >= 20


def test_parser_reads_markers_fences_and_languages() -> None:
    text = (
        "intro\n\n<!-- no-run: needs a CUDA device -->\n\n```python\nx = 1\n```\n"
        "```bash\nls\n```\n* item\n\n    ```py\n    y = 2\n    ```\n~~~~python\nz = 3\n~~~~\n"
    )
    blocks = parse_blocks(text, "t.md")
    assert [(b.line, b.language, b.code, b.no_run) for b in blocks] == [
        (5, "python", "x = 1\n", "needs a CUDA device"),
        (8, "bash", "ls\n", None),
        (13, "py", "y = 2\n", None),
        (16, "python", "z = 3\n", None),
    ]
    with pytest.raises(ValueError, match="t.md:1: unclosed"):
        parse_blocks("```python\nx = 1\n", "t.md")


def test_a_failing_block_names_its_page_and_line() -> None:
    blocks = parse_blocks("```python\nx = 1\n```\n\n```python\nundefined_name\n```\n", "bad.md")
    with pytest.raises(AssertionError, match=r"docs/bad.md, block at line 5 failed: NameError"):
        _run_page(blocks)


def test_docs_dir_is_the_repository_docs() -> None:
    assert (DOCS / "index.md").is_file()
