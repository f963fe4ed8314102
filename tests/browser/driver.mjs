// Drives Debian's chromium through playwright-core for tests/test_view_browser.py.
// One JSON command per stdin line, one JSON answer per stdout line ({id, ok, value | error}).
// Every request any frame makes, every console message and every page error is recorded, so the
// tests can assert that the view loads nothing from anywhere.
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const [toolsDir, executablePath] = process.argv.slice(2);
const require = createRequire(join(toolsDir, "node_modules", "x.js"));
const { chromium } = require("playwright-core");

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const profile = mkdtempSync(join(tmpdir(), "sessions-mcp-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  chromiumSandbox: false,
  args: FLAGS,
  viewport: { width: 720, height: 900 },
});

let page = null;
const log = { requests: [], console: [], errors: [] };

function outer() {
  return page.frames().find((f) => f.parentFrame() === page.mainFrame()) ?? null;
}
function inner() {
  const o = outer();
  return o ? (o.childFrames()[0] ?? null) : null;
}
function frameKind(frame) {
  if (!frame) return "?";
  if (frame === page.mainFrame()) return "host";
  if (frame.parentFrame() === page.mainFrame()) return "sandbox";
  return "view";
}
function view() {
  return page.frameLocator("#frame").frameLocator("iframe");
}

async function until(fn, timeout, what) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (error) {
      last = String(error);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
}

const ops = {
  async open({ url, width = 720, height = 900, colorScheme = "light", timeout = 20000 }) {
    if (page) await page.close();
    log.requests = [];
    log.console = [];
    log.errors = [];
    page = await context.newPage();
    await page.setViewportSize({ width, height });
    await page.emulateMedia({ colorScheme });
    page.on("request", (r) => log.requests.push({ url: r.url(), method: r.method(), frame: frameKind(r.frame()) }));
    page.on("console", (m) => log.console.push({ type: m.type(), text: m.text() }));
    page.on("pageerror", (e) => log.errors.push(String(e)));
    await page.goto(url);
    const state = await until(
      () => page.evaluate(() => (window.hostState && (window.hostState.ready || window.hostState.error) ? window.hostState : null)),
      timeout,
      "the host to render the view",
    );
    if (state.error) throw new Error(`host failed: ${state.error}`);
    return { mime: state.mime, csp: state.csp, result: state.result, protocolVersion: state.protocolVersion };
  },
  async wait_text({ text, selector = "body", timeout = 10000 }) {
    const started = Date.now();
    await until(async () => (await view().locator(selector).first().innerText()).includes(text), timeout, `${JSON.stringify(text)} in ${selector}`);
    return Date.now() - started;
  },
  async wait_gone({ text, selector = "body", timeout = 10000 }) {
    await until(async () => !(await view().locator(selector).first().innerText()).includes(text), timeout, `${JSON.stringify(text)} to leave ${selector}`);
    return true;
  },
  async text({ selector }) {
    return view().locator(selector).first().innerText();
  },
  async texts({ selector }) {
    return view().locator(selector).allInnerTexts();
  },
  async count({ selector }) {
    return view().locator(selector).count();
  },
  async visible({ selector }) {
    return view().locator(selector).first().isVisible();
  },
  async attr({ selector, name }) {
    return view().locator(selector).first().getAttribute(name);
  },
  async click({ selector, text }) {
    const loc = text ? view().locator(selector, { hasText: text }) : view().locator(selector);
    await loc.first().click();
    return true;
  },
  async dblclick({ selector }) {
    await view().locator(selector).first().dblclick();
    return true;
  },
  async fill({ selector, value }) {
    await view().locator(selector).first().fill(value);
    return true;
  },
  async host({ expr }) {
    return page.evaluate(expr);
  },
  async in_view({ expr }) {
    const frame = await until(() => inner(), 5000, "the view frame");
    return frame.evaluate(expr);
  },
  async style({ selector, property }) {
    return view().locator(selector).first().evaluate((el, p) => getComputedStyle(el).getPropertyValue(p), property);
  },
  async scroll_width() {
    const frame = await until(() => inner(), 5000, "the view frame");
    return frame.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
  },
  async screenshot({ path }) {
    await page.locator("#frame").screenshot({ path });
    return path;
  },
  async close() {
    if (page) await page.close();
    page = null;
    return true;
  },
  async log() {
    return log;
  },
};

async function handle(line) {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch {
    return;
  }
  try {
    const value = await ops[msg.op](msg);
    process.stdout.write(`${JSON.stringify({ id: msg.id, ok: true, value: value ?? null })}\n`);
  } catch (error) {
    process.stdout.write(`${JSON.stringify({ id: msg.id, ok: false, error: String(error && error.message ? error.message : error) })}\n`);
  }
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (line.trim() === "quit") break;
  await handle(line);
}
await context.close();
rmSync(profile, { recursive: true, force: true });
process.exit(0);
