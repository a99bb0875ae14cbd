"""Every chapter notebook hides its set-up from the reader (fast: reads the notebooks, runs nothing)."""

import nbformat
import pytest
from notebook_tools import NOTEBOOKS

BOOK_CHAPTERS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", BOOK_CHAPTERS, ids=lambda p: p.stem)
def test_setup_cells_are_hidden(path):
    nb = nbformat.read(str(path), as_version=4)
    setup = [c for c in nb.cells if c.cell_type == "code"
             and ("plots.enable()" in c.source or "context.parameters_table" in c.source)]
    assert len(setup) == 2, path.stem
    for c in setup:
        assert {"remove-cell", "hide-input"} & set(c.metadata.get("tags", [])), (path.stem, c.source[:60])
