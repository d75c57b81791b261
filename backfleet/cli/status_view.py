"""``backfleet status``: one migration's progress, rate, limits and spend; ``--watch`` live."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from backfleet.cli.render import human_duration, status_table, throttle_table
from backfleet.cli.wiring import open_db
from backfleet.errors import BackfleetError
from backfleet.settings import Settings
from coordinator.dispatcher import load_migration
from coordinator.status import MigrationStatus, migration_status

#: the ETA of --watch uses the rate over this many seconds
RECENT_SECONDS = 60.0


def worker_errors_table(errors: list[dict[str, Any]]) -> Table:
    """Workers whose tasks for this migration could not get to a claim, and why."""
    table = Table(title="workers that cannot serve this migration (no claim, no attempt)")
    for column in ("worker", "range", "last seen", "error"):
        table.add_column(column)
    for e in errors:
        repeats = f" (x{e['repeats']})" if e.get("repeats", 1) > 1 else ""
        table.add_row(str(e["worker"]), str(e["range"]), f"{e['at']}{repeats}", str(e["error"]))
    return table


class StatusWatcher:
    """Samples a migration's status; keeps recent samples for the recent rate and ETA."""

    def __init__(self, settings: Settings, migration_id: int | None) -> None:
        self.settings = settings
        self.db = open_db(settings)
        migration = load_migration(self.db, migration_id, settings.alias)
        self.migration_id = migration.id
        self.label = migration.target_model
        self.model = settings.models.get(self.label)
        self.samples: deque[tuple[float, int, int]] = deque()
        self._throttle: Any = None

    def status(self) -> MigrationStatus:
        price = self.model.price_per_million_tokens if self.model else 0.0
        st = migration_status(
            self.db, self.migration_id, self.settings.alias, price_per_million=price
        )
        now = time.monotonic()
        self.samples.append((now, st.docs_done, st.tokens_used))
        while len(self.samples) > 2 and now - self.samples[0][0] > RECENT_SECONDS:
            self.samples.popleft()
        return st

    def recent(self, st: MigrationStatus) -> tuple[float | None, float | None, float | None]:
        """docs/s, tokens/min and ETA over the recent samples (None before two samples)."""
        if len(self.samples) < 2:
            return None, None, None
        (t0, d0, k0), (t1, d1, k1) = self.samples[0], self.samples[-1]
        if t1 <= t0:
            return None, None, None
        docs_s = (d1 - d0) / (t1 - t0)
        tpm = (k1 - k0) / (t1 - t0) * 60
        remaining = max(0, st.total_docs - st.docs_done)
        eta = remaining / docs_s if docs_s > 0 else None
        return docs_s, tpm, eta

    def limits(self) -> Any:
        if self.model is None or self.model.provider == "local":
            return None
        try:
            if self._throttle is None:
                from backfleet.limits import build_throttle

                self._throttle = build_throttle(self.settings, self.label)
            return self._throttle.limits()
        except BackfleetError:
            return None

    def snapshot(self) -> dict[str, Any]:
        st = self.status()
        data = st.to_dict()
        limits = self.limits()
        if limits is not None:
            from dataclasses import asdict

            data["limits"] = asdict(limits)
        docs_s, tpm, eta = self.recent(st)
        data["recent"] = {"docs_per_second": docs_s, "tokens_per_minute": tpm, "eta_seconds": eta}
        return data

    def render(self) -> Group:
        st = self.status()
        parts: list[Any] = [status_table(st)]
        docs_s, tpm, eta = self.recent(st)
        limits = self.limits()
        if docs_s is not None:
            recent = Table(show_header=False, title=f"last {RECENT_SECONDS:.0f} s")
            recent.add_column("what", style="bold")
            recent.add_column("value")
            recent.add_row("docs/s", f"{docs_s:,.1f}")
            limit = (
                f" of {limits.effective_tpm:,.0f} allowed"
                if limits and limits.effective_tpm
                else ""
            )
            recent.add_row("tokens/min", f"{tpm:,.0f}{limit}")
            recent.add_row("ETA (recent rate)", human_duration(eta))
            parts.append(recent)
        if limits is not None:
            parts.append(throttle_table(limits))
        if st.worker_errors:
            parts.append(worker_errors_table(st.worker_errors))
        return Group(*parts)

    def watch(self, console: Console, interval: float, *, as_json: bool = False) -> None:
        import json

        try:
            if as_json:
                while True:
                    console.print(json.dumps(self.snapshot(), default=str), soft_wrap=True)
                    time.sleep(interval)
            with Live(self.render(), console=console, refresh_per_second=4) as live:
                while True:
                    time.sleep(interval)
                    live.update(self.render())
        except KeyboardInterrupt:
            return
