"""An agent using a real Python driver through the Airlock proxy.

Usage: agent.py DRIVER PORT TOKEN SQL [PARAM...]
DRIVER is psycopg or asyncpg. Prints one line: "ok <rowcount or first value>"
or "error <SQLSTATE> <message>". Parameters are passed as integers.
"""
import asyncio
import sys


def run_psycopg(port, token, sql, params):
    import psycopg

    try:
        with psycopg.connect(
            host="127.0.0.1", port=port, dbname="prod-maintenance", user="agent-7",
            password=token, sslmode="disable", connect_timeout=10,
        ) as conn:
            with conn.cursor() as cur:
                cur.execute(sql, params or None)
                if cur.description:
                    return f"ok {cur.fetchone()[0]}"
                return f"ok {cur.rowcount}"
    except psycopg.Error as e:
        return f"error {e.sqlstate} {e.diag.message_primary or e}"


async def run_asyncpg(port, token, sql, params):
    import asyncpg

    try:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=port, database="prod-maintenance", user="agent-7",
            password=token, ssl=False, timeout=10,
        )
        try:
            if sql.lstrip().upper().startswith("SELECT"):
                return f"ok {await conn.fetchval(sql, *params)}"
            status = await conn.execute(sql, *params)
            return f"ok {status.split()[-1]}"
        finally:
            await conn.close()
    except asyncpg.PostgresError as e:
        return f"error {e.sqlstate} {e.message}"


def main():
    driver, port, token, sql = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    params = [int(p) for p in sys.argv[5:]]
    if driver == "psycopg":
        out = run_psycopg(port, token, sql, params)
    else:
        out = asyncio.run(run_asyncpg(port, token, sql, params))
    print(out, flush=True)


main()
