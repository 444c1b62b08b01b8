"""Reports of a scan: a plain-text table, Markdown, JSON (DESIGN.md's shape), JUnit XML and SARIF.

With a baseline (``harness.baseline``) the table and Markdown end with a short "baseline
comparison" section, each JSON target object gets a ``baseline`` key, and SARIF results carry
``baselineState`` (accepted findings ``unchanged``, fixed ones ``absent``).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from harness import __version__
from harness.baseline import Comparison, failing_steps
from harness.checks import CATALOGUE, VERDICTS, CheckResult, CheckSpec, findings_table
from harness.targets.endpoint import is_description

FORMATS = ("table", "md", "json", "junit", "sarif")


def targets_of(results: Sequence[CheckResult]) -> list[str]:
    """The targets in the order they were scanned."""
    seen: list[str] = []
    for r in results:
        if r.target not in seen:
            seen.append(r.target)
    return seen


def counts(results: Sequence[CheckResult]) -> dict[str, Counter[str]]:
    """``{target: Counter(verdict → n)}``."""
    out: dict[str, Counter[str]] = {t: Counter() for t in targets_of(results)}
    for r in results:
        out[r.target][r.verdict] += 1
    return out


def summary_line(results: Sequence[CheckResult]) -> str:
    """``faithful: 18 holds, 12 violated · hardened: 30 holds`` (verdicts with a count only)."""
    parts = []
    for target, c in counts(results).items():
        parts.append(f"{target}: " + ", ".join(f"{c[v]} {v}" for v in VERDICTS if c[v]))
    return " · ".join(parts)


def first_failure(r: CheckResult) -> str:
    """The first judged step that was not as expected, or the error's reason."""
    for s in r.steps:
        if s.judged and not s.ok:
            return f"{s.action}: expected {s.expected}, observed {s.observed}"
    if r.evidence and "reason" in r.evidence[0]:
        return str(r.evidence[0]["reason"])
    return ""


# -- plain text -------------------------------------------------------------------


def to_table(results: Sequence[CheckResult], comparison: Comparison | None = None) -> str:
    """Check × target verdicts, then every violation with the step that shows it (and, with a
    baseline, what is new, fixed or changed since it)."""
    frame = findings_table(results, details=False)
    sev = {r.id: r.spec.severity for r in results}
    frame.insert(1, "severity", frame["id"].map(sev))
    lines = [frame.to_string(index=False), "", summary_line(results)]
    bad = [r for r in results if r.verdict in ("violated", "error", "inconclusive")]
    if bad:
        lines.append("")
    for r in bad:
        lines.append(f"{r.verdict.upper():8} {r.target:10} {r.id}  [{r.spec.severity}, {r.spec.source}]")
        lines.append(f"         {first_failure(r)}")
    if comparison is not None:
        lines += ["", *comparison.lines()]
    return "\n".join(lines) + "\n"


# -- Markdown ---------------------------------------------------------------------


def _md_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (no extra dependency)."""
    cols = [str(c) for c in frame.columns]
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        out.append("| " + " | ".join(_md_cell(v) for v in row) + " |")
    return "\n".join(out)


def findings_markdown(results: Sequence[CheckResult]) -> str:
    """The check × target table in Markdown, violated cells in bold."""
    frame = findings_table(results, details=True)
    frame = frame.drop(columns=["source"])
    frame["id"] = frame["id"].map(lambda i: f"`{i}`")
    for target in targets_of(results):
        frame[target] = frame[target].map(lambda v: f"**{v}**" if v in ("violated", "error") else v)
    return markdown_table(frame)


def _groups(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive rows with the same columns, so each evidence table is rectangular."""
    out: list[list[dict[str, Any]]] = []
    for row in rows:
        if out and set(out[-1][0]) == set(row):
            out[-1].append(row)
        else:
            out.append([row])
    return out


def baseline_markdown(comparison: Comparison) -> str:
    """The "Baseline comparison" section: the summary, notes, and a table of what changed."""
    where = f" with `{comparison.source}`" if comparison.source else ""
    verdict = ("**new findings** (exit 1)" if comparison.failed
               else "nothing new (exit 0): only accepted findings remain")
    parts = ["## Baseline comparison", "", f"Compared{where}: {verdict}. {comparison.summary()}."]
    parts += [f"\n> {text}" for _, text in comparison.notes]
    shown = [c for c in comparison.changes if c.kind != "accepted"]
    if shown:
        frame = pd.DataFrame([{"change": ("**new**: " if c.failing else "") + c.kind.replace("_", " "),
                               "target": c.target, "check": f"`{c.check}`",
                               "step": "; ".join(c.steps) if c.kind != "new_violation" else "",
                               "detail": c.detail} for c in shown])
        parts += ["", markdown_table(frame)]
    accepted: dict[str, list[str]] = {}
    for c in comparison.of("accepted"):
        accepted.setdefault(c.target, []).append(f"`{c.check}`")
    for target, checks in accepted.items():
        parts += ["", f"Accepted on `{target}` (in the baseline, still there): {', '.join(checks)}."]
    return "\n".join(parts)


def to_markdown(results: Sequence[CheckResult], *, details: bool = True, command: str | None = None,
                comparison: Comparison | None = None) -> str:
    """The findings table, the baseline comparison (when given), then (with ``details``) one
    section per violated check and target.

    ``command`` (the command line that produced the report) heads the document.
    """
    parts = []
    if command:
        parts += ["# Findings: `harness scan`", "",
                  f"Generated by `{command}`. One row per check, one column per target; every "
                  "section below shows the steps of a violated check (expected vs observed).", ""]
    parts += [findings_markdown(results), "", summary_line(results)]
    if comparison is not None:
        parts += ["", baseline_markdown(comparison)]
    if details:
        for r in results:
            if r.verdict not in ("violated", "error"):
                continue
            parts += ["", f"### `{r.id}` on `{r.target}`: {r.verdict}", "",
                      f"*{_md_cell(r.spec.title)}* — {r.spec.severity}, {r.spec.source}.", "",
                      f"Expected: {r.spec.expected}", ""]
            steps = r.frame()
            steps["ok"] = steps["ok"].map(lambda v: "—" if v is None else ("yes" if v else "**no**"))
            parts.append(markdown_table(steps))
            mirror = {"step", "expected", "observed", "ok"}
            extra = [row for row in r.evidence if not set(row) <= mirror]
            if extra:
                parts += ["", "Evidence:"]
                for group in _groups(extra):
                    parts += ["", markdown_table(pd.DataFrame(group))]
    return "\n".join(parts) + "\n"


# -- JSON -------------------------------------------------------------------------


def target_object(results: Sequence[CheckResult], target: str, *, steps: bool = True,
                  comparison: Comparison | None = None) -> dict[str, Any]:
    """DESIGN.md's shape: ``{"target": NAME, "checks": [{id, title, source, severity, expected,
    verdict, evidence, …}]}``, plus ``"baseline"`` (this target's comparison) when given."""
    out: dict[str, Any] = {"target": target,
                           "checks": [r.as_dict(steps=steps) for r in results if r.target == target]}
    if comparison is not None:
        out["baseline"] = comparison.for_target(target).as_dict()
    return out


def to_json(results: Sequence[CheckResult], *, as_list: bool = False, steps: bool = True,
            comparison: Comparison | None = None) -> str:
    """One object for one target; a list of such objects with ``as_list`` (``--all-targets``).

    The baseline comparison goes into each target's object (``"baseline"``), so the shape of the
    list stays the same with and without one."""
    objects = [target_object(results, t, steps=steps, comparison=comparison) for t in targets_of(results)]
    payload: Any = objects if as_list or len(objects) != 1 else objects[0]
    return json.dumps(payload, indent=2, default=str, ensure_ascii=False) + "\n"


# -- JUnit XML --------------------------------------------------------------------


def _steps_text(r: CheckResult) -> str:
    lines = [f"{'ok ' if s.ok else 'NOT'} {s.action}: expected {s.expected}; observed {s.observed}"
             for s in r.steps]
    ev = json.dumps(r.evidence, default=str, ensure_ascii=False)
    return "\n".join([*lines, "", f"evidence: {ev}"])


def to_junit(results: Sequence[CheckResult]) -> str:
    """JUnit XML: one ``testsuite`` per target, one ``testcase`` per check; ``violated`` is a
    ``failure``, ``error`` an ``error``, ``not_applicable`` is ``skipped``."""
    stamp = datetime.now(UTC).replace(microsecond=0).isoformat()
    root = ET.Element("testsuites", name="harness scan")
    totals: Counter[str] = Counter()
    total_time = 0.0
    for target in targets_of(results):
        mine = [r for r in results if r.target == target]
        c = Counter(r.verdict for r in mine)
        seconds = sum(r.seconds for r in mine)
        suite = ET.SubElement(root, "testsuite", name=f"claimcheck.{target}", tests=str(len(mine)),
                              failures=str(c["violated"]), errors=str(c["error"]),
                              skipped=str(c["not_applicable"] + c["inconclusive"]),
                              time=f"{seconds:.3f}", timestamp=stamp)
        for r in mine:
            case = ET.SubElement(suite, "testcase", classname=f"claimcheck.{target}.{r.spec.theme}",
                                 name=f"{r.id}: {r.spec.title}", time=f"{r.seconds:.3f}")
            props = ET.SubElement(case, "properties")
            for key in ("severity", "source", "expected"):
                ET.SubElement(props, "property", name=key, value=str(getattr(r.spec, key)))
            if r.verdict == "violated":
                failure = ET.SubElement(case, "failure", type="violated",
                                        message=f"[{r.spec.severity}] {first_failure(r)}")
                failure.text = _steps_text(r)
            elif r.verdict == "error":
                error = ET.SubElement(case, "error", type="error", message=first_failure(r))
                error.text = _steps_text(r)
            elif r.verdict == "not_applicable":
                ET.SubElement(case, "skipped", message=first_failure(r) or "not applicable")
            elif r.verdict == "inconclusive":
                ET.SubElement(case, "skipped",
                              message="inconclusive: " + (first_failure(r) or "proves nothing"))
            else:
                out = ET.SubElement(case, "system-out")
                out.text = _steps_text(r)
        totals.update(c)
        totals["tests"] += len(mine)
        total_time += seconds
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["violated"]))
    root.set("errors", str(totals["error"]))
    root.set("skipped", str(totals["not_applicable"] + totals["inconclusive"]))
    root.set("time", f"{total_time:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# -- SARIF 2.1.0 --------------------------------------------------------------------

SARIF_VERSION = "2.1.0"
#: The OASIS Standard's schema (errata 01), as vendored in tests/data for validation.
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
#: Severity → SARIF ``level``: what a code-scanning UI shows as error, warning or note.
SARIF_LEVELS: Mapping[str, str] = {"critical": "error", "high": "error", "medium": "warning",
                                   "low": "note", "info": "note"}
#: Severity → ``security-severity`` (CVSS-like 0–10 as a string), which GitHub code scanning reads
#: to rank security alerts critical/high/medium/low; ``info`` gets none (not a security alert).
SECURITY_SEVERITY: Mapping[str, str] = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0"}

_RFC = re.compile(r"RFC\s*(\d+)(.*)")
_SECTION = re.compile(r"§\s*([0-9]+(?:\.[0-9]+)*)|Appendix\s+([A-Z](?:\.[0-9]+)*)")


def rfc_links(source: str) -> list[tuple[str, str]]:
    """``[(label, url)]`` for each RFC section a check's ``source`` names, in order.

    ``"RFC 7636 §4.2, Appendix B; RFC 9700 §2.1.1"`` → RFC 7636 §4.2, RFC 7636 Appendix B and
    RFC 9700 §2.1.1 at rfc-editor.org (the RFC Editor's HTML has ``section-…`` / ``appendix-…``
    anchors); an RFC named without a section links to the RFC itself.
    """
    links: list[tuple[str, str]] = []
    for part in source.split(";"):
        m = _RFC.search(part)
        if m is None:
            continue  # e.g. "the seed's hash_at_rest": a reference, not a public text
        number, rest = m.group(1), m.group(2).split("(")[0]
        base = f"https://www.rfc-editor.org/rfc/rfc{number}"
        sections = _SECTION.findall(rest)
        if not sections:
            links.append((f"RFC {number}", base))
        for section, appendix in sections:
            if section:
                links.append((f"RFC {number} §{section}", f"{base}#section-{section}"))
            else:
                links.append((f"RFC {number} Appendix {appendix}", f"{base}#appendix-{appendix}"))
    return links


def rule_name(check_id: str) -> str:
    """SARIF wants a rule ``name`` that reads as an identifier: ``pkce.appendix-b`` → ``PkceAppendixB``."""
    return "".join(w[:1].upper() + w[1:] for w in re.split(r"[^A-Za-z0-9]+", check_id) if w)


def sarif_rule(spec: CheckSpec) -> dict[str, Any]:
    """A ``reportingDescriptor`` for a check: title, expectation, and links to the RFC text."""
    links = rfc_links(spec.source)
    help_text = f"{spec.title}.\n\nExpected: {spec.expected}\n\nSource: {spec.source}."
    help_md = f"**{spec.title}**\n\nExpected: {spec.expected}\n\nSource: {spec.source}."
    if links:
        help_text += "\n" + "\n".join(f"{label}: {url}" for label, url in links)
        help_md += "\n\n" + "\n".join(f"- [{label}]({url})" for label, url in links)
    props: dict[str, Any] = {"source": spec.source, "severity": spec.severity,
                             "tags": ["security", spec.theme]}
    if spec.severity in SECURITY_SEVERITY:
        props["security-severity"] = SECURITY_SEVERITY[spec.severity]
    rule: dict[str, Any] = {
        "id": spec.id, "name": rule_name(spec.id),
        "shortDescription": {"text": spec.title}, "fullDescription": {"text": spec.expected},
        "help": {"text": help_text, "markdown": help_md},
        "defaultConfiguration": {"level": SARIF_LEVELS[spec.severity]},
        "properties": props,
    }
    if links:
        rule["helpUri"] = links[0][1]
    return rule


def _reason(r: CheckResult) -> str:
    return str(r.evidence[0].get("reason", "")) if r.evidence and "reason" in r.evidence[0] else ""


def _sarif_result(r: CheckResult, index: int, **fields: Any) -> dict[str, Any]:
    kind = "module" if not is_description(r.target) else "resource"
    return {
        "ruleId": r.id, "ruleIndex": index, **fields,
        # No source file to point at: the finding is about the target under test, so it is the
        # result's logical location (and, with the check id, its fingerprint across scans).
        "locations": [{"logicalLocations": [{"name": r.target, "fullyQualifiedName": r.target,
                                             "kind": kind}]}],
        "partialFingerprints": {"claimcheckFinding/v1": f"{r.target}:{r.id}"},
        "properties": {"target": r.target, "verdict": r.verdict, "severity": r.spec.severity,
                       "failingSteps": [f.as_dict() for f in failing_steps(r).values()]},
    }


def sarif_run(results: Sequence[CheckResult], target: str, *, command: str | None = None,
              comparison: Comparison | None = None) -> dict[str, Any]:
    """One SARIF ``run`` per target: every catalogue check is a rule; a violated check is a result.

    ``inconclusive`` is a result of kind ``open`` (level ``none``: it needs a human, it is not a
    failure); ``error`` and ``not_applicable`` are tool execution notifications (the check did not
    judge the target), and an ``error`` makes ``executionSuccessful`` false.
    """
    mine = [r for r in results if r.target == target]
    specs = {**CATALOGUE, **{r.id: r.spec for r in mine}}  # a result's spec wins (same object normally)
    index = {check_id: i for i, check_id in enumerate(specs)}
    out: list[dict[str, Any]] = []
    notifications: list[dict[str, Any]] = []
    for r in mine:
        state = {"baselineState": comparison.state_of(target, r.id)} if comparison is not None else {}
        if r.verdict == "violated":
            out.append(_sarif_result(r, index[r.id], kind="fail", level=SARIF_LEVELS[r.spec.severity],
                                     message={"text": first_failure(r)}, **state))
        elif r.verdict == "inconclusive":
            out.append(_sarif_result(r, index[r.id], kind="open", level="none",
                                     message={"text": f"inconclusive: {_reason(r) or first_failure(r)}"},
                                     **state))
        elif r.verdict in ("error", "not_applicable"):
            text = f"{r.id}: {'could not run' if r.verdict == 'error' else 'not applicable'}"
            detail = _reason(r) or first_failure(r)
            notifications.append({"level": "error" if r.verdict == "error" else "note",
                                  "message": {"text": f"{text}: {detail}" if detail else text},
                                  "associatedRule": {"id": r.id, "index": index[r.id]}})
    if comparison is not None:
        # A fixed finding is reported once, as SARIF's "absent" result: gone since the baseline.
        by_id = {r.id: r for r in mine}
        for c in comparison.for_target(target).of("fixed"):
            if c.check in by_id:
                out.append(_sarif_result(by_id[c.check], index[c.check], kind="pass", level="none",
                                         message={"text": f"fixed since the baseline: {c.detail}"},
                                         baselineState="absent"))
    invocation: dict[str, Any] = {"executionSuccessful": not any(r.verdict == "error" for r in mine)}
    if command:
        invocation["commandLine"] = command
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    verdicts = Counter(r.verdict for r in mine)
    return {
        "tool": {"driver": {"name": "claimcheck", "fullName": "claimcheck (harness scan)",
                            "version": __version__, "semanticVersion": __version__,
                            "rules": [sarif_rule(s) for s in specs.values()]}},
        # One category per target, so a code-scanning service keeps the targets' alerts apart.
        "automationDetails": {"id": "claimcheck/" + re.sub(r"[^A-Za-z0-9._:-]+", "_", target) + "/"},
        "invocations": [invocation],
        "results": out,
        "properties": {"target": target, "verdicts": {v: verdicts[v] for v in VERDICTS if verdicts[v]}},
    }


def to_sarif(results: Sequence[CheckResult], *, command: str | None = None,
             comparison: Comparison | None = None) -> str:
    """A SARIF 2.1.0 log (OASIS): one ``run`` per scanned target."""
    log = {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION,
           "runs": [sarif_run(results, t, command=command, comparison=comparison)
                    for t in targets_of(results)]}
    return json.dumps(log, indent=2, ensure_ascii=False) + "\n"


def render(results: Sequence[CheckResult], fmt: str, *, all_targets: bool = False,
           command: str | None = None, comparison: Comparison | None = None) -> str:
    """The report of ``results`` in ``fmt`` (one of ``FORMATS``), with ``comparison`` (a scan
    compared with a baseline) in table, md, json and sarif."""
    if fmt == "table":
        return to_table(results, comparison)
    if fmt == "md":
        return to_markdown(results, command=command, comparison=comparison)
    if fmt == "json":
        return to_json(results, as_list=all_targets, comparison=comparison)
    if fmt == "junit":
        return to_junit(results)
    if fmt == "sarif":
        return to_sarif(results, command=command, comparison=comparison)
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
