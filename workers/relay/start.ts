import type { Config } from '../../lib/config.js';
import type { Logger } from '../../lib/logger.js';
import { once, type Handle } from '../../lib/lifecycle.js';
import { createQueues } from '../../lib/queue.js';
import { checkEvictionPolicy, createRedis } from '../../lib/redis.js';
import { createDb, processPoolOptions } from '../../db/pool.js';
import { Relay } from './relay.js';
import { Reconciler } from './reconciler.js';
import { startMetricsPush } from '../../lib/metrics-push.js';
import { Loop } from '../../lib/loop.js';
import { prune } from '../../db/retention.js';
import client from 'prom-client';

export interface RelayHandle extends Handle {
  relay: Relay;
  reconciler: Reconciler;
}

/** Procfile `relay`: outbox → BullMQ, plus the reconciler (and pruning, when configured). Any number may run. */
export async function startRelay(config: Config, log: Logger): Promise<RelayHandle> {
  const registry = new client.Registry();
  const limits = processPoolOptions(config, log, registry);
  const writeDb = createDb(config.DATABASE_URL, { ...limits, name: 'relay', max: config.RELAY_POOL_SIZE });
  const readDb = createDb(config.READ_DATABASE_URL, { ...limits, name: 'relay-reconciler', max: config.RECONCILER_POOL_SIZE });
  const redis = createRedis(config, 'producer', log, 'relay');
  const queues = createQueues(config, redis);
  // Connection errors are already logged once per outage by createRedis.
  queues.on('error', (err) => log.debug({ err: err.message }, 'queue error'));
  await checkEvictionPolicy(redis, log).catch(() => undefined);

  const relayed = new client.Counter({ name: 'relay_events_relayed_total', help: 'Outbox events enqueued and marked published', registers: [registry] });
  const requeued = new client.Counter({ name: 'reconciler_events_requeued_total', help: 'Published events re-enqueued because Redis had lost their job', registers: [registry] });
  const watermark = new client.Gauge({ name: 'reconciler_watermark_event_id', help: 'Every outbox id at or below this is resolved (applied, or a dead letter)', registers: [registry] });
  const pending = new client.Gauge({ name: 'reconciler_pending_events', help: 'Events above the watermark the reconciler has seen unresolved (in flight, or lost)', registers: [registry] });
  const batchSize = new client.Histogram({ name: 'relay_batch_size', help: 'Events per relay batch (one addBulk, one write_db transaction)', buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000], registers: [registry] });

  const relay = new Relay(writeDb, queues, redis, config, log, (n) => {
    relayed.inc(n);
    batchSize.observe(n);
  });
  const reconciler = new Reconciler(writeDb, readDb, queues, redis, config, log);
  relay.start();
  const stopPush = startMetricsPush(redis, config.QUEUE_PREFIX, 'relay', registry, log);

  // One tick at a time: the reconciler keeps its cursor in memory.
  const reconciling = new Loop({
    name: 'reconciler',
    log,
    intervalMs: config.RECONCILE_INTERVAL_MS,
    work: async () => {
      const r = await reconciler.tick();
      requeued.inc(r.requeued);
      watermark.set(r.watermark);
      pending.set(r.pending);
      return false;
    },
  }).start();
  const pruning =
    config.PRUNE_INTERVAL_MS > 0
      ? new Loop({
          name: 'prune',
          log,
          intervalMs: config.PRUNE_INTERVAL_MS,
          work: async () => {
            const r = await prune({ writeDb, readDb, keepMs: config.PRUNE_KEEP_MS, shouldStop: () => pruning?.stopped ?? true });
            if (r.outbox > 0) log.info(r, 'pruned outbox and processed_events');
            return false;
          },
        }).start()
      : undefined;

  const stop = once(async () => {
    await stopPush();
    await Promise.all([relay.stop(), reconciling.stop(), pruning?.stop()]);
    await queues.close().catch(() => undefined);
    redis.disconnect();
    await Promise.allSettled([writeDb.end(), readDb.end()]);
  });
  return { relay, reconciler, stop };
}
