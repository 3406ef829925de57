"""pgstac administration for the test STAC API server; runs in the server's venv, not the project's.

    python pgstac_admin.py init                          migrate pgstac, turn its `context` setting on
    python pgstac_admin.py load COLLECTIONS.ndjson ITEMS.ndjson   upsert collections, then items
    python pgstac_admin.py delete-collection ID...       delete collections and their items

The database comes from the libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD), set by
tests/infra/stacapi.py. One process per command: pypgstac is imported once, the connection reused.
"""

from __future__ import annotations

import sys
import time

from pypgstac.db import PgstacDB
from pypgstac.load import Loader, Methods
from pypgstac.migrate import Migrate


def init(db: PgstacDB) -> None:
    t0 = time.monotonic()
    version = Migrate(db).run_migration()
    conn = db.connect()
    with conn.cursor() as cur:
        # numberMatched in search responses (pystac-client's matched()) needs pgstac's context on.
        cur.execute(
            "INSERT INTO pgstac.pgstac_settings (name, value) VALUES ('context', 'on') "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
        )
    conn.commit()
    print(f"pgstac {version} migrated in {time.monotonic() - t0:.2f} s; context on", file=sys.stderr)


def load(db: PgstacDB, collections: str, items: str) -> None:
    loader = Loader(db=db)
    loader.load_collections(collections, Methods.upsert)
    loader.load_items(items, Methods.upsert)


def delete_collections(db: PgstacDB, collection_ids: list[str]) -> None:
    conn = db.connect()
    with conn.cursor() as cur:
        for collection_id in collection_ids:
            cur.execute("SELECT pgstac.delete_collection(%s)", (collection_id,))
    conn.commit()


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    command, args = argv[0], argv[1:]
    with PgstacDB(dsn="") as db:
        if command == "init" and not args:
            init(db)
        elif command == "load" and len(args) == 2:
            load(db, *args)
        elif command == "delete-collection" and args:
            delete_collections(db, args)
        else:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
