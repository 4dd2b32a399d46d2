#!/usr/bin/env python3
"""Print the import circles between the modules of src/ (exit 1 when there is one).

Each .rs file under src/ is a module (`a/mod.rs` is `a`, `a/b.rs` is `a::b`). An edge
A -> B is a `use crate::...` / `use super::...` / `use self::...` in A, or a path such as
`crate::b::f(..)` written inline, that names B (or an item B defines); an item that a module only re-exports (`pub use b::Item`) is followed to
the module that defines it, so `use crate::sae::Sae` counts as an edge to `sae::model`.
A module's own `#[cfg(test)] mod tests` is skipped (tests may look anywhere).
Cycles are the strongly connected components with more than one module.

    python3 scripts/module_cycles.py [SRC_DIR]
"""
import os
import re
import sys


def module_of(root, path):
    rel = os.path.relpath(path, root)[: -len(".rs")].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def strip_tests(text):
    """Drop `#[cfg(test)] mod name { ... }` blocks (brace-matched)."""
    out, i = [], 0
    pat = re.compile(r"#\[cfg\(test\)\]\s*(pub\s+)?mod\s+\w+\s*\{")
    while True:
        m = pat.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j


def expand_tree(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e] (as lists of segments)."""
    tree = tree.strip()
    m = re.match(r"^(.*?)\{(.*)\}$", tree, flags=re.S)
    if not m:
        tree = re.sub(r"\s+as\s+\w+$", "", tree)
        return [[s for s in tree.split("::") if s]]
    prefix = [s for s in m.group(1).split("::") if s]
    inner, parts, depth, cur = m.group(2), [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    parts.append(cur)
    result = []
    for p in parts:
        if p.strip():
            result.extend(prefix + sub for sub in expand_tree(p))
    return result


USE = re.compile(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);")


INLINE = re.compile(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)")


def uses(text):
    """(public, segments) for every `use` path, and every path written inline in code."""
    for m in USE.finditer(text):
        for path in expand_tree(m.group(2)):
            yield bool(m.group(1)), path
    for m in INLINE.finditer(USE.sub("", text)):
        yield False, m.group(1).split("::")


def absolute(module, path, is_dir_module):
    """The crate-relative segments of a `use` path written in `module`, or None (extern)."""
    if not path:
        return None
    base = list(module)
    if path[0] == "crate":
        return path[1:]
    if path[0] == "self":
        return base + path[1:]
    if path[0] == "super":
        parent = base
        while path and path[0] == "super":
            parent = parent[:-1]
            path = path[1:]
        return parent + path
    return None


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
    root = os.path.normpath(root)
    texts = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".rs"):
                p = os.path.join(d, f)
                if os.path.basename(p) == "main.rs" and d == root:
                    continue
                with open(p, encoding="utf-8") as fh:
                    texts[module_of(root, p)] = strip_tests(strip_comments(fh.read()))
    modules = set(texts)

    def longest_module(segs):
        for n in range(len(segs), -1, -1):
            if tuple(segs[:n]) in modules:
                return tuple(segs[:n]), segs[n:]
        return None, segs

    # Re-exports: module -> item -> absolute path it re-exports.
    reexports = {m: {} for m in modules}
    for m, text in texts.items():
        for public, path in uses(text):
            if not public:
                continue
            a = absolute(m, path, True)
            if a and a[-1] not in ("*", "self"):
                reexports[m][a[-1]] = a

    def resolve(segs, depth=0):
        mod, rest = longest_module(segs)
        if mod is None:
            return None
        if rest and rest[0] in reexports.get(mod, {}) and depth < 16:
            target = reexports[mod][rest[0]]
            if list(target) != list(segs):
                inner = resolve(list(target), depth + 1)
                if inner is not None:
                    return inner
        return mod

    edges = {m: set() for m in modules}
    for m, text in texts.items():
        for public, path in uses(text):
            a = absolute(m, path, True)
            if a is None:
                continue
            if public and a and a[-1] == "*":
                a = a[:-1]
            target = resolve(list(a))
            if target is not None and target != m:
                # A parent's `pub use child::X` is how a module shows its children; that
                # edge does not make a circle with the child's `use super::...`.
                if public and target[: len(m)] == m:
                    continue
                edges[m].add(target)

    # Tarjan's strongly connected components.
    index, low, on, stack, comps, counter = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(modules):
        if v not in index:
            visit(v)

    name = lambda m: "::".join(m) or "crate"
    for comp in sorted(comps):
        members = set(comp)
        print("cycle: " + " <-> ".join(name(m) for m in comp))
        for m in comp:
            for t in sorted(edges[m] & members):
                print(f"    {name(m)} -> {name(t)}")
    print(f"{len(comps)} import cycle(s) among {len(modules)} modules")
    return 1 if comps else 0


if __name__ == "__main__":
    sys.exit(main())
