import { parseArgs } from 'node:util';
import { configOrExit } from '../lib/lifecycle.js';
import { createLogger } from '../lib/logger.js';
import { createDb } from '../db/pool.js';
import { prune } from '../db/retention.js';

const USAGE = `usage: npm run prune [-- --keep-hours H]

Deletes outbox and processed_events rows of events that are applied, settled
and older than H hours (default: PRUNE_KEEP_MS, 7 days), below a floor proven
safe (docs/operations.md, Retention). Safe while the system runs.`;

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({ options: { 'keep-hours': { type: 'string' }, help: { type: 'boolean', short: 'h' } } }));
  } catch (err) {
    console.error(`prune: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const config = configOrExit('prune', { findRunning: true });
  let keepMs = config.PRUNE_KEEP_MS;
  if (values['keep-hours'] !== undefined) {
    const h = Number(values['keep-hours']);
    if (!/^\d+(\.\d+)?$/.test(values['keep-hours']) || !Number.isFinite(h)) {
      console.error('prune: --keep-hours takes a number of hours, e.g. 24');
      return 2;
    }
    keepMs = Math.round(h * 3_600_000);
  }
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
    const why = { watermark: "the reconciler's watermark", dead_letter: 'a dead letter waiting for a decision', age: `--keep-hours ${keepMs / 3_600_000}`, nothing_to_prune: 'nothing older to prune' }[r.limitedBy];
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
