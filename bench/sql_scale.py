#!/usr/bin/env python3
"""The analyst SQL at scale: every SELECT in README.md on N synthetic decisions.

Loads N decisions (default 10M) with their explanations, labels, reviews and a
shadow model's rows into a fresh database migrated by `riskstream migrate`,
then times each README query (EXPLAIN ANALYZE, median of 3 after a warm-up)
and keeps its plan. Writes the table and the plans between the markers
`<!-- sql-scale:begin -->` and `<!-- sql-scale:end -->` of docs/BENCHMARKS.md.

The rows are synthetic but shaped like the stream's: a year of event time,
200k cards and 20k terminals, scores skewed low so that ~1.5 % are reviewed and
~0.2 % declined, a fraud label for ~0.4 % of transactions, 16 history
references per explanation, the model's 20 inputs as real[].

    .venv/bin/python bench/sql_scale.py [--rows 10000000] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "postgres://postgres@127.0.0.1:15432/"
BEGIN, END = "<!-- sql-scale:begin -->", "<!-- sql-scale:end -->"


def readme_selects(text: str) -> list[str]:
    """The SELECTs of the ```sql blocks, as integration-tests/analyst_sql.rs reads them."""
    out, block = [], None
    for line in text.splitlines():
        t = line.strip()
        if block is None and t == "```sql":
            block = []
        elif block is not None and t == "```":
            # Comments first: a `;` in one must not split a statement.
            code = "\n".join(l.split("--")[0] for l in block)
            for stmt in code.split(";"):
                sql = stmt.strip()
                if sql.upper().startswith("SELECT"):
                    out.append(sql)
            block = None
        elif block is not None:
            block.append(line)
    return out


def load(conn: psycopg.Connection, rows: int, chunk: int) -> float:
    manifest = json.loads((ROOT / "models/fraud-attention/manifest.json").read_text())
    names = manifest["feature_names"]
    conn.execute(
        "INSERT INTO model_versions (name, version, sha256, task, feature_names, manifest)"
        " VALUES (%s, %s, %s, 'fraud', %s, %s)",
        (manifest["name"], str(manifest["version"]), manifest["sha256"], names, json.dumps(manifest)),
    )
    conn.execute(
        "INSERT INTO model_versions (name, version, sha256, task, feature_names, manifest)"
        " VALUES ('fraud-attention-int8', '2', 'shadow', 'fraud', %s, '{}')",
        (names,),
    )
    conn.execute(
        "INSERT INTO threshold_sets (content_sha256, thresholds, changed_by) VALUES"
        " ('a', '{\"review\": 0.176, \"decline\": 0.99, \"channel\": {}}', 'bench'),"
        " ('b', '{\"review\": 0.15, \"decline\": 0.99, \"channel\": {}}', 'bench')"
    )
    conn.commit()
    started = time.monotonic()
    # The year's day partitions, as the engine creates them for its batches.
    conn.execute("SELECT create_decision_partitions(ARRAY(SELECT generate_series("
                 "date '2026-01-01', date '2026-12-31', interval '1 day')::date))")
    nf = len(names)
    for lo in range(0, rows, chunk):
        hi = min(rows, lo + chunk)
        # One row per g: a year of event time in order, the score skewed low
        # (0.2 % in [0.99, 1], else a uniform to the power 115: ~1.5 % above
        # 0.176).
        conn.execute(
            f"""
            INSERT INTO risk_decisions
                (tx_id, ts, card_id, terminal_id, amount, currency, mcc, channel, country,
                 score, decision, model_name, model_version, model_sha256, threshold_version,
                 features, state_complete, decided_at, kafka_ts, source_topic, source_partition,
                 source_offset, rules_fired)
            SELECT 'tx-' || lpad(g::text, 9, '0'),
                   ts, 'card-' || lpad((mod(hashint, 200000))::text, 6, '0'),
                   'term-' || lpad((mod(hashint, 20000))::text, 5, '0'),
                   round((exp(random() * 6))::numeric, 2), 'EUR', 5411 + (mod(hashint, 40)),
                   (ARRAY['pos', 'ecom', 'atm'])[1 + mod(hashint, 3)], 'ES',
                   s, CASE WHEN s >= 0.99 THEN 'decline' WHEN s >= th THEN 'review' ELSE 'approve' END,
                   %(name)s, %(version)s, %(sha)s, CASE WHEN th = 0.176 THEN 1 ELSE 2 END,
                   (SELECT array_agg(random()::real) FROM generate_series(1, {nf})),
                   true, ts + interval '40 ms', ts + interval '5 ms', 'transactions',
                   mod(g, 4)::int, g / 4,
                   CASE WHEN s >= th AND mod(hashint, 7) = 0 THEN ARRAY['large-ecom-burst'] ELSE '{{}}' END
              FROM (SELECT g, timestamptz '2026-01-01' + (g::float8 / %(rows)s) * interval '365 days' AS ts,
                           (CASE WHEN random() < 0.002 THEN 0.99 + random() * 0.01
                                 ELSE exp(greatest(115 * ln(random() + 1e-12), -50)) END)::real AS s,
                           abs(hashint8(g)) AS hashint,
                           CASE WHEN g > %(rows)s * 0.9 THEN 0.15 ELSE 0.176 END AS th
                      FROM generate_series(%(lo)s::bigint + 1, %(hi)s) g) x
            """,
            {"lo": lo, "hi": hi, "rows": rows, "name": manifest["name"],
             "version": str(manifest["version"]), "sha": manifest["sha256"]},
        )
        conn.execute(
            f"""
            INSERT INTO attention_explanations (tx_id, feature_weights, history_tx_ids, history_weights, ts)
            SELECT 'tx-' || lpad(g::text, 9, '0'),
                   (SELECT array_agg(random()::real / {nf}) FROM generate_series(1, {nf})),
                   (SELECT array_agg('tx-' || lpad(greatest(g - k * 97, 1)::text, 9, '0'))
                      FROM generate_series(1, 16) k),
                   (SELECT array_agg(random()::real / 16) FROM generate_series(1, 16)),
                   timestamptz '2026-01-01' + (g::float8 / %(rows)s) * interval '365 days'
              FROM generate_series(%(lo)s::bigint + 1, %(hi)s) g
            """,
            {"lo": lo, "hi": hi, "rows": rows},
        )
        conn.execute(
            """
            INSERT INTO decision_ids (tx_id, ts)
            SELECT 'tx-' || lpad(g::text, 9, '0'),
                   timestamptz '2026-01-01' + (g::float8 / %(rows)s) * interval '365 days'
              FROM generate_series(%(lo)s::bigint + 1, %(hi)s) g
            """,
            {"lo": lo, "hi": hi, "rows": rows},
        )
        conn.commit()
        print(f"  {hi:,} / {rows:,} decisions ({time.monotonic() - started:.0f} s)", flush=True)
    # Labels: every decline and two in three reviews are frauds, plus a
    # sprinkle of approved ones; reported a week later.
    conn.execute(
        """
        INSERT INTO labels (tx_id, is_fraud, reported_at, source_partition, source_offset)
        SELECT tx_id, true, ts + interval '7 days', 0, row_number() OVER ()
          FROM risk_decisions
         WHERE decision = 'decline' OR (decision = 'review' AND mod(abs(hashtext(tx_id)), 3) < 2)
            OR (decision = 'approve' AND mod(abs(hashtext(tx_id)), 500) = 0)
        """
    )
    conn.execute(
        """
        INSERT INTO label_reviews (tx_id, is_fraud, reviewer, note)
        SELECT tx_id, score > 0.5, 'alice', 'bench'
          FROM risk_decisions WHERE decision = 'review' AND mod(abs(hashtext(tx_id)), 5) = 0
        """
    )
    # A shadow model on the last 30 days.
    conn.execute(
        """
        INSERT INTO shadow_decisions (tx_id, model_name, model_version, model_sha256, score,
                                      decision, threshold_version, feature_weights, history_weights, ts)
        SELECT tx_id, 'fraud-attention-int8', '2', 'shadow', least(1, score * (0.95 + random() * 0.1))::real,
               decision, threshold_version, '{}', '{}', ts
          FROM risk_decisions WHERE ts >= timestamptz '2026-12-01'
        """
    )
    conn.commit()
    seconds = time.monotonic() - started
    conn.autocommit = True
    conn.execute("VACUUM (ANALYZE)")
    conn.autocommit = False
    return seconds


def summarise(conn: psycopg.Connection) -> tuple[int, float, float]:
    """refresh_summaries() on everything loaded, then once more at once: days
    summarised and the seconds of each."""
    started = time.monotonic()
    days = conn.execute("SELECT refresh_summaries()").fetchone()[0]
    conn.commit()
    first = time.monotonic() - started
    started = time.monotonic()
    conn.execute("SELECT refresh_summaries()").fetchone()
    conn.commit()
    again = time.monotonic() - started
    conn.autocommit = True
    conn.execute("VACUUM (ANALYZE) decision_days, shadow_days, summary_state")
    conn.autocommit = False
    return days, first, again


def measure(conn: psycopg.Connection, sql: str, runs: int = 3) -> dict:
    conn.execute(sql).fetchall()  # warm-up
    times, result_rows = [], 0
    for _ in range(runs):
        plan = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}").fetchone()[0][0]
        times.append(plan["Execution Time"] + plan["Planning Time"])
        result_rows = plan["Plan"].get("Actual Rows", 0)
    text = conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF, BUFFERS) {sql}").fetchall()
    conn.rollback()
    return {
        "sql": sql,
        "ms": statistics.median(times),
        "rows": result_rows,
        "plan": "\n".join(r[0] for r in text),
    }


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def report(results: list[dict], rows: int, load_s: float, sizes: list, pg: str, settings: str,
           summary: tuple[int, float, float] | None) -> str:
    summarised = ("no day summarised (`--no-summaries`): every view aggregates every decision"
                  if summary is None else
                  f"`refresh_summaries()` summarised {summary[0]} days in {summary[1]:.1f} s; a second "
                  f"refresh right after took {summary[2]:.1f} s (it re-counts the days of the labels "
                  "received in the five minutes before the first, here every day)")
    out = [
        f"Measured {time.strftime('%Y-%m-%d')} by `.venv/bin/python bench/sql_scale.py --rows {rows}` "
        f"on {machine()}, {pg}, {settings}. {rows:,} synthetic decisions loaded in {load_s:.0f} s "
        "(explanations, labels, reviews, a shadow model's last 30 days); "
        f"{summarised}. Each query's time is the "
        "median of 3 runs after a warm-up (planning + execution, from EXPLAIN ANALYZE).",
        "",
        "| table | rows | size |",
        "|---|---:|---:|",
    ]
    out += [f"| `{t}` | {n:,} | {s} |" for t, n, s in sizes]
    out += ["", "| README query | ms | rows | under 100 ms |", "|---|---:|---:|---|"]
    for r in results:
        first = " ".join(r["sql"].split())
        out.append(f"| `{first[:110]}{'…' if len(first) > 110 else ''}` | {r['ms']:.1f} | {r['rows']:,} | "
                   f"{'yes' if r['ms'] < 100 else '**no**'} |")
    out += ["", "Plans (EXPLAIN ANALYZE, the last run):", ""]
    for r in results:
        out += ["<details><summary><code>" + " ".join(r["sql"].split())[:120] + "</code> — "
                f"{r['ms']:.1f} ms</summary>", "", "```", r["plan"], "```", "", "</details>", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--chunk", type=int, default=1_000_000)
    ap.add_argument("--db", default="riskstream_sql_scale")
    ap.add_argument("--keep", action="store_true", help="keep the database (~10 GB at 10M)")
    ap.add_argument("--reuse", action="store_true", help="measure an existing --db without loading")
    ap.add_argument("--no-summaries", action="store_true",
                    help="do not run refresh_summaries(): the views aggregate every decision")
    ap.add_argument("--doc", default=str(ROOT / "docs/BENCHMARKS.md"))
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", ""), "debug/riskstream"))
    args = ap.parse_args()
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", args.db):
        sys.exit("--db: a plain lower-case name")

    load_s = 0.0
    if not args.reuse:
        with psycopg.connect(ADMIN + "postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {args.db} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {args.db} OWNER riskstream_owner")
        env = dict(os.environ, RISKSTREAM_POSTGRES__MIGRATE_URL=
                   f"postgres://riskstream_migrator:dev-migrator@127.0.0.1:15432/{args.db}")
        subprocess.run([args.bin, "--config", str(ROOT / "config/riskstream.toml"), "migrate"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"loading {args.rows:,} decisions into {args.db}...", flush=True)
        with psycopg.connect(ADMIN + args.db) as conn:
            load_s = load(conn, args.rows, args.chunk)
    summary = None
    if not args.no_summaries:
        with psycopg.connect(ADMIN + args.db) as conn:
            summary = summarise(conn)
        print(f"refresh_summaries(): {summary[0]} days in {summary[1]:.1f} s, "
              f"a second one {summary[2]:.1f} s", flush=True)
    try:
        with psycopg.connect(ADMIN + args.db) as conn:
            tx = conn.execute("SELECT tx_id FROM risk_decisions WHERE decision = 'review' "
                              "ORDER BY ts DESC LIMIT 1").fetchone()[0]
            queries = [q.replace("some-tx-id", tx) for q in readme_selects((ROOT / "README.md").read_text())]
            results = []
            for q in queries:
                r = measure(conn, q)
                print(f"{r['ms']:9.1f} ms  {r['rows']:>8,} rows  {' '.join(q.split())[:90]}", flush=True)
                results.append(r)
            # A partitioned table has no storage of its own: its partitions' sum.
            sizes = conn.execute(
                "SELECT c.relname, sum(greatest(p.reltuples, 0))::bigint,"
                "       pg_size_pretty(sum(pg_total_relation_size(t.relid))::bigint)"
                "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " CROSS JOIN LATERAL pg_partition_tree(c.oid) t"
                "  JOIN pg_class p ON p.oid = t.relid"
                " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
                "   AND c.relname IN ('risk_decisions', 'attention_explanations', 'decision_ids', 'labels',"
                "                     'label_reviews', 'shadow_decisions')"
                " GROUP BY c.relname"
                " ORDER BY sum(pg_total_relation_size(t.relid)) DESC").fetchall()
            pg = conn.execute("SHOW server_version").fetchone()[0]
            settings = ", ".join(f"{k} {conn.execute(f'SHOW {k}').fetchone()[0]}"
                                 for k in ("shared_buffers", "work_mem", "max_parallel_workers_per_gather"))
        section = report(results, args.rows, load_s, sizes, f"PostgreSQL {pg}", settings, summary)
        doc = Path(args.doc)
        text = doc.read_text()
        if BEGIN in text and END in text:
            text = text[: text.index(BEGIN) + len(BEGIN)] + "\n" + section + "\n" + text[text.index(END):]
        else:
            text += f"\n## Analyst SQL at {args.rows:,} decisions\n\n{BEGIN}\n{section}\n{END}\n"
        doc.write_text(text)
        print(f"wrote {doc}")
    finally:
        if not args.keep:
            with psycopg.connect(ADMIN + "postgres", autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {args.db} WITH (FORCE)")


if __name__ == "__main__":
    main()
