import { configOrExit } from '../lib/lifecycle.js';
import { commandLine } from '../lib/cli.js';
import { createQueues } from '../lib/queue.js';
import { createRedis } from '../lib/redis.js';
import { createLogger } from '../lib/logger.js';
import { createDb } from '../db/pool.js';
import { replayAllFailed } from '../workers/dead-letters.js';

/**
 * npm run replay-failed: every event that failed for good goes back to the
 * workers (the same as `npm run events -- replay --all`). Safe at any time: a
 * replayed event that was applied meanwhile is skipped by processed_events.
 */
const USAGE = `usage: npm run replay-failed

Sends every event that failed for good (every dead letter waiting for a
decision, and every job in BullMQ's failed set) back to the workers; the same
as npm run events -- replay --all. Safe at any time.`;

async function main(): Promise<void> {
  commandLine('replay-failed', USAGE, {});
  const config = configOrExit('replay-failed', { findRunning: true });
  const log = createLogger('warn', 'replay-failed');
  const readDb = createDb(config.READ_DATABASE_URL, { name: 'replay-failed', max: 2, log });
  const redis = createRedis(config, 'worker', log, 'replay-failed');
  const queues = createQueues(config, redis);
  queues.on('error', () => undefined);
  try {
    console.log(`replayed ${await replayAllFailed({ readDb, queues, config })} failed job(s)`);
  } finally {
    await queues.close();
    redis.disconnect();
    await readDb.end();
  }
}

main().catch((err: unknown) => {
  console.error(`replay-failed: ${(err as Error).message}`);
  process.exit(1);
});
