#!/usr/bin/env python3
"""The debugger's import graph (src/target): rooms (sub-folders and
top-level files) and files, from `use` paths. Prints the rooms' imports
and fails if rooms or files import each other in a loop. A `mod`
declaration is not an import; a child importing its parent's items is."""
import collections
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else "src/target"


def module_files():
    files = {}
    for d, _, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".rs") and not name.endswith("_tests.rs"):
                path = os.path.join(d, name)
                rel = os.path.relpath(path, ROOT)[:-3]
                if rel == "mod":
                    rel = ""
                elif rel.endswith("/mod"):
                    rel = rel[: -len("/mod")]
                files[rel] = path
    return files


def expand(use):
    """`a::{b, c::{d, e}}` -> a::b, a::c::d, a::c::e."""
    m = re.match(r"^(.*?)::\{(.*)\}$", use)
    if not m:
        return [use]
    prefix, body = m.groups()
    items, depth, item = [], 0, ""
    for ch in body:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            items.append(item)
            item = ""
        else:
            item += ch
    items.append(item)
    out = []
    for it in filter(None, items):
        out += [prefix if e == "self" else f"{prefix}::{e}" for e in expand(it)]
    return out


def imports(files):
    edges = collections.defaultdict(set)
    for mod, path in files.items():
        src = open(path).read()
        src = src.split("#[cfg(test)]\nmod tests")[0]
        src = re.sub(r"//[^\n]*", "", src)
        here = mod.split("/") if mod else []
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", src):
            paths += expand(re.sub(r"\s+", "", m.group(1)))
        paths += re.findall(r"(?:crate::target|super(?:::super)*)(?:::\w+)+", src)
        for p in paths:
            segs = p.split("::")
            if segs[0] == "crate":
                if segs[1:2] != ["target"]:
                    continue
                parts = segs[2:]
            elif segs[0] == "super":
                base, i = here[:-1], 1
                while i < len(segs) and segs[i] == "super":
                    base, i = base[:-1], i + 1
                parts = base + segs[i:]
            elif segs[0] == "self":
                parts = here + segs[1:]
            elif "/".join(here + [segs[0]]) in files:
                parts = here + segs
            else:
                continue
            for n in range(len(parts), -1, -1):
                target = "/".join(parts[:n])
                if target in files:
                    if target != mod:
                        edges[mod].add(target)
                    break
    return edges


def loops(nodes, graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def main():
    files = module_files()
    edges = imports(files)
    room = lambda m: m.split("/")[0] if m else "mod.rs"
    rooms = collections.defaultdict(set)
    for a, bs in edges.items():
        rooms[room(a)].update(room(b) for b in bs if room(b) != room(a))
    names = sorted({room(m) for m in files})
    for r in names:
        print(f"{r} -> {', '.join(sorted(rooms[r])) or '-'}")
    found = loops(names, rooms) + loops(sorted(files), edges)
    for comp in found:
        print("import loop:", " <-> ".join(c or "mod.rs" for c in comp), file=sys.stderr)
    sys.exit(1 if found else 0)


main()
