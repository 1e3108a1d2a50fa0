"""What an instructor reads after grading a class, besides ``grades.csv`` and the JSON files.

* :func:`class_summary`: ``summary.md``, per question the mean and median score, how many students attempted it,
  and the tests that failed most often with the messages (hints) they gave;
* :func:`feedback_markdown`: ``<student>.md``, what the student would have seen in the notebook: each test's
  PASS/FAIL row with its message, each question's score, the total, and why grading stopped if it did.

Hidden tests show in a student's feedback as passed or not, without a message (see
:func:`dlbook.grading.batch._trusted_question`); the summary, which is the instructor's, shows their messages.
Everything is sorted and free of timestamps, so grading twice writes the same bytes.
"""

from __future__ import annotations

import statistics
from collections import Counter

from dlbook.grading.core import fmt_points

__all__ = ["class_summary", "feedback_markdown"]

_LABEL = {"pass": "PASS", "fail": "FAIL", "error": "FAIL", "timeout": "FAIL", "not attempted": "----",
          "not graded": "----"}


def _md(text: str) -> str:
    """One line of Markdown that shows ``text`` as text (no table cell break, no HTML, no link)."""
    text = " ".join(str(text).split())
    for char in "\\`*_{}[]<>|#!":
        text = text.replace(char, "\\" + char)
    return text


def feedback_markdown(grade) -> str:
    """A student's feedback (a :class:`dlbook.grading.batch.StudentGrade`) as Markdown."""
    lines = [f"# {_md(grade.set_id)}: {_md(grade.student)}", "",
             f"**Total: {fmt_points(grade.total)} / {fmt_points(grade.max_total)}** ({_md(grade.status)})", ""]
    if grade.detail:
        lines += [f"Note: {_md(grade.detail)}", ""]
    for question in grade.questions:
        state = "" if question["attempted"] else " (not attempted)"
        lines += [f"## {_md(question['question'])}: {fmt_points(question['earned'])} / "
                  f"{fmt_points(question['points'])} points{state}", ""]
        for row in question["tests"]:
            name = _md(row["name"]) + (" (hidden test)" if row.get("hidden") else "")
            message = row["message"] if row["status"] in ("pass", "fail") else \
                f"{row['status']}: {row['message']}".rstrip(": ")
            lines.append(f"- `{_LABEL.get(row['status'], '----')}` {fmt_points(row['earned'])}/"
                         f"{fmt_points(row['points'])} {name}" + (f": {_md(message)}" if message else ""))
        lines.append("")
    if grade.cell_errors:
        lines += ["## Cells that raised", ""] + [f"- {_md(e)}" for e in grade.cell_errors] + [""]
    return "\n".join(lines).rstrip() + "\n"


def class_summary(grades: list, qids: list[str], top: int = 3) -> str:
    """The class at a glance, as Markdown: per question mean, median, attempted, most frequent failures."""
    lines = ["# Class summary", "", f"{len(grades)} submissions.", ""]
    statuses = Counter(g.status for g in grades)
    lines += ["| status | submissions |", "| --- | --- |"]
    lines += [f"| {_md(s)} | {n} |" for s, n in sorted(statuses.items(), key=lambda kv: (-kv[1], kv[0]))]
    lines += ["", "| question | points | mean | median | attempted |", "| --- | --- | --- | --- | --- |"]
    by_question = {q: [next((x for x in g.questions if x["question"] == q), None) for g in grades] for q in qids}
    for q in qids:
        rows = [r for r in by_question[q] if r is not None]
        scores = [r["earned"] for r in rows] or [0.0]
        points = rows[0]["points"] if rows else 0.0
        lines.append(f"| {_md(q)} | {fmt_points(points)} | {statistics.fmean(scores):.2f} | "
                     f"{fmt_points(statistics.median(scores))} | {sum(1 for r in rows if r['attempted'])} |")
    lines.append("")
    for q in qids:
        failures: Counter = Counter()
        messages: dict[str, Counter] = {}
        for grade in grades:
            for row in next((x["tests"] for x in grade.questions if x["question"] == q), []):
                if row["status"] in ("fail", "error", "timeout"):
                    failures[row["name"]] += 1
                    message = getattr(grade, "instructor_messages", {}).get(row["name"], row["message"])
                    messages.setdefault(row["name"], Counter())[message] += 1
        if not failures:
            continue
        lines += [f"## {_md(q)}: most frequent failures", ""]
        for name, count in sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))[:top]:
            lines.append(f"- {_md(name)}: {count} of {len(grades)}")
            for message, n in sorted(messages[name].items(), key=lambda kv: (-kv[1], kv[0]))[:top]:
                lines.append(f"  - {n} × {_md(message[:300]) or '(no message)'}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
