import { configOrExit } from '../lib/lifecycle.js';
import { commandLine, numberOption } from '../lib/cli.js';
import { createLogger } from '../lib/logger.js';
import { createDb } from '../db/pool.js';
import { prune } from '../db/retention.js';

const USAGE = `usage: npm run prune [-- --keep-hours H]

Deletes outbox and processed_events rows of events that are applied, settled
and older than H hours (default: PRUNE_KEEP_MS, 7 days), below a floor proven
safe (docs/operations.md, Retention). Safe while the system runs.`;

async function main(): Promise<number> {
  const { values } = commandLine('prune', USAGE, { 'keep-hours': { type: 'string' } });
  const config = configOrExit('prune', { findRunning: true });
  const keepMs = values['keep-hours'] === undefined ? config.PRUNE_KEEP_MS : Math.round(numberOption('prune', 'keep-hours', values['keep-hours'], 0, 0, 1_000_000) * 3_600_000);
  const log = createLogger('warn', 'prune');
  const writeDb = createDb(config.DATABASE_URL, { name: 'prune', max: 1, log });
  const readDb = createDb(config.READ_DATABASE_URL, { name: 'prune', max: 1, log });
  const tty = process.stderr.isTTY;
  const started = performance.now();
  try {
    const r = await prune({
      writeDb,
      readDb,
      keepMs,
      onProgress: (p) => {
        const s = (performance.now() - started) / 1000;
        const text = `prune: ${p.outbox} outbox rows deleted (floor ${p.floor}, ${Math.round(p.outbox / Math.max(s, 0.001))}/s)`;
        process.stderr.write(tty ? `\r${text}\x1b[K` : `${text}\n`);
      },
    });
    if (tty) process.stderr.write('\r\x1b[K');
    const why = { watermark: "the reconciler's watermark", dead_letter: 'a dead letter waiting for a decision', age: `--keep-hours ${keepMs / 3_600_000}`, nothing_to_prune: 'nothing older to prune', floor_above_bounds: 'a floor a full rebuild raised: the rows at or below it go as they pass --keep-hours' }[r.limitedBy];
    console.log(`prune: ${r.outbox} outbox rows and their processed_events rows deleted; every event id ≤ ${r.floor} counts as processed (limited by ${why})`);
    return 0;
  } finally {
    await Promise.allSettled([writeDb.end(), readDb.end()]);
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`prune: ${(err as Error).message}`);
    process.exit(1);
  },
);
