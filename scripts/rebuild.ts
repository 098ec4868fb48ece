import { configOrExit } from '../lib/lifecycle.js';
import { commandLine, fail, numberOption } from '../lib/cli.js';
import { rebuild, type RebuildProgress } from '../db/rebuild.js';
import { progressUnit } from '../db/status.js';
import { PROJECTIONS } from '../workers/projector/projections/index.js';

const USAGE = `usage: npm run rebuild [-- --dry-run] [-- --projection TABLE ...] [-- --parallel N]

Recomputes the read model from a snapshot of write_db into shadow tables
while the projectors keep applying live events, catches the shadows up with
the events applied since, compares each with the recomputation (a checksum
per table), and swaps them in with one short transaction: readers never see
a partial table, projectors pause only for the swap. See docs/rebuild.md.
Safe to interrupt (even kill -9) and run again.

  --dry-run           build and compare, then drop the shadows; nothing live changes
  --projection TABLE  rebuild this view only (repeatable): ${PROJECTIONS.map((p) => p.table).join(', ')}
  --parallel N        recomputations at once, each a write_db connection on the same snapshot
                      (default: 1 while orders flow, leaving a core to the pipeline; else 2)`;

const num = (n: number) => Math.round(n).toLocaleString('en-US');

function line(p: RebuildProgress): string {
  const of = p.total !== undefined ? `/${num(p.total)}` : '';
  const rate = p.rate !== undefined ? `, ${num(p.rate)}/s` : '';
  const eta = p.etaSeconds !== undefined ? `, ETA ${p.etaSeconds.toFixed(0)} s` : '';
  const unit = progressUnit(p.phase);
  return `rebuild: ${p.phase}${p.table ? ` ${p.table}` : ''}${unit ? ` ${num(p.rows)}${of} ${unit}` : ''}${rate}${eta}`;
}

/** npm run rebuild: blue/green rebuild of the read model (db/rebuild.ts); safe while orders flow. */
async function main(): Promise<void> {
  const { values } = commandLine('rebuild', USAGE, { 'dry-run': { type: 'boolean' }, projection: { type: 'string', multiple: true }, parallel: { type: 'string' } });
  const parallel = values.parallel === undefined ? undefined : Math.floor(numberOption('rebuild', 'parallel', values.parallel, 2, 1, 8));
  const only = values.projection ?? [];
  const unknown = only.find((t) => !PROJECTIONS.some((p) => p.table === t));
  if (unknown !== undefined) fail('rebuild', `--projection takes one of ${PROJECTIONS.map((p) => p.table).join(', ')} (got "${unknown}")`);
  const config = configOrExit('rebuild', { findRunning: true });
  const tty = process.stderr.isTTY;
  let last = 0;
  let lastPhase = '';
  const result = await rebuild(
    config.DATABASE_URL,
    config.READ_DATABASE_URL,
    (p) => {
      const now = Date.now();
      // Every phase change is printed (scripts and tests follow them); progress within one at most 4 times a second.
      if (now - last < 250 && p.phase === lastPhase) return;
      last = now;
      lastPhase = p.phase;
      if (tty) process.stderr.write(`\r${line(p)}\x1b[K`);
      else process.stderr.write(`${line(p)}\n`);
    },
    PROJECTIONS,
    { only, dryRun: values['dry-run'] ?? false, parallel },
  );
  if (tty) process.stderr.write('\r\x1b[K');
  for (const [table, c] of Object.entries(result.checksums)) {
    console.log(`rebuild: ${table.padEnd(24)} ${String(c.rows).padStart(9)} rows  checksum ${BigInt.asUintN(64, BigInt(c.actual)).toString(16).padStart(16, '0')}  ${c.match ? 'equal to the recomputation' : 'DIFFERS'}`);
  }
  const views = Object.entries(result.rows).map(([v, n]) => `${v} ${n}`).join(', ');
  if (!result.swapped) {
    console.log(`rebuild: dry run done in ${result.seconds.toFixed(1)} s — shadows built, compared and dropped; nothing swapped (${result.caughtUp} events caught up)`);
    return;
  }
  console.log(
    `rebuild: done in ${result.seconds.toFixed(1)} s — swap ${result.swapMs.toFixed(0)} ms; ${result.caughtUp} events caught up, ${result.events} events marked processed, floor ${result.floor}; rows: ${views}${result.deadLettersResolved > 0 ? `; ${result.deadLettersResolved} dead letter(s) resolved` : ''}`,
  );
}

main().catch((err: unknown) => {
  console.error(`rebuild: ${(err as Error).message}`);
  process.exit(1);
});
