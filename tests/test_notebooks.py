"""notebooks/ as kept in git: outputs stripped, kernel and language metadata, a parameter cell.

CI executes the notebooks themselves (``pytest --nbmake notebooks``); this module only checks what they
look like on disk, in milliseconds, so that a notebook saved with its outputs or without a parameter cell
fails here with a one-line reason rather than bloating the repository.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ("01_quickstart", "02_challenge_gallery", "03_compare_runs", "04_reproduce_a_table")
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_four_notebooks_are_there():
    assert [path.stem for path in PATHS] == list(EXPECTED)


@pytest.mark.parametrize("path", PATHS, ids=[path.stem for path in PATHS])
def test_notebook_is_stored_stripped_with_metadata_and_a_parameter_cell(path: Path):
    notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4

    kernel = notebook.metadata.get("kernelspec", {})
    assert kernel.get("name") and kernel.get("display_name") and kernel.get("language") == "python", kernel
    language = notebook.metadata.get("language_info", {})
    assert language.get("name") == "python" and language.get("version"), language

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    with_outputs = [index for index, cell in enumerate(code) if cell.outputs]
    counted = [index for index, cell in enumerate(code) if cell.execution_count is not None]
    assert not with_outputs, f"code cells {with_outputs} keep their outputs: strip them before committing"
    assert not counted, f"code cells {counted} keep execution counts: strip them before committing"
    assert not any("execution" in cell.metadata for cell in code), "cell execution timings are stored"

    parameters = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1, "exactly one cell tagged 'parameters' (the small schedule CI runs)"
    assert parameters[0].cell_type == "code" and parameters[0] is code[0], \
        "the parameter cell is the first code cell, so that papermill-style runs can override it"
