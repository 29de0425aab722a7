#!/usr/bin/env python3
"""Fail when the files of a crate depend on each other in a cycle.

Run from the repository root (CI runs it with no arguments):

    python3 scripts/import_cycles.py                      # every crate under crates/
    python3 scripts/import_cycles.py crates/flotilla-node # one crate
    python3 scripts/import_cycles.py --root DIR ...       # crates under another checkout
    python3 scripts/import_cycles.py --self-test          # shows the check can fail

What counts as a dependency. File A depends on file B when code in A names an item that B
defines: through a `use` declaration, or a path written in code (`crate::x::Y`,
`super::Y`, `module::Y` for a module in scope). A name is followed through re-exports to
the file that defines the item, so `use crate::Node` depends on the file that defines
`Node`, not on `lib.rs` which re-exports it. A re-export itself (`pub use`,
`pub(crate) use`) is not a dependency of the re-exporting file, unless the file uses the
name itself: a facade that gathers its children's items is not knotted with them. `#[cfg(test)]` modules are left out: a test
may reach anywhere. Inline modules (`mod proto { ... }`) belong to their file.

A cycle is a strongly connected set of two or more files. The script prints each with
one of its shortest loops, and exits 1 if there is any. It reads Rust with a small
tokenizer (comments, strings and character literals stripped; braces counted), enough
for the way this workspace writes Rust: no macro-generated modules, no `#[path]`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections import deque

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every crate of the workspace.
CHECKED_CRATES = sorted(
    os.path.join("crates", name) for name in os.listdir(os.path.join(REPOSITORY, "crates"))
)

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
ITEM_RE = re.compile(
    r"\b(?:struct|enum|union|trait|type|fn|const|static|mod)\s+(" + IDENT + r")"
    r"|\bmacro_rules!\s*(" + IDENT + r")"
)
VIS_RE = re.compile(r"^\s*pub(\s*\([^)]*\))?\s+use\b")


def strip(text: str) -> str:
    """Replace comments, string and char literals by spaces (newlines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r(#*)"', text[i:i + 300]) and (
            i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")
        ):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            end = n if end < 0 else end + 1 + len(hashes)
            out.append(re.sub(r"[^\n]", " ", text[i:end]))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", text[i:j + 1]))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{..}') or a lifetime ('a): only the first is
            # closed by a quote within a few characters.
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:i + 12])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(text: str, open_at: int) -> int:
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(text) - 1


def drop_test_modules(text: str) -> tuple[str, set[str]]:
    """Blank `#[cfg(test)]` items; return the text and the names of test file modules."""
    test_files = set()
    pattern = re.compile(r"#\[cfg\(test\)\]")
    while True:
        m = pattern.search(text)
        if not m:
            return text, test_files
        # The item after the attribute (possibly after more attributes).
        k = m.end()
        rest = text[k:]
        semi = rest.find(";")
        brace = rest.find("{")
        file_mod = re.match(r"\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", rest)
        if file_mod:
            test_files.add(file_mod.group(1))
            end = k + file_mod.end()
        elif brace >= 0 and (semi < 0 or brace < semi):
            end = matching_brace(text, k + brace) + 1
        else:
            end = k + (semi + 1 if semi >= 0 else len(rest))
        text = text[:m.start()] + re.sub(r"[^\n]", " ", text[m.start():end]) + text[end:]


def split_use_tree(tree: str) -> list[tuple[list[str], str]]:
    """Expand `a::{b, c::d as e, f::*}` into (segments, bound name) pairs."""
    tree = re.sub(r"\s+", "", tree)
    results = []

    def walk(prefix: list[str], t: str):
        if not t:
            return
        if t.startswith("::"):
            t = t[2:]
        brace = t.find("{")
        if brace >= 0 and t.endswith("}"):
            head = [s for s in t[:brace].split("::") if s]
            inner = t[brace + 1:-1]
            depth, start = 0, 0
            parts = []
            for j, ch in enumerate(inner):
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                elif ch == "," and depth == 0:
                    parts.append(inner[start:j])
                    start = j + 1
            parts.append(inner[start:])
            for part in parts:
                walk(prefix + head, part)
            return
        alias = None
        # `as` has no spaces left around it; split on the last `as` that follows a segment.
        m = re.match(r"^((?:" + IDENT + r"::)*(?:" + IDENT + r"|\*))as(" + IDENT + r")$", t)
        if m and not re.match(r"^(?:" + IDENT + r"::)*" + IDENT + r"$", t):
            path, alias = m.group(1), m.group(2)
        else:
            path = t
        segs = prefix + [s for s in path.split("::") if s]
        if segs and segs[-1] == "self":
            segs = segs[:-1]
        if not segs:
            return
        name = alias if alias else segs[-1]
        results.append((segs, name))

    walk([], tree)
    return results


class Module:
    def __init__(self, path: tuple, file: str):
        self.path = path
        self.file = file
        self.children: dict[str, tuple] = {}
        self.items: set[str] = set()
        self.reexports: dict[str, list[str]] = {}  # name -> segments (unresolved)
        self.globs: list[list[str]] = []  # pub use x::* segments
        self.aliases: dict[str, list[str]] = {}  # every use: name -> segments
        self.uses: list[list[str]] = []  # non-pub use paths (dependencies)
        self.code_paths: list[list[str]] = []


class Crate:
    def __init__(self, src: str, root_file: str):
        self.src = src
        self.modules: dict[tuple, Module] = {}
        self.load((), os.path.join(src, root_file))

    def module_file(self, path: tuple, name: str, parent_file: str) -> str | None:
        base = os.path.dirname(parent_file)
        stem = os.path.basename(parent_file)
        if stem not in ("lib.rs", "main.rs", "mod.rs"):
            base = os.path.join(base, stem[:-3])
        for candidate in (os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")):
            if os.path.exists(candidate):
                return candidate
        return None

    def load(self, path: tuple, file: str):
        with open(file, encoding="utf-8") as f:
            text = strip(f.read())
        text, test_files = drop_test_modules(text)
        self.scan(path, file, text, test_files)

    def scan(self, path: tuple, file: str, text: str, test_files: set[str]):
        module = Module(path, file)
        self.modules[path] = module
        depth = 0
        # Inline modules: scanned recursively, then blanked from this module's text.
        spans = []
        pos = 0
        while True:
            m = re.compile(r"\bmod\s+(" + IDENT + r")\s*([;{])").search(text, pos)
            if not m:
                break
            name = m.group(1)
            if m.group(2) == "{":
                close = matching_brace(text, m.end() - 1)
                module.children[name] = path + (name,)
                module.items.add(name)
                self.scan(path + (name,), file, text[m.end():close], set())
                spans.append((m.end(), close))
                pos = close + 1
            else:
                pos = m.end()
                if name in test_files:
                    continue
                child_file = self.module_file(path, name, file)
                if child_file is None:
                    continue
                module.children[name] = path + (name,)
                module.items.add(name)
                self.load(path + (name,), child_file)
        for start, end in reversed(spans):
            text = text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]
        # Items at depth 0 of this module.
        top = []
        for ch in text:
            if ch == "{":
                depth += 1
                top.append(" ")
            elif ch == "}":
                depth -= 1
                top.append(" ")
            else:
                top.append(ch if depth == 0 else ("\n" if ch == "\n" else " "))
        top_text = "".join(top)
        for m in ITEM_RE.finditer(top_text):
            module.items.add(m.group(1) or m.group(2))
        # Use declarations (at any depth: a `use` inside a function is still a dependency).
        for m in re.finditer(r"(?:\bpub\s*(?:\([^)]*\))?\s+)?\buse\s+([^;]+);", text):
            is_pub = m.group(0).lstrip().startswith("pub")
            for segs, name in split_use_tree(m.group(1)):
                if segs[-1] == "*":
                    if is_pub:
                        module.globs.append(segs[:-1])
                    else:
                        module.uses.append(segs[:-1] + ["*"])
                    continue
                module.aliases[name] = segs
                if is_pub:
                    module.reexports[name] = segs
                else:
                    module.uses.append(segs)
        text_no_use = re.sub(r"(?:\bpub\s*(?:\([^)]*\))?\s+)?\buse\s+[^;]+;", " ", text)
        # A re-exported name this file also uses itself is a dependency as well.
        # (Words after `::` or `.` are an enum's variants, fields and methods, not the name.)
        words = set(re.findall(r"(?<![A-Za-z0-9_.:])" + IDENT, text_no_use))
        for name, segs in module.reexports.items():
            if name in words:
                module.uses.append(segs)
        for m in re.finditer(r"(?<![A-Za-z0-9_$:])(" + IDENT + r"(?:\s*::\s*" + IDENT + r")+)", text_no_use):
            segs = [s.strip() for s in m.group(1).split("::")]
            module.code_paths.append(segs)

    def absolute(self, module: Module, segs: list[str], in_use: bool) -> list[str] | None:
        """Segments relative to the crate root, or None for another crate's path."""
        path = list(module.path)
        first = segs[0]
        if first == "crate":
            return segs[1:]
        if first in ("super", "self"):
            rest = list(segs)
            while rest and rest[0] in ("super", "self"):
                if rest[0] == "super":
                    if not path:
                        return None
                    path = path[:-1]
                rest = rest[1:]
            return path + rest
        if first in module.children:
            return path + segs
        if first in module.aliases and module.aliases[first] != segs:
            target = self.absolute(module, module.aliases[first], True)
            if target is None:
                return None
            return target + segs[1:]
        return None

    def resolve(self, segs: list[str], depth: int = 0) -> str | None:
        """The file defining the item that root-relative `segs` names (None: a module)."""
        if depth > 16 or not segs:
            return None
        current = self.modules[()]
        for k, seg in enumerate(segs):
            if seg in current.children and seg not in current.reexports:
                current = self.modules[current.children[seg]]
                continue
            if seg in current.items:
                return current.file
            if seg in current.reexports:
                target = self.absolute(current, current.reexports[seg], True)
                if target is None:
                    return None
                return self.resolve(target + segs[k + 1:], depth + 1)
            for glob in current.globs:
                target = self.absolute(current, glob, True)
                if target is None:
                    continue
                found = self.resolve(target + segs[k:], depth + 1)
                if found is not None:
                    return found
            return current.file
        return None

    def edges(self) -> dict[str, set[str]]:
        graph: dict[str, set[str]] = {}
        for module in self.modules.values():
            deps = graph.setdefault(module.file, set())
            for segs, in_use in [(s, True) for s in module.uses] + [(s, False) for s in module.code_paths]:
                if segs[-1] == "*":
                    target = self.absolute(module, segs[:-1], in_use)
                    if target is None:
                        continue
                    # A glob import depends on the module's own file (its items).
                    node = self.modules.get(tuple(target))
                    if node is not None:
                        deps.add(node.file)
                    continue
                if not in_use and segs[0] not in ("crate", "super", "self") and segs[0] not in module.children:
                    alias = module.aliases.get(segs[0])
                    if alias is None:
                        continue
                target = self.absolute(module, segs, in_use)
                if target is None:
                    continue
                found = self.resolve(target)
                if found is not None:
                    deps.add(found)
        for file, deps in graph.items():
            deps.discard(file)
        return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def shortest_loop(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    members = set(component)
    best = None
    for start in component:
        parents = {start: None}
        queue = deque([start])
        while queue:
            v = queue.popleft()
            for w in sorted(graph.get(v, ())):
                if w not in members:
                    continue
                if w == start:
                    loop = [v]
                    while parents[loop[-1]] is not None:
                        loop.append(parents[loop[-1]])
                    loop = list(reversed(loop)) + [start]
                    if best is None or len(loop) < len(best):
                        best = loop
                    queue.clear()
                    break
                if w not in parents:
                    parents[w] = v
                    queue.append(w)
    return best or component


def check(root: str, crates: list[str], quiet: bool = False) -> int:
    failures = 0
    for crate_dir in crates:
        src = os.path.join(root, crate_dir, "src")
        roots = [r for r in ("lib.rs", "main.rs") if os.path.exists(os.path.join(src, r))]
        if not roots:
            print(f"import_cycles: {crate_dir}: no src/lib.rs or src/main.rs", file=sys.stderr)
            return 2
        # A crate with both is checked from its library (the binary uses it as a dependency).
        crate = Crate(src, roots[0])
        graph = crate.edges()
        cycles = strongly_connected(graph)
        edges = sum(len(d) for d in graph.values())
        if not quiet:
            print(f"{crate_dir}: {len(graph)} files, {edges} file dependencies, {len(cycles)} cycles")
        for component in cycles:
            failures += 1
            loop = shortest_loop(graph, component)
            rel = lambda p: os.path.relpath(p, src)  # noqa: E731
            print(f"  cycle among {len(component)} files: {', '.join(rel(f) for f in component)}")
            print(f"    for example: {' -> '.join(rel(f) for f in loop)}")
    return 1 if failures else 0


def self_test() -> int:
    """A crate with a knot must fail the check; the same crate untied must pass."""
    knotted = {
        "lib.rs": "mod a;\nmod b;\nmod c;\npub use a::A;\npub use b::B;\n",
        "a.rs": "use crate::B;\npub struct A(pub B);\n",
        "b.rs": "pub struct B;\nimpl B { pub fn a(&self) -> super::a::A { todo_free() } }\n"
                "fn todo_free() -> crate::a::A { crate::a::A(B) }\n",
        "c.rs": "// crate::a::A in a comment is no dependency\nconst S: &str = \"crate::b::B\";\n",
    }
    untied = dict(knotted)
    untied["b.rs"] = "pub struct B;\n#[cfg(test)]\nmod tests { use crate::a::A; }\n"
    facade = {
        "lib.rs": "mod inner;\nmod user;\npub use inner::Thing;\n",
        "inner/mod.rs": "mod leaf;\npub use leaf::Thing;\n",
        "inner/leaf.rs": "pub struct Thing;\n",
        "user.rs": "use crate::Thing;\npub fn f(_: Thing) {}\n",
    }
    verdicts = []
    for name, files, expect in (("knotted", knotted, 1), ("untied", untied, 0), ("facade", facade, 0)):
        with tempfile.TemporaryDirectory() as tmp:
            for rel, body in files.items():
                path = os.path.join(tmp, "c", "src", rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(body)
            got = check(tmp, ["c"], quiet=True)
        verdicts.append(got == expect)
        print(f"self-test {name}: exit {got}, expected {expect}: {'ok' if got == expect else 'WRONG'}")
    return 0 if all(verdicts) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("crates", nargs="*", help="crate directories (default: the checked crates)")
    parser.add_argument("--root", default=".", help="repository root the crate paths are under")
    parser.add_argument("--self-test", action="store_true", help="check the checker on small crates")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    return check(args.root, args.crates or CHECKED_CRATES)


if __name__ == "__main__":
    sys.exit(main())
