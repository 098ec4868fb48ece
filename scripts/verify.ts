import { z } from 'zod';
import { createDb, sql } from '../db/pool.js';
import { createLogger } from '../lib/logger.js';
import { configOrExit } from '../lib/lifecycle.js';
import { commandLine, numberOption } from '../lib/cli.js';
import { compareEventIds, compareViews, type Difference, type EventIdComparison } from '../db/recompute.js';
import { recordVerifyRun, type VerifyRun } from '../db/verify-runs.js';
import { PROJECTIONS } from '../workers/projector/projections/index.js';

const USAGE = `usage: npm run verify [-- --wait SECONDS]

Compares every view of the read model with its recomputation from write_db
(docs/spec.md §3), and processed_events with the outbox, at a point where both
databases agree on which events exist: a REPEATABLE READ snapshot of
write_db, then one of read_db, retried until the pipeline has caught up with
that snapshot, or until --wait (60) runs out. Reports dead letters: failed
ones (exit 1) and parked ones (counted as decided). Safe on a live system.
Each result is recorded in read_db (verify_runs), for the admin view.

exit 0 equal · 1 different, not caught up, or failed events · 2 could not run`;

const { values } = commandLine('verify', USAGE, { wait: { type: 'string' } });
const waitSeconds = numberOption('verify', 'wait', values.wait, 60, 0, 86_400);

async function main(): Promise<number> {
  const config = configOrExit('verify', { findRunning: true });
  const log = createLogger('warn', 'verify');
  const writeDb = createDb(config.DATABASE_URL, { name: 'verify', max: 1, log });
  const readDb = createDb(config.READ_DATABASE_URL, { name: 'verify', max: 1, log });
  const deadline = Date.now() + waitSeconds * 1000;
  const started = new Date().toISOString();
  try {
    const { code, run } = await readDb.connect((read) =>
      writeDb.connect(async (write): Promise<{ code: number; run: Omit<VerifyRun, 'finished_at' | 'started_at'> }> => {
        for (let attempt = 1; ; attempt++) {
          await write.query(sql.typeAlias('void')`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`);
          await write.query(sql.typeAlias('void')`SELECT`); // take the write_db snapshot first
          await read.query(sql.typeAlias('void')`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`);
          try {
            const ids = await compareEventIds(write, read);
            if (ids.unprocessed.length === 0 && ids.unknown.length === 0) {
              const diffs = await compareViews(write, read, ids.parked.flatMap((p) => p.event ?? []));
              const events = await write.oneFirst(sql.type(z.object({ n: z.number() }))`SELECT count(*)::int AS n FROM outbox`);
              const code = report(diffs, events, ids);
              const mismatches = Object.fromEntries(PROJECTIONS.map((p) => [p.table, diffs.filter((d) => d.view === p.table).length]));
              const outcome = diffs.length > 0 ? 'different' : ids.failed.length > 0 ? 'failed_events' : 'equal';
              return { code, run: { ok: code === 0, outcome, events, unapplied: 0, failed: ids.failed.length, parked: ids.parked.length, mismatches } };
            }
            if (Date.now() > deadline) {
              say(`verify: the read model did not catch up within ${waitSeconds} s`);
              console.log(`  events not yet applied: ${ids.unprocessed.length} (first ids: ${ids.unprocessed.slice(0, 10).join(', ')})`);
              if (ids.unknown.length > 0) console.log(`  processed ids that are not in the outbox: ${ids.unknown.slice(0, 10).join(', ')}`);
              const run = { ok: false, outcome: 'not_caught_up', events: null, unapplied: ids.unprocessed.length, failed: ids.failed.length, parked: ids.parked.length, mismatches: {} } as const;
              return { code: 1, run };
            }
            progressOpen = true;
            if (attempt === 1) {
              process.stdout.write(
                ids.unprocessed.length > 0
                  ? `verify: waiting for ${ids.unprocessed.length} event(s) to be applied`
                  : 'verify: waiting for the two databases to agree (events applied after the write_db snapshot)',
              );
            } else process.stdout.write('.');
          } finally {
            await write.query(sql.typeAlias('void')`COMMIT`);
            await read.query(sql.typeAlias('void')`COMMIT`);
          }
          await new Promise((r) => setTimeout(r, 250));
        }
      }),
    );
    // Outside the snapshot transactions (read only); a result that cannot be recorded is still the result.
    await recordVerifyRun(readDb, { started_at: started, ...run }).catch((err: unknown) => console.error(`verify: could not record the result in read_db: ${(err as Error).message}`));
    return code;
  } finally {
    await Promise.allSettled([writeDb.end(), readDb.end()]);
  }
}

/** The waiting line's dots are open until the next line ends them. */
let progressOpen = false;
function say(line: string): void {
  if (progressOpen) process.stdout.write('\n');
  progressOpen = false;
  console.log(line);
}

const list = (ids: number[]) => `${ids.slice(0, 20).join(', ')}${ids.length > 20 ? ` … (${ids.length - 20} more)` : ''}`;

function report(diffs: Difference[], events: number, ids: EventIdComparison): number {
  if (ids.parked.length > 0) {
    say(`verify: ${ids.parked.length} parked event(s), never applied by an operator's decision, are counted as if applied: ${list(ids.parked.map((p) => p.id))}`);
  }
  if (ids.failed.length > 0) {
    say(`verify: ${ids.failed.length} event(s) failed for good and wait for a decision (npm run events -- list; replay after a fix, or park): ${list(ids.failed)}`);
  }
  if (diffs.length === 0 && ids.failed.length === 0) {
    say(`verify: OK — every view equals its recomputation from write_db; ${events} events, each applied once${ids.parked.length > 0 ? ' or parked' : ''}`);
    return 0;
  }
  if (diffs.length === 0) return 1;
  const rows = [['view', 'key', 'column', 'expected', 'actual'], ...diffs.slice(0, 200).map((d) => [d.view, d.key, d.column, d.expected, d.actual])];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  say(`verify: ${diffs.length} difference(s) between the read model and the recomputation:\n`);
  rows.forEach((r, i) => {
    console.log(r.map((c, j) => c.padEnd(widths[j]!)).join('  '));
    if (i === 0) console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  });
  if (diffs.length > 200) console.log(`… and ${diffs.length - 200} more`);
  say('\nrun `npm run rebuild` to recompute the read model from write_db');
  return 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`verify: ${(err as Error).message}`);
    process.exit(2);
  },
);
