import type { Config } from '../../lib/config.js';
import type { Logger } from '../../lib/logger.js';
import { once, type Handle } from '../../lib/lifecycle.js';
import { createQueue } from '../../lib/queue.js';
import { checkEvictionPolicy, createRedis } from '../../lib/redis.js';
import { createPool } from '../../db/pool.js';
import { Relay } from './relay.js';
import { Reconciler } from './reconciler.js';
import { startMetricsPush } from '../../lib/metrics-push.js';
import client from 'prom-client';

export interface RelayHandle extends Handle {
  relay: Relay;
  reconciler: Reconciler;
}

/** Procfile `relay`: outbox → BullMQ, plus the reconciler. Any number may run. */
export async function startRelay(config: Config, log: Logger): Promise<RelayHandle> {
  const writePool = createPool(config.DATABASE_URL, 2, log, 'relay');
  const readPool = createPool(config.READ_DATABASE_URL, 1, log, 'relay-reconciler');
  const redis = createRedis(config, 'producer', log, 'relay');
  const queue = createQueue(config, redis);
  // Connection errors are already logged once per outage by createRedis.
  queue.on('error', (err) => log.debug({ err: err.message }, 'queue error'));
  await checkEvictionPolicy(redis, log).catch(() => undefined);

  const registry = new client.Registry();
  const relayed = new client.Counter({ name: 'relay_events_relayed_total', help: 'Outbox events enqueued and marked published', registers: [registry] });
  const requeued = new client.Counter({ name: 'reconciler_events_requeued_total', help: 'Published events re-enqueued because Redis had lost their job', registers: [registry] });
  const watermark = new client.Gauge({ name: 'reconciler_watermark_event_id', help: 'Every outbox id at or below this is applied', registers: [registry] });

  const batchSize = new client.Histogram({ name: 'relay_batch_size', help: 'Events per relay batch (one addBulk, one write_db transaction)', buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000], registers: [registry] });

  const relay = new Relay(writePool, queue, config, log, (n) => {
    relayed.inc(n);
    batchSize.observe(n);
  });
  const reconciler = new Reconciler(writePool, readPool, queue, redis, config, log);
  await relay.start();
  const stopPush = startMetricsPush(redis, config.QUEUE_PREFIX, 'relay', registry, log);

  let reconciling: Promise<unknown> = Promise.resolve();
  const timer = setInterval(() => {
    reconciling = reconciler.tick().then(
      (r) => {
        requeued.inc(r.requeued);
        watermark.set(r.watermark);
      },
      (err: unknown) => log.warn({ err: (err as Error).message }, 'reconcile tick failed'),
    );
  }, config.RECONCILE_INTERVAL_MS);

  const stop = once(async () => {
    clearInterval(timer);
    await stopPush();
    await relay.stop();
    await reconciling;
    await queue.close().catch(() => undefined);
    redis.disconnect();
    await Promise.allSettled([writePool.end(), readPool.end()]);
  });
  return { relay, reconciler, stop };
}
