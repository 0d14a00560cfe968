"""The documentation keeps up with the code.

- Every error or warning message the engine and the built-in plugins can print has a row in
  docs/troubleshooting.md. The messages are found in the source with ``ast``: the message
  argument of the engine's error types, of ``log.error`` / ``log.warning`` /
  ``log.exception`` calls, of the engine's and retention's report-once helpers, of the
  configuration validator's problem list, of ``uploader check``'s failure details and of the
  control socket's error replies. Every fixed piece of text of at least 12 characters (what
  stays when the ``{placeholders}`` and ``%s`` are taken out) must appear in the
  troubleshooting page, so the page quotes each message as it is printed.
- Every relative link in docs/*.md and README.md points at a file that exists, and at a
  heading of it that exists when the link names one; docs/README.md lists every page.

When the first test fails, it lists the messages that are missing, with where they are in the
code: add a row for each to docs/troubleshooting.md (quote the message, then cause and fix).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TROUBLESHOOTING = DOCS / "troubleshooting.md"

# Where the messages an operator can see come from. The TUI, the demo and the chaos tooling
# print their own, for the person at the keyboard; the test helpers print none in production.
SOURCE_DIRS = ("uploader_core", "uploader_plugins")
SKIPPED_FILES = {"uploader_core/testing.py"}

# Error types whose message reaches a log line, a check line or the command's stderr.
ERROR_TYPES = {
    "UploaderError", "ConfigurationError", "PermanentJobError", "EndpointUnavailable",
    "TransientError", "Interrupted", "QueueBusy", "InvalidConfiguration", "ConnectionLost",
    # What `uploader status` and `uploader tui` print when the control socket says no.
    "ControlError", "EngineNotRunning", "PermissionDenied", "RequestError",
    # The control socket's answer to a requeue of an event that is not quarantined.
    "FileNotFoundError",
    # RemoteOp.failure: the error type the SFTP plugin picks for a bare "Failure" status.
    "failure",
}
# VideoMissing is caught by the engine and never printed: the job simply waits.
LOG_METHODS = {"error", "warning", "exception", "critical"}
# Helpers that log a message once: name -> index of the message argument.
REPORT_HELPERS = {"_report": 2, "_say": -1}

# A fragment shorter than this is too common to tell one message from another.
MIN_FRAGMENT = 12
# printf-style placeholders in log calls: %s, %d, %r, %.0f, %5.1f, %%...
PRINTF = re.compile(r"%[-+ #0]*\d*(?:\.\d+)?[sdrifx%]")


@dataclass(frozen=True)
class Message:
    where: str  # path:line
    pieces: tuple[str, ...]  # the fixed text between placeholders

    @property
    def fragment(self) -> str:
        """The longest fixed piece: what identifies the message."""
        return max(self.pieces, key=len, default="")

    @property
    def fragments(self) -> list[str]:
        """Every fixed piece long enough to be quoted as it is."""
        return [p for p in self.pieces if len(p) >= MIN_FRAGMENT]

    @property
    def shown(self) -> str:
        return "<...>".join(self.pieces)


def _pieces(node: ast.expr, printf: bool) -> list[list[str]]:
    """The fixed text of a message expression, one list of pieces per possible message.

    A conditional expression (``a if c else b``) gives one message per branch; anything that
    is not literal text is a placeholder.
    """
    if isinstance(node, ast.IfExp):
        return _pieces(node.body, printf) + _pieces(node.orelse, printf)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        parts = [node.value]
    elif isinstance(node, ast.JoinedStr):
        parts = [v.value for v in node.values
                 if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _pieces(node.left, printf), _pieces(node.right, printf)
        return [a + b for a in left for b in right] or left or right
    else:
        return [[]]
    pieces: list[str] = []
    for part in parts:
        pieces.extend(PRINTF.split(part) if printf else [part])
    return [[_normalise(p) for p in pieces if _normalise(p)]]


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _assignments(tree: ast.AST) -> dict[int, dict[str, ast.expr]]:
    """For each function (by id of its node), its simple ``name = <expr>`` assignments."""
    found: dict[int, dict[str, ast.expr]] = {}
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names: dict[str, ast.expr] = {}
            for node in ast.walk(func):
                if (isinstance(node, ast.Assign) and len(node.targets) == 1
                        and isinstance(node.targets[0], ast.Name)):
                    names[node.targets[0].id] = node.value
            found[id(func)] = names
    return found


def _message_nodes(tree: ast.AST) -> Iterator[tuple[ast.expr, bool]]:
    """Every expression that is a printed message, and whether it uses printf placeholders."""
    assigned = _assignments(tree)
    scopes: list[ast.AST] = []

    def resolve(node: ast.expr) -> ast.expr:
        # A message built in a variable first (message = f"..."; self._report(..., message)).
        if isinstance(node, ast.Name):
            for scope in reversed(scopes):
                value = assigned.get(id(scope), {}).get(node.id)
                if value is not None:
                    return value
        return node

    classes: list[str] = []

    def visit(node: ast.AST) -> Iterator[tuple[ast.expr, bool]]:
        is_scope = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        if is_scope:
            scopes.append(node)
        if isinstance(node, ast.ClassDef):
            classes.append(node.name)
        if isinstance(node, ast.Call):
            yield from from_call(node)
        if isinstance(node, ast.Dict):
            # A control socket reply: {"ok": False, "error": "..."}
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "error":
                    yield value, False
        for child in ast.iter_child_nodes(node):
            yield from visit(child)
        if isinstance(node, ast.ClassDef):
            classes.pop()
        if is_scope:
            scopes.pop()

    def from_call(call: ast.Call) -> Iterator[tuple[ast.expr, bool]]:
        name = _call_name(call.func)
        args = call.args
        if (name == "__init__" and classes and classes[-1] in ERROR_TYPES and args
                and isinstance(call.func, ast.Attribute)
                and isinstance(call.func.value, ast.Call)
                and _call_name(call.func.value.func) == "super"):
            name = classes[-1]  # an error type that composes its own message
        if name in ERROR_TYPES and args:
            first = resolve(args[0])
            if isinstance(first, (ast.List, ast.Tuple)):  # InvalidConfiguration([...])
                for item in first.elts:
                    yield item, False
            else:
                yield first, False
        elif (name in LOG_METHODS and isinstance(call.func, ast.Attribute)
              and isinstance(call.func.value, ast.Name) and call.func.value.id == "log"
              and args):
            yield resolve(args[0]), True
        elif name in REPORT_HELPERS and len(args) >= 3:
            yield resolve(args[REPORT_HELPERS[name]]), False
        elif name == "_say" and len(args) == 1:  # the CLI's "uploader: <message>" on stderr
            yield resolve(args[0]), False
        elif (name == "append" and isinstance(call.func, ast.Attribute)
              and isinstance(call.func.value, ast.Name) and call.func.value.id == "problems"
              and args):
            yield args[0], False  # configuration validation
        elif name == "RemoteOp":
            for keyword in call.keywords:
                if keyword.arg in ("missing", "hint"):
                    yield keyword.value, False
        elif name == "CheckResult":
            keywords = {k.arg: k.value for k in call.keywords}
            ok = keywords.get("ok")
            if "detail" in keywords and not (isinstance(ok, ast.Constant) and ok.value is True):
                yield resolve(keywords["detail"]), False

    yield from visit(tree)


def collect_messages() -> list[Message]:
    messages: list[Message] = []
    for directory in SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in SKIPPED_FILES:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=relative)
            for node, printf in _message_nodes(tree):
                for pieces in _pieces(node, printf):
                    message = Message(f"{relative}:{node.lineno}", tuple(pieces))
                    if len(message.fragment) >= MIN_FRAGMENT:
                        messages.append(message)
    return messages


def test_the_collector_finds_the_messages_it_is_meant_to() -> None:
    messages = collect_messages()
    shown = [m.shown for m in messages]
    # One of each kind of source, so that a refactoring that hides them fails here first.
    for expected in (
        "is already processing",  # QueueBusy
        "which is not valid JSON and jsonb refuses",  # PermanentJobError
        ": unknown key",  # validation problem
        "has no video",  # _report
        "quarantined in",  # log.error with %s
        "archive retention deletes nothing:",  # retention's _say, through a variable
        "missing; run 'uploader init-db -c CONFIG'",  # a check line
    ):
        assert any(expected in text for text in shown), expected
    assert len({m.fragment for m in messages}) > 100


def test_every_message_is_in_the_troubleshooting_table() -> None:
    documented = _normalise(TROUBLESHOOTING.read_text(encoding="utf-8"))
    checked = [(m, [f for f in m.fragments if f not in documented])
               for m in collect_messages()]
    missing = [(m, fragments) for m, fragments in checked if fragments]
    listing = "\n".join(f"  {m.where}: {', '.join(repr(f) for f in fragments)}  "
                        f"(message: {m.shown!r})" for m, fragments in missing)
    assert not missing, (
        f"{len(missing)} message(s) the uploader can print are not in "
        f"{TROUBLESHOOTING.relative_to(ROOT)}; add a row for each (the message as printed, "
        f"its cause, the fix):\n{listing}"
    )


# --- links

LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# Fenced code blocks, also indented ones inside list items: neither links nor headings.
FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1", re.MULTILINE | re.DOTALL)


def _relative_links(markdown: Path) -> Iterator[tuple[str, Path, str]]:
    """``(link, file it points at, anchor or "")`` for every relative link of a page."""
    text = FENCE.sub("", markdown.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # http:, mailto:
        path, _, anchor = target.partition("#")
        yield target, (markdown.parent / unquote(path)) if path else markdown, anchor


def _anchors(markdown: Path) -> set[str]:
    """The anchors GitHub makes for the headings of a page."""
    text = FENCE.sub("", markdown.read_text(encoding="utf-8"))
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def test_relative_links_in_the_docs_point_at_files_and_headings_that_exist() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        for target, path, anchor in _relative_links(page):
            if not path.exists():
                broken.append(f"  {page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"  {page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_docs_index_lists_every_page() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    linked = {path.resolve() for _, path, _ in _relative_links(DOCS / "README.md")}
    unlisted = [page.name for page in sorted(DOCS.glob("*.md"))
                if page.name != "README.md" and page.resolve() not in linked]
    assert index and not unlisted, f"docs/README.md does not link to: {', '.join(unlisted)}"
