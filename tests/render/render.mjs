// Render Markdown files as GitHub does a comment: GitHub-flavoured Markdown (marked) styled by
// GitHub's own stylesheet (github-markdown-css), in a column of COLUMN px, then measure each
// table in the browser: its width, its overflow, and the most lines any of its cells wraps to.
// Usage: node render.mjs OUT_DIR FILE.md...  (writes OUT_DIR/NAME.html per file)
import { readFileSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { marked } from "marked";

const COLUMN = Number(process.env.COMMENT_COLUMN_PX || 780);
const css = readFileSync(new URL("./node_modules/github-markdown-css/github-markdown-light.css", import.meta.url), "utf8");
const [out, ...files] = process.argv.slice(2);
const measure = `
const tables = [...document.querySelectorAll("table")].map((table) => {
  let lines = 0;
  for (const cell of table.querySelectorAll("td, th")) {
    const style = getComputedStyle(cell);
    const inner = cell.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
    lines = Math.max(lines, Math.round(inner / parseFloat(style.lineHeight)));
  }
  return { width: table.getBoundingClientRect().width, scroll: table.scrollWidth, client: table.clientWidth, lines };
});
document.getElementById("measured").textContent = JSON.stringify({ column: ${COLUMN}, tables });
`;
for (const file of files) {
  const html = marked.parse(readFileSync(file, "utf8"), { gfm: true });
  const page = `<!doctype html><html><head><meta charset="utf-8"><style>${css}</style>
<style>body { margin: 0; } article { box-sizing: border-box; width: ${COLUMN}px; padding: 0; }</style></head>
<body><article class="markdown-body">${html}</article><pre id="measured"></pre><script>${measure}</script></body></html>`;
  writeFileSync(join(out, basename(file, ".md") + ".html"), page);
}
