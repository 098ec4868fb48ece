import { configOrExit } from '../lib/lifecycle.js';
import { createQueue } from '../lib/queue.js';
import { createRedis } from '../lib/redis.js';
import { createLogger } from '../lib/logger.js';

/**
 * npm run replay-failed: move every job in the failed set back to waiting.
 * Safe at any time: a replayed event that was applied meanwhile is skipped by processed_events.
 */
async function main(): Promise<void> {
  const config = configOrExit('replay-failed');
  const log = createLogger(config.LOG_LEVEL, 'replay-failed');
  const redis = createRedis(config, 'worker', log, 'replay-failed');
  const queue = createQueue(config, redis);
  try {
    const { failed = 0 } = await queue.getJobCounts('failed');
    // retryJobs moves the whole failed set back to waiting, 1000 jobs per step.
    await queue.retryJobs({ state: 'failed', count: 1000 });
    console.log(`replayed ${failed} failed job(s)`);
  } finally {
    await queue.close();
    redis.disconnect();
  }
}

main().catch((err: unknown) => {
  console.error(`replay-failed: ${(err as Error).message}`);
  process.exit(1);
});
