"""Prints the import cycles between Rust files of src/ (crate:: and super:: paths, tests left
out); exits 1 if there is one. Usage: python3 .ci/import_cycles.py [src]"""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else "src"
files = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if f.endswith(".rs"):
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)[:-3]
            mod = rel.replace(os.sep, "::")
            if mod.endswith("::mod"): mod = mod[:-5]
            if mod == "lib": mod = ""
            files[mod] = p
def resolve(path, here):
    # longest module prefix that is a file
    parts = path.split("::")
    for n in range(len(parts), 0, -1):
        cand = "::".join(parts[:n])
        if cand in files: return cand
    return None
edges = {m: set() for m in files}
PATH = re.compile(r"\b(crate|super)::((?:[a-z_0-9]+::)*)(\{[^}]*\}|[A-Za-z_0-9]+)")
for mod, p in files.items():
    text = re.sub(r"//[^\n]*", "", open(p).read())
    # A file's `mod tests` block counts too; there `super::` is the file's own module.
    code, _, tests = text.partition("mod tests {")
    parent = mod.rsplit("::", 1)[0] if "::" in mod else ""
    for part, super_base in [(code, parent), (tests, mod)]:
        for m in PATH.finditer(part):
            kind, prefix, last = m.group(1), m.group(2), m.group(3)
            base = "" if kind == "crate" else super_base
            if last.startswith("{"):
                names = [prefix + x.strip() for x in last[1:-1].split(",")]
            else:
                names = [prefix + last]
            for n in names:
                n = re.sub(r"::self$", "", n.split(" as ")[0].strip())
                if not n or n == "self" or n.endswith("::"):
                    continue
                full = (base + "::" + n).strip(":") if base else n
                t = resolve(full, mod)
                if t is not None and t != mod and t != "":
                    edges[mod].add(t)
# cycles via Tarjan
index, low, stack, on, sccs, i = {}, {}, [], set(), [], [0]
def sc(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in edges:
    if v not in index: sc(v)
for c in sccs: print("cycle:", " ".join(c))
print(len(sccs), "cycles")
sys.exit(1 if sccs else 0)
