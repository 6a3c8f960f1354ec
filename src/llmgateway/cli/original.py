"""What `db upgrade` (and every start) says about the original llmGateway's tables: what was
imported, per provider, and the SQL to drop the renamed tables or to go back."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmgateway.store import Migration
    from llmgateway.store.original import ProviderImport, Report


def describe(migration: Migration, where: str) -> list[str]:
    """The lines about the original's tables (none when there were none)."""
    report = migration.original
    if report is None:
        return []
    from llmgateway.store.original import PREFIX, State, still_writing

    found = f"{where}: the original llmGateway's tables in schema {report.schema}"
    if report.last_check_age is not None:
        found += f" (its last key check: {_when(report.last_check_age)})"
    if report.state is State.REFUSED:
        return [
            f"{found}: would not be imported:",
            f"  {still_writing(report.last_check_age or 0)}",
        ]
    if report.state is State.KEPT:
        kept = f"{where}: the original llmGateway's tables, imported earlier, are kept as {PREFIX}*"
        if migration.dry_run:
            return [kept, *_sql_lines(report)]
        return [f"{kept} (`llmgateway db upgrade --dry-run` shows how to drop them, or go back)"]
    lines = [f"{found}: {'would be ' if migration.dry_run else ''}imported"]
    lines += [f"  {_provider_line(p)}" for p in report.providers]
    if report.unknown_statuses:
        lines.append(
            f"  {report.unknown_statuses} status rows had a status this version does not know: "
            "imported as untested (due for a check at their next check time)"
        )
    if report.proxies:
        lines.append(
            f"  proxies not imported ({report.proxies} in its tables): they come from the "
            "proxy files (pool_list_path), as before"
        )
    lines += [
        "  every key is imported; keys no longer in the key files are marked removed by the "
        "first sync (`llmgateway db upgrade --sync`, or any start)",
        f"  its tables {'would be' if migration.dry_run else 'were'} renamed to {PREFIX}<name>, "
        "with their indexes, constraints and sequences, and kept",
    ]
    return lines + _sql_lines(report)


def _provider_line(imported: ProviderImport) -> str:
    statuses = ", ".join(f"{status} {count}" for status, count in imported.statuses)
    line = f"{imported.name}: {imported.keys} keys, {imported.rows} status rows"
    if statuses:
        line += f" ({statuses})"
    if not imported.configured:
        return line + "; not in the config: imported inactive (add it back to use them)"
    return line + f"; {imported.due} due for a check now"


def _sql_lines(report: Report) -> list[str]:
    if not report.drop_sql:
        return []
    return [
        "Once satisfied with llmgateway, drop the original's tables (in psql):",
        *(f"  {statement}" for statement in report.drop_sql),
        "To go back to the original llmGateway instead, stop llmgateway and run (in psql):",
        *(f"  {statement}" for statement in report.restore_sql),
    ]


def _when(age: float) -> str:
    if age < 0:
        return "in the future (clock skew?)"
    if age < 900:  # in seconds near the refusal's threshold (10 min)
        return f"{age:.0f} s ago"
    if age < 2 * 3600:
        return f"{age / 60:.0f} min ago"
    if age < 2 * 86400:
        return f"{age / 3600:.1f} h ago"
    return f"{age / 86400:.1f} days ago"
