import type { CommonQueryMethods, FragmentSqlToken, IdentifierSqlToken } from 'slonik';
import { z } from 'zod';
import { sql } from '../../db/pool.js';
import type { OrderEvent } from './events.js';

/**
 * What a projection is: one view table of read_db, how an event changes it
 * (a pure function), and what it must hold (SPEC §3, recomputed from write_db).
 * Everything else — the upsert the projector runs, the comparison verify
 * makes, the copy rebuild writes — is derived here from that description, so
 * adding a projection is one module under projections/ plus one migration
 * (docs/projections.md).
 *
 * Views only ever change by adding rows of deltas: each value column is
 * combined with `sum` (added) or `max` (kept if greater: GREATEST), so events
 * apply in any order, any grouping, with the same result.
 */

export type SqlType = 'int4' | 'numeric' | 'text' | 'timestamp';
export type Value = string | number;
export type Row = Record<string, Value>;

export interface Column {
  name: string;
  type: SqlType;
  combine: 'sum' | 'max';
}

/** What the dashboard shows of a projection: a table, or bars (label, value text, height as a share of the largest). */
export interface Panel {
  id: string;
  title: string;
  wide?: boolean;
  table?: { headers: string[]; rows: (string | number)[][]; empty: string };
  bars?: { label: string; value: string; share: number; title: string }[];
}

export interface Projection<R extends Row = Row> {
  /** The view's table in read_db, created by a numbered migration in db/migrations/read/. */
  readonly table: string;
  readonly key: { readonly name: string; readonly type: SqlType };
  readonly columns: readonly Column[];
  /** The rows an event adds to the view: the key and every value column. Pure; a key may repeat. */
  evolve(event: OrderEvent): R[];
  /** SPEC §3: the view recomputed from write_db alone. Selects `key`, then the value columns by name, one row per key. */
  readonly recompute: FragmentSqlToken;
  /**
   * Few rows that nearly every batch changes (an hour, a category). The
   * projector changes them last, just before its commit, so that batches
   * running at once wait on each other only for that moment, not for their
   * whole statement (workers/projector/apply.ts).
   */
  readonly hot?: boolean;
  /** Its part of the dashboard (read from read_db; write_db only for names). */
  panel?(dbs: { read: CommonQueryMethods; write: CommonQueryMethods }): Promise<Panel>;
}

const id = (name: string): IdentifierSqlToken => sql.identifier([name]);
const list = (names: readonly string[]) => sql.join(names.map(id), sql.fragment`, `);
const namesOf = (p: Projection) => [p.key.name, ...p.columns.map((c) => c.name)];
const typesOf = (p: Projection) => [p.key.type, ...p.columns.map((c) => c.type)];

/** A row of a view's deltas and the event it comes from. */
export interface EventRow {
  eventId: string;
  row: Row;
}

/**
 * The upsert that adds the rows of the events named in `applied` (a CTE of
 * the caller's statement with an event_id column) to the view: rows of the
 * same key are combined first, then upserted in key order (concurrent
 * batches wait on each other's rows instead of deadlocking). Rows of other
 * events (duplicates) are sent along and filtered out here. A data-modifying
 * CTE of the projector's one statement (apply.ts); undefined when there are
 * no rows.
 */
export function upsertFragment(p: Projection, rows: readonly EventRow[], applied: IdentifierSqlToken): FragmentSqlToken | undefined {
  if (rows.length === 0) return undefined;
  const names = namesOf(p);
  const key = id(p.key.name);
  const combined = sql.join([key, ...p.columns.map((c) => (c.combine === 'sum' ? sql.fragment`sum(${id(c.name)})` : sql.fragment`max(${id(c.name)})`))], sql.fragment`, `);
  const updates = sql.join(
    p.columns.map((c) =>
      c.combine === 'sum' ? sql.fragment`${id(c.name)} = v.${id(c.name)} + EXCLUDED.${id(c.name)}` : sql.fragment`${id(c.name)} = GREATEST(v.${id(c.name)}, EXCLUDED.${id(c.name)})`,
    ),
    sql.fragment`, `,
  );
  return sql.fragment`
    INSERT INTO ${id(p.table)} AS v (${list(names)})
    SELECT ${combined}
      FROM ${sql.unnest(rows.map((r) => [r.eventId, ...names.map((n) => r.row[n]!)]), ['text', ...typesOf(p)])} AS d (delta_event_id, ${list(names)})
     WHERE d.delta_event_id IN (SELECT event_id FROM ${applied})
     GROUP BY ${key} ORDER BY ${key}
    ON CONFLICT (${key}) DO UPDATE SET ${updates}`;
}

/** key → values as canonical text (trailing zeros of NUMERIC trimmed, so 1.50 = 1.5 and 0.00 = 0). */
export type ViewRows = Map<string, string[]>;

const canonicalRow = z.record(z.string(), z.string().nullable());

/** The rows of `inner` (key, then the value columns by name) as canonical text; rows of all zeros left out (SPEC §3: a missing row counts as all zeros). */
async function canonical(conn: CommonQueryMethods, p: Projection, inner: FragmentSqlToken): Promise<ViewRows> {
  const key = p.key.type === 'timestamp' ? sql.fragment`to_char(t.key, 'YYYY-MM-DD"T"HH24:MI:SS')` : sql.fragment`t.key::text`;
  const cols = p.columns.map((c) =>
    c.type === 'timestamp'
      ? sql.fragment`to_char(t.${id(c.name)}, 'YYYY-MM-DD"T"HH24:MI:SS.US') AS ${id(c.name)}`
      : sql.fragment`trim_scale(t.${id(c.name)}::numeric)::text AS ${id(c.name)}`,
  );
  const rows = await conn.any(sql.type(canonicalRow)`SELECT ${key} AS key, ${sql.join(cols, sql.fragment`, `)} FROM (${inner}) t`);
  const out: ViewRows = new Map();
  for (const r of rows) {
    const values = p.columns.map((c) => r[c.name] ?? 'null');
    if (values.every((v) => v === '0' || v === 'null')) continue;
    out.set(r.key!, values);
  }
  return out;
}

/** What the view must hold, from write_db. */
export function expectedRows(write: CommonQueryMethods, p: Projection): Promise<ViewRows> {
  return canonical(write, p, p.recompute);
}

/**
 * What the view holds, or, given rows of events that are not applied (parked
 * ones), what it would hold with them: what verify compares with the
 * recomputation, so that an operator's decision is not reported as an error.
 */
export function actualRows(read: CommonQueryMethods, p: Projection, plus: readonly Row[] = []): Promise<ViewRows> {
  const names = namesOf(p);
  const stored = sql.fragment`SELECT ${id(p.key.name)} AS key, ${list(p.columns.map((c) => c.name))} FROM ${id(p.table)}`;
  if (plus.length === 0) return canonical(read, p, stored);
  const combined = p.columns.map((c) => (c.combine === 'sum' ? sql.fragment`sum(${id(c.name)}) AS ${id(c.name)}` : sql.fragment`max(${id(c.name)}) AS ${id(c.name)}`));
  const added = sql.fragment`SELECT * FROM ${sql.unnest(plus.map((r) => names.map((n) => r[n]!)), typesOf(p))} AS d (${list(['key', ...names.slice(1)])})`;
  return canonical(read, p, sql.fragment`SELECT key, ${sql.join(combined, sql.fragment`, `)} FROM (${stored} UNION ALL ${added}) u GROUP BY key`);
}

/** Add these rows to the table (rebuild's shadow): columns in the projection's order, values as text. */
export async function insertRows(read: CommonQueryMethods, p: Projection, rows: readonly (string | null)[][]): Promise<void> {
  if (rows.length === 0) return;
  await read.query(sql.typeAlias('void')`
    INSERT INTO ${id(p.table)} (${list(namesOf(p))})
    SELECT * FROM ${sql.unnest(rows, typesOf(p))}`);
}
