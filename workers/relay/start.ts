import type { Config } from '../../lib/config.js';
import type { Logger } from '../../lib/logger.js';
import { once, type Handle } from '../../lib/lifecycle.js';
import { createQueue } from '../../lib/queue.js';
import { checkEvictionPolicy, createRedis } from '../../lib/redis.js';
import { createPool } from '../../db/pool.js';
import { Relay } from './relay.js';
import { Reconciler } from './reconciler.js';

export interface RelayHandle extends Handle {
  relay: Relay;
  reconciler: Reconciler;
}

/** Procfile `relay`: outbox → BullMQ, plus the reconciler. Any number may run. */
export async function startRelay(config: Config, log: Logger): Promise<RelayHandle> {
  const writePool = createPool(config.DATABASE_URL, 2, log, 'relay');
  const readPool = createPool(config.READ_DATABASE_URL, 1, log, 'relay-reconciler');
  const redis = createRedis(config.REDIS_URL, 'producer', log, 'relay');
  const queue = createQueue(config, redis);
  // Connection errors are already logged once per outage by createRedis.
  queue.on('error', (err) => log.debug({ err: err.message }, 'queue error'));
  await checkEvictionPolicy(redis, log).catch(() => undefined);

  const relay = new Relay(writePool, queue, config, log);
  const reconciler = new Reconciler(writePool, readPool, queue, redis, config, log);
  await relay.start();

  let reconciling: Promise<unknown> = Promise.resolve();
  const timer = setInterval(() => {
    reconciling = reconciler.tick().catch((err: unknown) => log.warn({ err: (err as Error).message }, 'reconcile tick failed'));
  }, config.RECONCILE_INTERVAL_MS);

  const stop = once(async () => {
    clearInterval(timer);
    await relay.stop();
    await reconciling;
    await queue.close().catch(() => undefined);
    redis.disconnect();
    await Promise.allSettled([writePool.end(), readPool.end()]);
  });
  return { relay, reconciler, stop };
}
