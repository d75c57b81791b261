"""A worker survives a restart of its Redis broker, and exits non-zero when it does stop on
an error (issue 13, item 9).

Everything runs against a redis-server of this test alone, on a free port.

* kombu 5.7.0's Redis ``QoS.restore_unacked`` on a channel whose transport was detached from
  its connection (what Celery's ``connection.collect()`` does when the broker goes away) raised
  ``AttributeError: 'NoneType' object has no attribute 'hostname'``, which the consumer
  reports as an "Unrecoverable error" and stops on. The worker bootstrap patches it.
* ``Celery.worker_main`` drops the exit code Celery returns, so a worker that stopped on such
  an error (or a cold shutdown, SIGQUIT) exited 0 and an on-failure supervisor left it down.
* A real `backfleet worker`, mid-range with a countdown task held, sees its broker shut down
  (`shutdown nosave`: every message and the unacked index are gone) and started again on the
  same port, three times; it keeps running and keeps consuming: the ranges sent again after
  the restarts are done by that same process.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from kombu import Connection, Exchange, Queue
from sqlalchemy import func, select

from backfleet.db.models import Range
from backfleet.rehearsal import RehearsalServer
from backfleet.settings import ThrottleSettings
from backfleet.vectorstore import VectorStore
from coordinator.dispatcher import dispatch, start_migration
from tests.support.fleet import wait_for
from tests.support.services import postgres_database
from tests.support.worker_rig import Rig, own_redis, plan_and_start, rehearsal_model
from workers.app import create_app
from workers.tasks import BACKFILL_TASK

pytestmark = pytest.mark.integration

RESTARTS = 3
DOWN_SECONDS = 4


def _held_message_channel(url: str) -> tuple[Connection, object]:
    """A kombu channel holding one delivered, unacknowledged message."""
    conn = Connection(url)
    channel = conn.channel()
    queue = Queue("bftest_item9", Exchange("bftest_item9"), "bftest_item9")
    conn.Producer(channel).publish(
        {"n": 1}, exchange=queue.exchange, routing_key="bftest_item9", declare=[queue]
    )
    channel.basic_qos(0, 1, False)
    assert channel.basic_get("bftest_item9", no_ack=False) is not None
    return conn, channel


def test_restoring_unacked_messages_after_the_connection_is_gone_does_not_raise(
    tmp_path: Path,
) -> None:
    with own_redis(tmp_path) as broker:
        conn, channel = _held_message_channel(broker.url)
        conn._do_close_transport()  # what collect() does when the broker connection is lost
        from workers.app import patch_kombu_restore_unacked

        patch_kombu_restore_unacked()  # create_app does this in every worker
        channel.close()  # type: ignore[attr-defined]  # raised AttributeError 'hostname' before


def test_a_worker_that_stops_on_an_unrecoverable_error_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery stops on an "Unrecoverable error" with EX_FAILURE; the command must pass it on.

    The broker comes back holding a string where the worker's queue list was: its BRPOP
    answers WRONGTYPE, a channel error Celery does not retry.
    """
    monkeypatch.chdir(tmp_path)
    server = RehearsalServer(default_dimension=32)
    with postgres_database() as pg_url, server, own_redis(tmp_path) as broker:
        rig = plan_and_start(
            pg_url=pg_url,
            redis_url=broker.url,
            milvus_uri="http://127.0.0.1:1",  # never reached: there is no migration
            workdir=tmp_path,
            models={"rehearsal": rehearsal_model(server)},
            label="rehearsal",
            docs=10,
            range_size=10,
            batch_size=10,
            start=False,
            plan=False,
        )
        rig.fleet.start(1, concurrency=1, pool="solo")
        worker = rig.fleet.procs[0]
        log = tmp_path / "worker-0.log"
        try:
            wait_for(
                lambda: " ready." in log.read_text(errors="replace"),
                60,
                "worker ready",
                on_timeout=rig.fleet.logs,
            )
            broker.shutdown()
            broker.start()
            redis.Redis.from_url(broker.url).set(rig.settings.backfill.queue, "not a list")
            code = worker.wait(timeout=90)
        finally:
            rig.fleet.stop()
        assert "Unrecoverable error" in rig.fleet.logs()
        assert code != 0, rig.fleet.logs()


def _last_range(rig: Rig) -> int:
    with rig.db.session() as session:
        return int(
            session.execute(
                select(func.max(Range.id)).where(Range.migration_id == rig.migration_id)
            ).scalar_one()
        )


def test_worker_keeps_consuming_after_broker_restarts(
    milvus_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray backfleet.toml reaches the workers
    # each request takes 0.25 s: a range of 15 batches runs ~4 s, long enough to be mid-task
    server = RehearsalServer(rpm=100_000, tpm=100_000_000, latency_ms=250, default_dimension=32)
    with postgres_database() as pg_url, server, own_redis(tmp_path) as broker:
        rig = plan_and_start(
            pg_url=pg_url,
            redis_url=broker.url,
            milvus_uri=milvus_uri,
            workdir=tmp_path,
            models={"rehearsal": rehearsal_model(server)},
            label="rehearsal",
            docs=600,
            range_size=150,
            batch_size=10,
            throttle=ThrottleSettings(rpm=100_000, tpm=100_000_000),
            start=False,
        )
        try:
            app = create_app(rig.settings)
            # a task waiting for its countdown (how a released range is re-sent) is held by
            # the worker, unacknowledged, beside the range it runs when the broker goes away
            app.send_task(
                BACKFILL_TASK,
                kwargs={"migration_id": rig.migration_id, "range_id": _last_range(rig)},
                queue=rig.settings.backfill.queue,
                countdown=30,
            )
            store = VectorStore(milvus_uri)
            start_migration(rig.db, store, app, rig.migration_id, actor="test", index_type="HNSW")
            store.close()
            rig.fleet.start(1, concurrency=2)
            worker = rig.fleet.procs[0]
            wait_for(
                lambda: rig.status().ranges["running"] >= 1,
                90,
                "a range running",
                on_timeout=rig.fleet.logs,
            )
            for _ in range(RESTARTS):
                broker.shutdown()
                time.sleep(DOWN_SECONDS)
                broker.start()
                time.sleep(3)

            # the broker lost every message: re-send the open ranges, as the reaper does
            def resent_and_done() -> bool:
                if worker.poll() is not None or rig.done():
                    return True
                dispatch(rig.db, app, rig.migration_id)
                time.sleep(4)
                return False

            wait_for(
                resent_and_done,
                180,
                "every range done after the broker restarts",
                on_timeout=rig.fleet.logs,
            )
            assert worker.poll() is None, (
                f"the worker exited with {worker.returncode} on a broker restart\n"
                + rig.fleet.logs()
            )
            assert rig.done(), rig.status()
            assert "Unrecoverable error" not in rig.fleet.logs()
        finally:
            rig.fleet.stop()
            rig.drop_generation()
