"""The README's module example runs exactly as written."""

import pathlib
import re


def test_readme_module_example_runs(capsys):
    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("## Use the modules in your own JAX project", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 (the README's own example)
    assert capsys.readouterr().out.strip().endswith("(2, 15, 8, 256)")


def test_readme_shows_both_setup_commands():
    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    assert "make demo" in text and "make test" in text
