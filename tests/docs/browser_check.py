"""Load the built docs site in headless Chromium and check that it renders.

Usage (from the repository root)::

    python -m tests.docs.browser_check                 # mkdocs build --strict into a temp dir, then check
    python -m tests.docs.browser_check --site site     # check an already built site (e.g. after `make docs`)

The site is served on 127.0.0.1 and its pages are loaded in
Debian's ``chromium`` (``/usr/bin/chromium``): first ``KEY_PAGES`` (home, getting
started, the CoDD, training and sampling pages, both API reference pages), then
every other page of the site (``--key-pages-only`` skips those). It is driven through the Chrome
DevTools protocol over ``--remote-debugging-pipe`` (no extra package, no
network port for the browser). For every page it asserts:

* math is typeset: pages in ``MATH_PAGES`` contain KaTeX output, no
  ``.arithmatex`` element is left untypeset, no ``.katex-error``, and the
  page text outside code holds no raw ``\\(``, ``\\)``, ``\\[``, ``\\]`` or ``$$``;
* no console error, uncaught exception, error log entry, failed request or HTTP error status
  (a missing page or asset fails);
* every request stays on the local server (the site works offline);
* no raw Sphinx role (``:func:``, ``:class:``, ``:meth:``, ...) is left in the
  page text (``FAIL_ON_RAW_ROLES``; ``--no-fail-on-raw-roles`` only counts them).

Exit status 0 when every assertion holds, 1 otherwise; one line per page.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import http.server
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# Key pages, relative to the site root, loaded first (a missing one fails: HTTP 404); every other page of
# the built site follows unless --key-pages-only. Pages in MATH_PAGES must contain typeset math.
KEY_PAGES = [
    "",
    "getting-started/",
    "diffusion/codd/",
    "diffusion/training/",
    "diffusion/sampling/",
    "api/pcircuits/",
    "api/diffusion/",
]
MATH_PAGES = {"diffusion/codd/", "diffusion/training/", "diffusion/sampling/", "diffusion/evaluation/"}
# Docstrings use Markdown cross-references: a raw Sphinx role on a page fails (--no-fail-on-raw-roles only counts).
FAIL_ON_RAW_ROLES = True
PAGE_TIMEOUT_S = 30.0

# Runs in the page; returns what the assertions need (text inside <pre>, <script>, <style> and KaTeX output is skipped).
PAGE_PROBE = r"""
(() => {
  const proseParts = [];
  const codeFreeParts = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest("pre, script, style, .katex")) continue;
    proseParts.push(n.nodeValue);
    if (!el.closest("code")) codeFreeParts.push(n.nodeValue);
  }
  const prose = proseParts.join("\n");
  const codeFree = codeFreeParts.join("\n");
  const roles = prose.match(/:(?:py:)?(?:func|class|meth|attr|mod|obj|exc|data|const|ref):/g) || [];
  const rawMath = codeFree.match(/\\\(|\\\)|\\\[|\\\]|\$\$/g) || [];
  const contextOf = (text, re) => {
    const m = re.exec(text);
    return m ? text.slice(Math.max(0, m.index - 40), m.index + 60).replace(/\s+/g, " ") : "";
  };
  const arithmatex = Array.from(document.querySelectorAll(".arithmatex"));
  return {
    title: document.title,
    katex: document.querySelectorAll(".katex").length,
    arithmatex: arithmatex.length,
    untypeset: arithmatex.filter((el) => !el.querySelector(".katex")).length,
    katexErrors: document.querySelectorAll(".katex-error").length,
    rawMath: rawMath.length,
    rawMathExample: contextOf(codeFree, /\\\(|\\\)|\\\[|\\\]|\$\$/),
    roles: roles.length,
    roleExample: contextOf(prose, /:(?:py:)?(?:func|class|meth|attr|mod|obj|exc|data|const|ref):/),
  };
})()
"""


class CDPError(RuntimeError):
    """The browser answered a DevTools command with an error, or did not answer in time."""


class PipeBrowser:
    """Chromium driven by the DevTools protocol over ``--remote-debugging-pipe``.

    The browser reads NUL-terminated JSON commands from file descriptor 3 and
    writes NUL-terminated responses and events to descriptor 4. Events are
    kept in ``events`` until the caller clears them.

    Args:
        executable: the chromium binary.
        user_data_dir: a fresh profile directory.
        log_path: where the browser's stderr goes.
    """

    def __init__(self, executable: str, user_data_dir: Path, log_path: Path) -> None:
        cmd_read, self._cmd_write = os.pipe()
        self._out_read, out_write = os.pipe()

        def wire_fds() -> None:  # in the child: the command pipe as fd 3, the output pipe as fd 4
            high_cmd = fcntl.fcntl(cmd_read, fcntl.F_DUPFD, 10)
            high_out = fcntl.fcntl(out_write, fcntl.F_DUPFD, 10)
            os.dup2(high_cmd, 3)
            os.dup2(high_out, 4)

        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        args = [
            executable,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={user_data_dir}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.process = subprocess.Popen(  # noqa: S603 - fixed argument list
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, preexec_fn=wire_fds, close_fds=False
        )
        os.close(cmd_read)
        os.close(out_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def send(
        self, method: str, params: dict | None = None, session: str | None = None, timeout: float = PAGE_TIMEOUT_S
    ) -> dict:
        """Send one command and return its ``result`` (events seen meanwhile go to ``events``)."""
        self._next_id += 1
        message: dict = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._cmd_write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply is None:
                raise CDPError(f"{method}: no answer within {timeout:.0f} s")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = PAGE_TIMEOUT_S) -> dict:
        """Wait for an event of ``session`` (already received ones count) and return it."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event["method"] == method and event.get("sessionId") == session:
                    return event
            seen = len(self.events)
            message = self._read(deadline)
            if message is None:
                raise CDPError(f"no {method} within {timeout:.0f} s")
            if "method" in message:
                self.events.append(message)

    def drain(self, seconds: float) -> None:
        """Collect the events that arrive within ``seconds``."""
        deadline = time.monotonic() + seconds
        while (message := self._read(deadline)) is not None:
            if "method" in message:
                self.events.append(message)

    def _read(self, deadline: float) -> dict | None:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out_read], [], [], left)[0]:
                return None
            chunk = os.read(self._out_read, 1 << 20)
            if not chunk:
                raise CDPError(f"the browser closed its DevTools pipe (exit status {self.process.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        """Ask the browser to quit, then make sure it has."""
        with contextlib.suppress(CDPError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._cmd_write, self._out_read):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()


@dataclass
class PageReport:
    """What one page showed, and the assertions it failed."""

    path: str
    probe: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        p = self.probe
        status = "ok  " if not self.failures else "FAIL"
        counts = (
            f"katex={p.get('katex', '?')} arithmatex={p.get('arithmatex', '?')} raw_math={p.get('rawMath', '?')} "
            f"raw_roles={p.get('roles', '?')} console_errors={len(self.errors)} external_requests={len(self.external)}"
        )
        return f"{status} /{self.path:<32} {counts}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        pass


@contextlib.contextmanager
def serve(site: Path) -> Iterator[str]:
    """Serve ``site`` on 127.0.0.1 (a free port) for the duration of the block; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def build_site(out: Path) -> None:
    """``mkdocs build --strict`` of the repository into ``out``; raises ``RuntimeError`` with the log on failure."""
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, check=False)  # noqa: S603
    if done.returncode != 0:
        raise RuntimeError(f"mkdocs build --strict failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def _event_errors(events: list[dict], session: str) -> list[str]:
    errors = []
    for event in events:
        if event.get("sessionId") != session:
            continue
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            texts = [str(a.get("value", a.get("description", ""))) for a in params.get("args", [])]
            errors.append("console." + params["type"] + ": " + " ".join(texts))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            errors.append("exception: " + details.get("exception", {}).get("description", details.get("text", "")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"log: {entry.get('text', '')} {entry.get('url', '')}".strip())
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            errors.append(f"request failed: {params.get('errorText', '')}")
        elif method == "Network.responseReceived" and params.get("response", {}).get("status", 200) >= 400:
            response = params["response"]
            errors.append(f"HTTP {response['status']}: {response.get('url', '')}")
    return errors


def _external_requests(events: list[dict], session: str, base_url: str) -> list[str]:
    urls = [
        e["params"]["request"]["url"]
        for e in events
        if e.get("sessionId") == session and e["method"] == "Network.requestWillBeSent"
    ]
    return [u for u in urls if not u.startswith((base_url, "data:", "blob:", "about:"))]


def check_page(
    browser: PipeBrowser, session: str, base_url: str, path: str, expect_math: bool, fail_on_roles: bool
) -> PageReport:
    """Load one page and apply the assertions (see the module docstring)."""
    report = PageReport(path)
    browser.events.clear()
    browser.send("Page.navigate", {"url": base_url + path}, session)
    browser.wait_for("Page.loadEventFired", session)
    browser.drain(0.3)  # late console messages (search worker, deferred scripts)
    result = browser.send("Runtime.evaluate", {"expression": PAGE_PROBE, "returnByValue": True}, session)
    if "exceptionDetails" in result:
        raise CDPError(f"/{path}: the page probe raised {result['exceptionDetails']}")
    report.probe = p = result["result"]["value"]
    report.errors = _event_errors(browser.events, session)
    report.external = _external_requests(browser.events, session, base_url)
    if expect_math and p["katex"] == 0:
        report.failures.append("no typeset math (no .katex element)")
    if p["untypeset"]:
        report.failures.append(f"{p['untypeset']} .arithmatex element(s) not typeset")
    if p["katexErrors"]:
        report.failures.append(f"{p['katexErrors']} KaTeX error(s)")
    if p["rawMath"]:
        report.failures.append(f"{p['rawMath']} raw math delimiter(s), e.g. {p['rawMathExample']!r}")
    if report.errors:
        report.failures.append(f"{len(report.errors)} console error(s): {report.errors[:3]}")
    if report.external:
        report.failures.append(f"requests leave the local site: {report.external[:3]}")
    if fail_on_roles and p["roles"]:
        report.failures.append(f"{p['roles']} raw Sphinx role(s), e.g. {p['roleExample']!r}")
    return report


def site_pages(site: Path) -> list[str]:
    """``KEY_PAGES`` then every other page of a built site (directories holding an ``index.html``), as URL paths."""
    found = sorted(p.parent.relative_to(site).as_posix() + "/" for p in site.rglob("index.html"))
    found = ["" if p == "./" else p for p in found]
    return KEY_PAGES + [p for p in found if p not in KEY_PAGES]


def check_site(
    site: Path,
    pages: list[str] = KEY_PAGES,
    math_pages: set[str] = MATH_PAGES,
    fail_on_roles: bool = FAIL_ON_RAW_ROLES,
    executable: str = CHROMIUM,
) -> list[PageReport]:
    """Serve ``site``, load ``pages`` in one headless Chromium, return one report per page."""
    if not (site / "index.html").is_file():
        raise ValueError(f"site: expected a built site directory with index.html, got {site}")
    if shutil.which(executable) is None:
        raise FileNotFoundError(f"executable: chromium not found at {executable} (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="docs-browser-") as tmp:
        browser = PipeBrowser(executable, Path(tmp) / "profile", Path(tmp) / "chromium.log")
        try:
            with serve(site) as base_url:
                target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
                session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
                for domain in ("Page", "Runtime", "Log", "Network"):
                    browser.send(f"{domain}.enable", session=session)
                return [check_page(browser, session, base_url, p, p in math_pages, fail_on_roles) for p in pages]
        except CDPError as err:
            log = (Path(tmp) / "chromium.log").read_text(errors="replace")[-3000:]
            raise CDPError(f"{err}\n--- chromium log (tail) ---\n{log}") from err
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, help="an already built site (default: build one into a temp dir)")
    parser.add_argument(
        "--fail-on-raw-roles",
        action=argparse.BooleanOptionalAction,
        default=FAIL_ON_RAW_ROLES,
        help=f"fail when a page shows raw Sphinx roles (default: {FAIL_ON_RAW_ROLES})",
    )
    parser.add_argument("--key-pages-only", action="store_true", help="load only KEY_PAGES, not every page")
    parser.add_argument("--chromium", default=CHROMIUM, help=f"browser executable (default: {CHROMIUM})")
    args = parser.parse_args(argv)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="docs-site-") as tmp:
        site = args.site
        if site is None:
            site = Path(tmp) / "site"
            build_site(site)
        pages = KEY_PAGES if args.key_pages_only else site_pages(site)
        reports = check_site(site, pages, fail_on_roles=args.fail_on_raw_roles, executable=args.chromium)
    for report in reports:
        print(report.line())
        for failure in report.failures:
            print(f"       - {failure}")
    failed = sum(bool(r.failures) for r in reports)
    roles = sum(r.probe.get("roles", 0) for r in reports)
    asserted = "asserted" if args.fail_on_raw_roles else "reported, not asserted"
    print(f"raw Sphinx roles on these pages: {roles} ({asserted}); {time.monotonic() - start:.1f} s")
    print(f"docs-browser: {len(reports) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
