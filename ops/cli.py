"""The `omnitutor` command: run the service and operate its database.

    omnitutor serve [--host H] [--port P]     run the API (embedded PostgreSQL by default)
    omnitutor db url|migrate|reset|bootstrap|stop
    omnitutor hello-model                     the fast model tier says hello (P0 check)
    omnitutor events export|tail, omnitutor replay LESSON_ID   (ops/events_cli.py)
    omnitutor ops purge | spend flag on|off | spend show   (ops/guardrails_cli.py)
    omnitutor projections run|status|rebuild|skip|stop|start   (ops/projections_cli.py)
    omnitutor spend aggregate|report                           (ops/projections_cli.py)
    omnitutor bench lessons|projections|eventstore             benchmarks, figures on stdout

Each sub-command reads Settings from the environment once (web/settings.py).
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eventstore.database import DATABASE_NAME, database_url, stop_embedded
from eventstore.database import __file__ as _database_file
from eventstore.errors import StoreError, translate_errors
from eventstore.logconfig import configure_logging
from eventstore.migrations import APP_ROLE, MIGRATIONS, grant_app_role, migrate, pending, reset
from eventstore.queries import load_queries
from eventstore.settings import Settings
from ops import (
    accounts_cli,
    assets_bucket,
    backup_cli,
    bench_assets,
    bench_events,
    bench_eventstore,
    bench_load,
    bench_projections,
    cache_cli,
    events_cli,
    guardrails_cli,
    lessons_cli,
    projections_cli,
    secrets_cli,
)
from ops.benchkit import say

_ADMIN = load_queries(Path(_database_file).parent / "sql" / "admin.sql")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from web.app import create_app, tune_gc
    from web.transport import AbortingH11Protocol

    started = time.perf_counter()
    with database_url(settings.database_url, settings.home) as url:
        with psycopg.connect(url) as conn:
            applied = migrate(conn, MIGRATIONS)
        if applied:
            say(f"applied migrations: {', '.join(str(m.version) for m in applied)}")
        app = create_app(settings, url)
        say(
            f"database ready in {time.perf_counter() - started:.2f}s; serving on "
            f"http://{args.host}:{args.port}"
        )
        # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal; turning it
        # into SystemExit lets the embedded database stop cleanly on the way out.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        tune_gc()
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            access_log=False,
            timeout_graceful_shutdown=5,
            lifespan="on",
            # The trusted-proxy rule is web/client_ip.py's (OMNITUTOR_TRUSTED_PROXIES); uvicorn's
            # own would believe X-Forwarded-For from 127.0.0.1 before the app sees the peer.
            proxy_headers=False,
            # uvicorn's own logging set-up would print plain text beside our JSON lines;
            # without it its records reach the root handler configure_logging installed.
            log_config=None,
            # A stream that drops a stalled reader resets its connection (web/transport.py).
            http=AbortingH11Protocol,
            # A reconnect storm connects thousands at once; uvicorn's 2048 would leave the
            # rest to retry their SYN a second later (the kernel caps it at somaxconn).
            backlog=LISTEN_BACKLOG,
        )
    return 0


LISTEN_BACKLOG = 16384


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def cmd_db_url(args: argparse.Namespace, settings: Settings) -> int:
    with database_url(settings.database_url, settings.home, keep_running=True) as url:
        if not settings.database_url:
            say(
                f"embedded PostgreSQL running under {settings.home / 'pgdata'} "
                "(stop it with `omnitutor db stop`)"
            )
        print(url)
    return 0


def cmd_db_stop(args: argparse.Namespace, settings: Settings) -> int:
    say("stopped" if stop_embedded(settings.home) else "no embedded server was running")
    return 0


def cmd_db_migrate(args: argparse.Namespace, settings: Settings) -> int:
    with database_url(settings.database_url, settings.home) as url, psycopg.connect(url) as conn:
        todo = pending(conn, MIGRATIONS)
        for m in todo:
            say(f"applying {m.version} {m.name} ({m.path.name})")
        migrate(conn, MIGRATIONS)
    say(f"migrations: {len(todo)} applied, {len(MIGRATIONS) - len(todo)} already in place")
    return 0


def cmd_db_reset(args: argparse.Namespace, settings: Settings) -> int:
    if not args.yes:
        say("db reset drops every table and all data; run again with --yes to confirm")
        return 2
    with database_url(settings.database_url, settings.home) as url, psycopg.connect(url) as conn:
        seconds = reset(conn, MIGRATIONS)
        tables = conn.execute(_ADMIN["count_tables"]).fetchone()
    say(
        f"reset: dropped and recreated {tables[0] if tables else 0} tables from "
        f"{len(MIGRATIONS)} migrations in {seconds:.2f}s"
    )
    return 0


def cmd_db_bootstrap(args: argparse.Namespace, settings: Settings) -> int:
    """Create the database and the app role, as a superuser; print the app's DATABASE_URL."""
    admin_url = args.admin_url or settings.database_url
    if not admin_url:
        say("db bootstrap needs a superuser URL: --admin-url or DATABASE_URL")
        return 2
    password = args.app_password or secrets.token_urlsafe(24)
    role, database = args.role, args.database
    with translate_errors(), psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute(_ADMIN["database_exists"], {"name": database}).fetchone() is None:
            conn.execute(sql.SQL(_ADMIN["create_database"]).format(name=sql.Identifier(database)))
            say(f"created database {database}")
        if conn.execute(_ADMIN["role_exists"], {"role": role}).fetchone() is None:
            conn.execute(
                sql.SQL(_ADMIN["create_login_role"]).format(
                    role=sql.Identifier(role), password=sql.Literal(password)
                )
            )
            say(f"created role {role}")
        else:
            say(f"role {role} exists; its password is unchanged")
            password = "<unchanged>"  # noqa: S105  # a placeholder shown instead of a secret
        conn.execute(
            sql.SQL(_ADMIN["grant_connect"]).format(
                database=sql.Identifier(database), role=sql.Identifier(role)
            )
        )
    owner_url = make_conninfo(admin_url, dbname=database)
    with translate_errors(), psycopg.connect(owner_url) as conn:
        conn.execute(_ADMIN["revoke_public_create"])
        conn.commit()
        applied = migrate(conn, MIGRATIONS, app_role=role)
        grant_app_role(conn, role)
        conn.commit()
    say(f"bootstrap: {len(applied)} migrations applied; {role} can read and write data only")
    params = conninfo_to_dict(owner_url)
    host = params.get("host", "localhost")
    port = params.get("port", "5432")
    print(f"postgresql://{role}:{password}@{host}:{port}/{database}")
    return 0


Handler = Callable[[argparse.Namespace, Settings], int]


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnitutor", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--host", default=settings.host)
    serve.add_argument("--port", type=int, default=settings.port)
    serve.set_defaults(handler=cmd_serve)

    db = sub.add_parser("db", help="database operations").add_subparsers(dest="db", required=True)
    db.add_parser("url", help="print the database URL in use").set_defaults(handler=cmd_db_url)
    db.add_parser("migrate", help="apply missing migrations").set_defaults(handler=cmd_db_migrate)
    db.add_parser("stop", help="stop the embedded server").set_defaults(handler=cmd_db_stop)
    r = db.add_parser("reset", help="drop everything and recreate it from the SQL files")
    r.add_argument("--yes", action="store_true", help="confirm: all data is lost")
    r.set_defaults(handler=cmd_db_reset)
    b = db.add_parser("bootstrap", help="create the database and the app role (superuser)")
    b.add_argument("--admin-url", help="superuser URL (default: DATABASE_URL)")
    b.add_argument("--database", default=DATABASE_NAME)
    b.add_argument("--role", default=APP_ROLE)
    b.add_argument("--app-password", help="password for the app role (default: generated)")
    b.set_defaults(handler=cmd_db_bootstrap)
    secrets_cli.register(sub)
    backup_cli.register(sub)
    lessons_cli.register(sub)
    events_cli.register(sub)
    guardrails_cli.register(sub)
    assets_bucket.register(sub)
    cache_cli.register(sub)
    accounts_cli.register(sub)
    projections_cli.register(sub)
    bench_projections.register(lessons_cli.bench_area(sub))
    bench_assets.register(lessons_cli.bench_area(sub))
    bench_eventstore.register(sub)
    bench_load.register(lessons_cli.bench_area(sub))
    bench_events.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    args = build_parser(settings).parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args, settings)
    except StoreError as e:
        say(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
