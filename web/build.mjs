// Build the live session view into ONE self-contained HTML file inside the Python package:
//   src/*.js (+ @modelcontextprotocol/ext-apps, bundled by esbuild) -> inline <script>
//   src/view.css -> inline <style>, src/session.html -> the page.
// The page records a hash of its sources (SOURCES below) so a test without Node can tell a stale
// build; `node build.mjs --check` rebuilds in memory and fails when the committed page differs.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const OUT = join(here, "..", "src", "sessions_mcp", "apps", "session.html");
/** Files whose content decides the build (keep in sync with tests/test_view_static.py). */
export const SOURCES = ["build.mjs", "package-lock.json", "src/render.js", "src/session.html", "src/view.css", "src/view.js"];

// zod's error-message translations (~230 KB of the page) come in only because the SDK imports the
// whole `z` namespace; the view never switches zod's locale (English stays the default), so the
// namespace `z.locales` is bundled empty.
const noZodLocales = {
  name: "no-zod-locales",
  setup(b) {
    b.onResolve({ filter: /^\.\.\/locales\/index\.js$/ }, (args) =>
      /[\\/]zod[\\/]/.test(args.importer) ? { path: "zod-locales", namespace: "empty" } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: "empty" }, () => ({ contents: "export {};", loader: "js" }));
  },
};

function sourceHash() {
  const h = createHash("sha256");
  for (const name of SOURCES) {
    const data = readFileSync(join(here, name));
    h.update(`${name}\0${data.length}\0`);
    h.update(data);
  }
  return `sha256:${h.digest("hex")}`;
}

async function page() {
  const bundle = await build({
    entryPoints: [join(here, "src", "view.js")],
    bundle: true,
    write: false,
    format: "iife",
    platform: "browser",
    target: ["es2020"],
    minify: true,
    charset: "utf8",
    legalComments: "none",
    logLevel: "warning",
    plugins: [noZodLocales],
  });
  let script = bundle.outputFiles[0].text.trim();
  // an inline script must not contain its own end tag; esbuild only emits it inside strings
  script = script.replace(/<\/script/gi, "<\\/script");
  const style = readFileSync(join(here, "src", "view.css"), "utf8").trim();
  const template = readFileSync(join(here, "src", "session.html"), "utf8");
  return template
    .replace("{{SOURCE_HASH}}", sourceHash())
    .replace("{{STYLE}}", () => style)
    .replace("{{SCRIPT}}", () => script);
}

const html = await page();
if (process.argv.includes("--check")) {
  const committed = readFileSync(OUT, "utf8");
  if (committed !== html) {
    console.error(`${OUT} is out of date: run \`npm --prefix web ci && npm --prefix web run build\` and commit it`);
    process.exit(1);
  }
  console.log(`${OUT} matches a fresh build (${html.length} bytes)`);
} else {
  writeFileSync(OUT, html);
  console.log(`wrote ${OUT} (${html.length} bytes)`);
}
