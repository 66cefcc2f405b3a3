#!/usr/bin/env python3
"""The code footprint of one link, from a callgrind profile made with --dump-instr=yes.

Counts the instruction addresses run at least once a link (an address's Ir over the run, divided
by the number of links, at least one) and the 64-byte cache lines they sit on, in all and by
function. A link whose hot lines outnumber the L1 instruction cache's streams its code from L2.

usage: footprint.py CALLGRIND_OUT LINKS [FUNCTIONS_SHOWN]
"""
import collections
import re
import sys


def read(path):
    """Ir by instruction address, and the function each address is in."""
    names, ir, owner = {}, collections.Counter(), {}
    fn, last, after_calls = None, 0, False
    for line in open(path):
        line = line.rstrip("\n")
        if not line:
            continue
        key, eq, val = line.partition("=")
        if eq and key in ("fn", "cfn", "calls", "ob", "cob", "fl", "fi", "fe", "cfi", "cfl"):
            m = re.match(r"\((\d+)\)(?: (.*))?", val)
            if key in ("fn", "cfn") and m and m.group(2):
                names[m.group(1)] = m.group(2)
            if key == "fn":
                fn = names.get(m.group(1), val) if m else val
            after_calls = key == "calls"
            continue
        if line[0] not in "0123456789+-*":
            after_calls = False
            continue
        field = line.split()
        a = field[0]
        if a == "*":
            addr = last
        elif a[0] in "+-":
            step = int(a[1:], 16) if a[1:].startswith("0x") else int(a[1:])
            addr = last + step if a[0] == "+" else last - step
        else:
            addr = int(a, 0)
        last = addr
        if after_calls:  # the call's own line: its cost is the callee's, inclusive
            after_calls = False
            continue
        if len(field) >= 3:
            ir[addr] += int(field[2])
            owner[addr] = fn
    return ir, owner


def main():
    path, links = sys.argv[1], int(sys.argv[2])
    shown = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    ir, owner = read(path)
    hot = [a for a, n in ir.items() if n >= links]
    lines = {a >> 6 for a in hot}
    print(f"a link: {len(hot)} distinct instructions on {len(lines)} lines "
          f"({len(lines) * 64 / 1024:.1f} KiB)")
    by_fn, count = collections.defaultdict(set), collections.Counter()
    for a in hot:
        by_fn[owner[a]].add(a >> 6)
        count[owner[a]] += 1
    for f, ls in sorted(by_fn.items(), key=lambda kv: -len(kv[1]))[:shown]:
        print(f"{len(ls):5d} lines {count[f]:6d} instructions  {f[:140]}")


if __name__ == "__main__":
    main()
