#!/usr/bin/env python3
"""Counts the crate's event-order tests and how many of them run on the embedded connection
(issue 11), per file of tests/ and in all.

An event-order test is a test function (`#[test]`, `#[tokio::test..]`) of tests/*.rs whose body
asserts on recorded callbacks, closure reasons or shutdown reports: it names `Event::`,
`ClosureReason::` or `ShutdownReport`, a report's counts (`report.graceful`/`forced`/`other`), or
one of the recorders' event readers (`.events()`, `events_of`, `assert_lifecycle`,
`closure_reason`, `wait_closure`, `.closure(`, `ended_with`, `wait_for_release`).

It runs embedded if its body starts an embedded server (`.embedded()` on the builder, a
helper named `start_embedded`, or the old `start_framed_embedded`), or calls a helper of its file that does
(directly or through another helper).

Usage: python3 benches/event_order_tests.py [-v]   (from the crate's root)
"""
import glob
import re
import sys

EVENT_ORDER = re.compile(
    r"Event::|ClosureReason::|ShutdownReport|report\.(graceful|forced|other)|\.events\(\)|"
    r"events_of|assert_lifecycle|closure_reason|wait_closure|\.closure\(|ended_with|"
    r"wait_for_release"
)
EMBEDDED = re.compile(r"start_(framed_)?embedded|\.embedded\(\)")
FN = re.compile(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?(?:async\s+)?fn\s+(\w+)")


def functions(lines):
    """(name, is_test, body) of every fn, nested ones included in their parent's body."""
    found = []
    for index, line in enumerate(lines):
        match = FN.match(line)
        if not match:
            continue
        attributes = []
        back = index - 1
        while back >= 0 and (lines[back].strip().startswith(("#[", "///", "//")) or lines[back].strip() == ""):
            attributes.append(lines[back].strip())
            if lines[back].strip() == "":
                break
            back -= 1
        is_test = any(a.startswith(("#[test]", "#[tokio::test")) for a in attributes)
        depth, body, started = 0, [], False
        for rest in lines[index:]:
            body.append(rest)
            depth += rest.count("{") - rest.count("}")
            started = started or "{" in rest
            if started and depth <= 0:
                break
            if not started and rest.rstrip().endswith(";"):
                break
        found.append((match.group(1), is_test, "\n".join(body)))
    return found


def main():
    verbose = "-v" in sys.argv
    total = embedded = 0
    for path in sorted(glob.glob("tests/*.rs")):
        fns = functions(open(path).read().splitlines())
        helpers = {name: body for name, is_test, body in fns if not is_test}
        uses = {name for name, body in helpers.items() if EMBEDDED.search(body)}
        changed = True
        while changed:
            changed = False
            for name, body in helpers.items():
                if name not in uses and any(re.search(rf"\b{u}\(", body) for u in uses):
                    uses.add(name)
                    changed = True
        file_total = file_embedded = 0
        for name, is_test, body in fns:
            if not is_test or not EVENT_ORDER.search(body):
                continue
            file_total += 1
            runs_embedded = bool(EMBEDDED.search(body)) or any(
                re.search(rf"\b{u}\(", body) for u in uses
            )
            file_embedded += runs_embedded
            if verbose:
                print(f"  {'E' if runs_embedded else '-'} {path}::{name}")
        if file_total:
            print(f"{path}: {file_embedded} of {file_total}")
        total += file_total
        embedded += file_embedded
    print(f"event-order tests: {embedded} of {total} run embedded")


main()
