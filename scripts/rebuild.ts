import { configOrExit } from '../lib/lifecycle.js';
import { rebuild } from '../db/rebuild.js';

/** npm run rebuild: recompute the read model from write_db; safe while orders flow (see db/rebuild.ts). */
async function main(): Promise<void> {
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
