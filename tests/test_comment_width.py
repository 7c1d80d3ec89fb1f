"""The plan comment reads in a browser: every golden comment rendered as GitHub renders a
comment (GitHub-flavoured Markdown by marked, GitHub's stylesheet github-markdown-css, both
pinned in tests/render/package.json) in the 780 px column a 1,000 px wide window gives a
comment, measured in headless Chromium (Debian's): no table is wider than the column, so no
column is cut off, and no cell wraps to more than two lines. scripts/test installs both."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from conftest import GOLDEN, ROOT

RENDER = ROOT / "tests" / "render"
COLUMN_PX, MOST_LINES = 780, 2
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1000,3000"]


def measured(page: Path) -> dict:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is not installed: scripts/test installs Debian's chromium (apt-get install chromium)"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                              capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="measured">(.*?)</pre>', done.stdout, re.S)
    assert found and found.group(1), f"nothing measured in {page.name}: {done.stderr[-500:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


def test_no_table_of_a_golden_comment_is_wider_than_a_comment_column(tmp_path):
    assert (RENDER / "node_modules" / "marked").is_dir(), "tests/render has no node_modules: scripts/test runs npm ci there"
    comments = sorted((GOLDEN / "comments").glob("*.md"))
    assert len(comments) >= 4
    node = shutil.which("node")
    assert node, "Node.js is not on PATH"
    subprocess.run([node, str(RENDER / "render.mjs"), str(tmp_path), *map(str, comments)], check=True, timeout=120,
                   env={**os.environ, "COMMENT_COLUMN_PX": str(COLUMN_PX)})
    tables = 0
    for comment in comments:
        result = measured(tmp_path / f"{comment.stem}.html")
        assert result["column"] == COLUMN_PX
        for table in result["tables"]:
            tables += 1
            assert table["scroll"] <= COLUMN_PX, f"{comment.name}: a table {table['scroll']} px wide, cut off at {COLUMN_PX}"
            assert table["lines"] <= MOST_LINES, f"{comment.name}: a cell wraps to {table['lines']} lines"
    assert tables >= 4  # the table of every comment that has changes was measured
