"""Every Python snippet of the README runs as written, in order, in one namespace."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_snippets():
    assert len(python_blocks(README.read_text())) >= 5


def test_readme_snippets_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # snippets write files (model.onnx, digits.pt)
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(python_blocks(README.read_text())):
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"README python block {i + 1} fails: {e!r}\n{block}") from e
    assert namespace["result"].test_accuracy > 0.9  # the quickstart's claim (≈ 0.99)
    hls = namespace["report"]["hls4ml"]
    assert hls.ran and hls.passed and hls.mismatched == 0  # the README's hls4ml flow runs
    assert (tmp_path / "digits.pt").exists() and (tmp_path / "model.onnx").exists()
