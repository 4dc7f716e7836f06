#!/usr/bin/env python3
"""Counts the test suite by kind, from the source: unit (#[test] in src/), property (proptest!
blocks), integration (tests/ without a network-namespace gate) and e2e (tests that need root and
network namespaces: they start with a ready check), and how many e2e tests assert a denial in
a promised form. Run from the repository root: python3 tests/count_tests.py"""
import re, glob
def fns(path):
    s = open(path).read()
    out = []
    for m in re.finditer(r'#\[(?:tokio::)?test[^\]]*\]\s*(?:async\s+)?fn\s+(\w+)', s):
        start = m.end()
        nxt = re.search(r'\n#\[(?:tokio::)?test|\nfn |\nasync fn |\nconst |\nstruct |\nimpl ', s[start:])
        out.append((m.group(1), s[start:start + (nxt.start() if nxt else len(s))]))
    return out
def proptests(path):
    s = open(path).read(); n = 0
    for m in re.finditer(r'proptest!\s*\{', s):
        i = j = m.end(); d = 1
        while d:
            d += {'{': 1, '}': -1}.get(s[j], 0); j += 1
        n += len(re.findall(r'\n\s*fn \w+\(', s[i:j]))
    return n
NETNS = re.compile(r'ready_for|ready_for_dns|support::ready\(|hostile::ready\(|\bready\("')
DENIAL = re.compile(r'is_err\(\)|"DENIED"|"403"|403\b|REFUSED|Refused|"reset"|"nothing"|, None\)|!pings|rcode 5|starts_with\("failed"\)|"400"|HTTP/1\.1 40[03]|PERMISSION_DENIED|while connect\(|case\.status|conformance::run|probe_denied')
unit = sum(len(fns(f)) for f in glob.glob('**/src/**/*.rs', recursive=True) if '/target/' not in f and not f.startswith('target'))
prop = sum(proptests(f) for f in glob.glob('**/tests/**/*.rs', recursive=True) if not f.startswith('target'))
integ = e2e = denial = 0
for f in sorted(glob.glob('**/tests/**/*.rs', recursive=True)):
    if f.startswith('target'): continue
    for name, body in fns(f):
        if NETNS.search(body):
            e2e += 1; denial += bool(DENIAL.search(body))
        else:
            integ += 1
print(f"unit {unit}, property {prop}, other integration {integ - prop}, e2e {e2e} (of which assert a denial: {denial}); total {unit + integ + e2e}")
