// An agent using Node's `pg` driver through the Airlock proxy.
//
// Usage: node agent.js MODE PORT TOKEN SQL [PARAM...]
// MODE is `pg` (unnamed extended-protocol statement, or simple query with
// no parameters) or `pg-prepared` (a named prepared statement). Prints one
// line: "ok <first value or row count>" or "error <SQLSTATE> <message>".
"use strict";

const { Client } = require("pg");

async function main() {
  const [mode, port, token, sql, ...rest] = process.argv.slice(2);
  const values = rest.map((p) => Number.parseInt(p, 10));
  const client = new Client({
    host: "127.0.0.1",
    port: Number.parseInt(port, 10),
    database: "prod-maintenance",
    user: "agent-7",
    password: token,
    ssl: false,
    connectionTimeoutMillis: 10000,
  });
  let out;
  try {
    await client.connect();
    const query = mode === "pg-prepared" ? { name: "agent-statement", text: sql, values } : { text: sql, values };
    const result = await client.query(query);
    out = result.rows.length > 0 ? `ok ${Object.values(result.rows[0])[0]}` : `ok ${result.rowCount}`;
  } catch (e) {
    out = `error ${e.code || "?"} ${e.message}`;
  } finally {
    await client.end().catch(() => {});
  }
  process.stdout.write(`${out}\n`);
}

main();
