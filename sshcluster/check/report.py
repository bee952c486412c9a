"""The preflight report: one verdict per host and step, as JSON or as a table.

A :class:`CheckReport` holds one :class:`HostReport` per inventory host; each host has
a :class:`StepResult` for every step in :data:`STEPS`, in that order. The model is plain
frozen data, so it can be built in tests without any host, and rendered twice (a rich
table for people, :meth:`CheckReport.to_json` for programs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sshcluster.inventory import Host
from sshcluster.protocol import STEPS
from sshcluster.quoting import printable

if TYPE_CHECKING:  # (the packages sub-package builds on this module)
    from sshcluster.packages.reference import Reference

#: A step's outcome: ``ok``; ``warning`` (passed, but something is worth knowing; the
#: host is still ready); ``failed`` (the host is not ready); ``skipped`` (not run,
#: because a step it needs failed or was skipped).
Status = Literal["ok", "failed", "skipped", "warning"]
STATUSES: tuple[Status, ...] = ("ok", "warning", "failed", "skipped")

#: The version of the ``check --json`` document, written down as a JSON Schema in
#: ``sshcluster/schema/check.schema.json``. It changes when a field is removed or
#: changes its meaning; new fields may appear without a change.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class StepResult:
    """The outcome of one step on one host.

    ``detail`` says what was found (or what went wrong), ``hint`` what to do about it,
    ``seconds`` how long the step took (0 for a skipped step). ``line`` and ``field``
    name the inventory line to change for a failed step, when one is to blame.
    """

    status: Status
    detail: str = ""
    seconds: float = 0.0
    hint: str | None = None
    line: int | None = None
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The step as it appears in the JSON document (see :data:`SCHEMA_VERSION`)."""
        return {"status": self.status, "detail": self.detail, "hint": self.hint,
                "seconds": round(self.seconds, 3), "line": self.line, "field": self.field}


SKIPPED = StepResult("skipped", "an earlier step failed")
#: The ``shared_dir`` step of an inventory without one: its column is left out of the
#: table when every host has this (the JSON keeps it).
NO_SHARED_DIR = StepResult("ok", "no shared_dir in the inventory")
#: Likewise, the ``fanout`` step of an inventory whose push copies directly.
NO_FANOUT = StepResult("ok", "fanout: direct (the hosts need not reach each other)")
#: (sshcluster/containers: the container step of a host without one)
NO_CONTAINER = StepResult("ok", "no container in the inventory")
#: (the ``worker_output`` and ``lease`` steps where the inventory asks neither)
NO_WORKER_OUTPUT = StepResult("ok", "no worker_output directory in the inventory")
NO_LEASE = StepResult("ok", "lease: false")
_NOT_ASKED = {"shared_dir": NO_SHARED_DIR, "fanout": NO_FANOUT, "container": NO_CONTAINER,
              "worker_output": NO_WORKER_OUTPUT, "lease": NO_LEASE}


@dataclass(frozen=True)
class HostReport:
    """Every step's outcome on one host, and what was found there.

    ``ncore`` is the detected core count (None when the check did not get that far),
    ``rscript`` the Rscript path found, ``r_version`` its R version, ``seen_primary``
    the primary's address as this host sees it (the client address of ``SSH_CONNECTION``),
    ``recorded_key`` the known_hosts file its key was recorded in (``accept_new``).
    """

    host: Host
    checks: Mapping[str, StepResult]
    ncore: int | None = None
    rscript: str | None = None
    r_version: str | None = None
    address: str | None = None
    seen_primary: str | None = None
    recorded_key: str | None = None
    packages: Mapping[str, str | None] = field(default_factory=dict)
    r_platform: str | None = None

    @property
    def label(self) -> str:
        """The host as named in the inventory (``host`` or ``host:port``)."""
        return self.host.label

    @property
    def failed(self) -> list[str]:
        """Names of the failed steps, in order (empty when the host is ready)."""
        return [s for s in STEPS if self.checks[s].status == "failed"]

    @property
    def warnings(self) -> list[str]:
        """Names of the steps that passed with a warning."""
        return [s for s in STEPS if self.checks[s].status == "warning"]

    @property
    def ok(self) -> bool:
        """True when no step failed (warnings allowed)."""
        return not self.failed

    @property
    def workers(self) -> int:
        """How many R workers this host gets: the declared ``ncore``, else the detected one
        (0 when neither is known)."""
        return self.host.ncore or self.ncore or 0

    def to_dict(self) -> dict[str, Any]:
        """The host as it appears in the JSON document."""
        return {
            "host": self.label,
            "line": self.host.line,
            "ok": self.ok,
            "failed": self.failed,
            "warnings": self.warnings,
            "checks": {s: self.checks[s].to_dict() for s in STEPS},
            "ncore": self.workers,
            "rscript": self.rscript or "",
            "r_version": self.r_version or "",
        }


@dataclass(frozen=True)
class CheckReport:
    """The outcome of ``sshcluster check``: one :class:`HostReport` per inventory host.

    ``primary`` is the address the workers were told to call back to (the detected one
    for ``primary.host: auto``), ``port`` the callback port that was tested, ``notes``
    remarks about the run as a whole (such as workers that disagree on the primary's
    address), ``seconds`` the run's duration.
    """

    primary: str
    port: int
    hosts: tuple[HostReport, ...]
    primary_r_version: str | None = None
    primary_rscript: str | None = None
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    reference: Reference | None = None

    @property
    def ok(self) -> bool:
        """True when every host passed every step (warnings allowed)."""
        return all(h.ok for h in self.hosts)

    @property
    def failed(self) -> tuple[HostReport, ...]:
        """The hosts with at least one failed step."""
        return tuple(h for h in self.hosts if not h.ok)

    @property
    def succeeded(self) -> tuple[HostReport, ...]:
        """The hosts that passed."""
        return tuple(h for h in self.hosts if h.ok)

    def __getitem__(self, label: str) -> HostReport:
        for h in self.hosts:
            if label in (h.label, h.host.host):
                return h
        raise KeyError(label)

    def to_dict(self) -> dict[str, Any]:
        """The document ``check --json`` prints, as plain Python values: ``schema`` (its
        version), ``ok``, the counts, ``primary`` and ``port``, ``notes`` and ``hosts``."""
        doc: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "ok": self.ok,
            "counts": {
                "hosts": len(self.hosts),
                "ready": len(self.succeeded),
                "failed": len(self.failed),
                "warnings": sum(1 for h in self.succeeded if h.warnings),
                "workers": sum(h.workers for h in self.succeeded),
            },
            "primary": self.primary,
            "port": self.port,
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
            "hosts": [h.to_dict() for h in self.hosts],
        }
        if self.reference is not None:  # the host x package table (issue 22)
            doc["reference"] = self.reference.to_dict()
            for h, d in zip(self.hosts, doc["hosts"], strict=True):
                d["r_platform"] = h.r_platform or ""
                d["packages"] = {p: h.packages.get(p) for p in self.reference.names}
        return doc

    def to_json(self, *, indent: int | None = 2) -> str:
        """The report as the JSON document that ``sshcluster check --json`` prints."""
        return json.dumps(self.to_dict(), indent=indent)

    def summary(self) -> str:
        """One line: how many hosts are ready, how many workers, how long it took."""
        n = len(self.hosts)
        good = len(self.succeeded)
        warned = sum(1 for h in self.succeeded if h.warnings)
        workers = sum(h.workers for h in self.succeeded)
        parts = [f"{good} of {n} host{'s' if n != 1 else ''} ready ({workers} R workers)"]
        if warned:
            parts.append(f"{warned} with warnings")
        if self.failed:
            by_step: dict[str, list[str]] = {}
            for h in self.failed:
                by_step.setdefault(h.failed[0], []).append(h.label)
            failed = "; ".join(f"{step}: {', '.join(labels)}" for step, labels in by_step.items())
            parts.append(f"{len(self.failed)} failed ({failed})")
        parts.append(f"primary {self.primary}:{self.port}")
        parts.append(f"{self.seconds:.1f} s")
        return ", ".join(parts)


    def recorded_keys(self) -> dict[str, int]:
        """How many host keys the check recorded (accept-new), per known_hosts file."""
        counts: dict[str, int] = {}
        for h in self.hosts:
            if h.recorded_key:
                counts[h.recorded_key] = counts.get(h.recorded_key, 0) + 1
        return counts

    def header_note(self) -> str:
        """What a file rendered from this check says about it in its header: how many
        hosts were ready, and which were left out (``allow_partial``) and why."""
        note = f"Checked by 'sshcluster check': {len(self.succeeded)} of {len(self.hosts)} " \
               "hosts ready."
        for host in self.failed:
            note += f"\nLeft out (--allow-partial): {host.label}: failed {', '.join(host.failed)}"
        return note


def check_schema() -> dict[str, Any]:
    """The JSON Schema of the ``check --json`` document, as shipped in the package."""
    text = resources.files("sshcluster").joinpath("schema").joinpath(
        "check.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


# --------------------------------------------------------------------------- rendering

_STYLE: dict[str, tuple[str, str]] = {
    "ok": ("ok", "green"),
    "failed": ("FAILED", "bold red"),
    "skipped": ("-", "dim"),
    "warning": ("warn", "yellow"),
}


#: Column headers for narrow terminals.
SHORT_NAMES = {
    "resolve": "dns", "connect": "tcp", "hostkey": "key", "auth": "auth", "rscript": "R",
    "packages": "pkgs", "cores": "cpu", "load": "load", "reverse_ssh": "back",
    "callback": "call", "worker_output": "out", "lease": "lease", "shared_dir": "nfs",
    "fanout": "fan", "container": "ctr",
}


def report_table(report: CheckReport, width: int | None = None) -> Table:
    """A rich table: one row per host, one column per step.

    When ``width`` (the terminal's) is too small for the step names, the columns get
    short names (:data:`SHORT_NAMES`) and ``FAIL`` for ``FAILED``; :func:`print_report`
    then prints a legend. Host labels are never cut.
    """
    short = width is not None and width < _full_width(report)
    table = Table(show_edge=False, pad_edge=False, header_style="bold",
                  box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("host", no_wrap=True, min_width=_label_width(report))
    for step in _shown(report):
        name = SHORT_NAMES[step] if short else step.replace("_", " ")
        table.add_column(name, justify="center", no_wrap=True)
    for h in report.hosts:
        cells = []
        for step in _shown(report):
            word, style = _STYLE[h.checks[step].status]
            cells.append(Text("FAIL" if short and word == "FAILED" else word, style=style))
        table.add_row(Text(h.label, style="" if h.ok else "red"), *cells)
    return table


def report_lines(report: CheckReport) -> list[Text]:
    """One line per host, for terminals too narrow even for the short table."""
    width = _label_width(report)
    lines = []
    for h in report.hosts:
        line = Text(h.label.ljust(width + 2), style="" if h.ok else "red")
        if not h.ok:
            line.append(f"FAILED at {h.failed[0]}", style="bold red")
        elif h.warnings:
            line.append(f"ready, warnings: {', '.join(h.warnings)}", style="yellow")
        else:
            line.append("ready", style="green")
        lines.append(line)
    return lines


def _shown(report: CheckReport) -> list[str]:
    """The table's steps: all, but those of _NOT_ASKED (shared_dir, fanout, ...) only
    where the inventory asks for them."""
    return [s for s in STEPS if s not in _NOT_ASKED
            or any(h.checks[s] not in (_NOT_ASKED[s], SKIPPED) for h in report.hosts)]


def _label_width(report: CheckReport) -> int:
    return max([4, *(len(h.label) for h in report.hosts)])


def _full_width(report: CheckReport) -> int:
    return _label_width(report) + sum(max(len(s), 6) + 2 for s in _shown(report))


def _short_width(report: CheckReport) -> int:
    return _label_width(report) + 1 + sum(max(len(SHORT_NAMES[s]), 4) + 2 for s in _shown(report))


def report_details(report: CheckReport) -> list[Text]:
    """The failing and warning steps of every host, with detail and hint, as lines."""
    lines: list[Text] = []
    for h in report.hosts:
        for step in STEPS:
            r = h.checks[step]
            if r.status not in ("failed", "warning"):
                continue
            style = "red" if r.status == "failed" else "yellow"
            line = Text()
            line.append(f"{h.label}", style="bold")
            line.append(f" {step} ", style=style)
            line.append("failed" if r.status == "failed" else "warning", style=style)
            line.append(f": {printable(r.detail or '')}")  # (what a host printed)
            lines.append(line)
            if r.hint:
                lines.append(Text(f"    hint: {printable(r.hint)}", style="cyan"))
            if r.line is not None:
                lines.append(Text(f"    inventory: line {r.line} ({r.field}:)", style="cyan"))
    for note in report.notes:
        lines.append(Text(f"note: {note}", style="yellow"))
    return lines


def drift_lines(report: CheckReport) -> list[Text]:
    """The package drift as a small table: only the packages some host has in another
    version (or not at all), only the hosts that differ; ``-`` for not installed."""
    ref = report.reference
    if ref is None:
        return []
    want = ref.versions
    hosts = [h for h in report.hosts if h.packages and any(
        h.packages.get(p) != v for p, v in want.items())]
    names = [p for p in ref.names if any(h.packages.get(p) != want[p] for h in hosts)]
    if not names:
        return []
    width = max([len(ref.source), *(len(h.label) for h in hosts)]) + 2
    cols = [max(len(p), len(want[p]), *(len(h.packages.get(p) or "-") for h in hosts)) + 2
            for p in names]
    pairs = list(zip(names, cols, strict=True))
    lines = [Text("package drift:", style="bold"),
             Text("".ljust(width) + "".join(p.ljust(c) for p, c in pairs)),
             Text(ref.source.ljust(width) + "".join(want[p].ljust(c) for p, c in pairs),
                  style="dim")]
    for h in hosts:
        line = Text(h.label.ljust(width))
        for p, c in pairs:
            v = h.packages.get(p)
            line.append((v or "-").ljust(c), style="" if v == want[p] else
                        "red" if v is None else "yellow")
        lines.append(line)
    return lines


def print_report(report: CheckReport, console: Console, *, table: bool = True) -> None:
    """Print the table (unless not ``table``), the details of what failed or warned, and
    the summary line."""
    if table and console.width < _short_width(report):
        for line in report_lines(report):
            console.print(line, soft_wrap=True)
    elif table:
        console.print(report_table(report, console.width))
        if console.width < _full_width(report):
            legend = ", ".join(f"{v}={k}" for k, v in SHORT_NAMES.items())
            console.print(Text(legend, style="dim"), soft_wrap=True)
    details = report_details(report) + drift_lines(report)
    if details:
        if table:
            console.print()
        for line in details:
            console.print(line, soft_wrap=True)
    if table or details:
        console.print()
    style = "bold green" if report.ok else "bold red"
    console.print(Text(report.summary(), style=style), soft_wrap=True)


__all__ = [
    "NO_CONTAINER",
    "NO_FANOUT",
    "NO_LEASE",
    "NO_SHARED_DIR",
    "NO_WORKER_OUTPUT",
    "SCHEMA_VERSION",
    "SKIPPED",
    "STATUSES",
    "STEPS",
    "CheckReport",
    "HostReport",
    "Status",
    "StepResult",
    "check_schema",
    "drift_lines",
    "print_report",
    "report_details",
    "report_lines",
    "report_table",
]
