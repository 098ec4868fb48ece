import { configOrExit } from '../lib/lifecycle.js';
import { commandLine } from '../lib/cli.js';
import { rebuild } from '../db/rebuild.js';

const USAGE = `usage: npm run rebuild

Recomputes every view of the read model from write_db and marks every event
of that snapshot processed (db/rebuild.ts). Safe while orders flow: workers
wait on a lock for its duration, readers see the old values until it commits.
Prints progress; about 20 s per million orders on a small machine.`;

/** npm run rebuild: recompute the read model from write_db; safe while orders flow (see db/rebuild.ts). */
async function main(): Promise<void> {
  commandLine('rebuild', USAGE, {});
  const config = configOrExit('rebuild', { findRunning: true });
  const tty = process.stderr.isTTY;
  let last = 0;
  const result = await rebuild(config.DATABASE_URL, config.READ_DATABASE_URL, (p) => {
    const now = Date.now();
    if (now - last < 250) return;
    last = now;
    const text = `rebuild: ${p.phase} ${p.rows}${p.total ? `/${p.total} (${Math.round((100 * p.rows) / p.total)}%)` : ' rows'}`;
    if (tty) process.stderr.write(`\r${text}\x1b[K`);
    else process.stderr.write(`${text}\n`);
  });
  if (tty) process.stderr.write('\r\x1b[K');
  const views = Object.entries(result.rows).map(([v, n]) => `${v} ${n}`).join(', ');
  console.log(`rebuild: done in ${result.seconds.toFixed(1)} s — ${result.events} events marked processed; rows: ${views}${result.deadLettersResolved > 0 ? `; ${result.deadLettersResolved} dead letter(s) resolved` : ''}`);
}

main().catch((err: unknown) => {
  console.error(`rebuild: ${(err as Error).message}`);
  process.exit(1);
});
