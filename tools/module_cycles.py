#!/usr/bin/env python3
"""Import circles between the top-level modules of each crate: which module uses which through
`crate::` paths (and `use crate::{..}` groups) in code, test modules and comments left out. Prints each circle (a
strongly connected set of modules), and exits 1 if there is one.
Run from the repository's root: python3 tools/module_cycles.py [crate-dir ...]"""
import os, re, sys

def top_modules(src):
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)
            first = rel.split(os.sep)[0]
            name = first[:-3] if first.endswith(".rs") else first
            if name in ("lib", "main"):
                name = "(root)"
            mods.setdefault(name, []).append(path)
    return mods

def code_only(text):
    # Comments (doc links name modules without using them) and string literals left out.
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    return re.sub(r"//[^\n]*", "", text)

def without_tests(text):
    # Everything from a `#[cfg(test)]` module to the end of the file (they close each file).
    m = re.search(r"#\[cfg\(test\)\]\s*(pub(\(crate\))?\s+)?mod \w+\s*\{", text)
    return text[: m.start()] if m else text

def uses(text, names):
    found = set()
    for m in re.finditer(r"crate::(\w+)", text):
        found.add(m.group(1))
    for m in re.finditer(r"crate::\{([^}]*)\}", text, re.S):
        for part in re.split(r"[,\s]+", m.group(1)):
            found.add(part.split("::")[0])
    return {n for n in found if n in names}

def sccs(graph):
    index, low, stack, on, out, i = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            out.append(comp)
    for v in graph:
        if v not in index:
            visit(v)
    return out

def main(crates):
    circles = 0
    for crate in crates:
        src = os.path.join(crate, "src")
        mods = top_modules(src)
        graph = {}
        for name, files in mods.items():
            deps = set()
            for f in files:
                deps |= uses(code_only(without_tests(open(f).read())), mods)
            deps.discard(name)
            graph[name] = sorted(deps)
        for comp in sccs(graph):
            if len(comp) > 1:
                circles += 1
                edges = [f"{a} -> {b}" for a in sorted(comp) for b in graph[a] if b in comp]
                print(f"{crate}: circle of {len(comp)}: {', '.join(sorted(comp))}\n    " + "\n    ".join(edges))
    if not circles:
        print(f"no import circle inside {', '.join(crates)}")
    return 1 if circles else 0

if __name__ == "__main__":
    sys.setrecursionlimit(10000)
    crates = sys.argv[1:] or [d for d in (".", "policy", "proxy", "control", "l7", "fqdn", "sandbox", "bench") if os.path.isdir(os.path.join(d, "src"))]
    sys.exit(main(crates))
