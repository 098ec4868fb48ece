import { UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Config } from '../../lib/config.js';
import type { Logger } from '../../lib/logger.js';
import { once, type Handle } from '../../lib/lifecycle.js';
import type { EventJobData } from '../../lib/queue.js';
import { createRedis } from '../../lib/redis.js';
import { createPool } from '../../db/pool.js';
import { applyEvents, type ProjectionEvent } from './apply.js';
import { Batcher } from '../../lib/batcher.js';
import { deltasFor, InvalidEventError } from './deltas.js';
import { createProjectorMetrics, type ProjectorMetrics } from './metrics.js';
import { startMetricsPush } from '../../lib/metrics-push.js';

export interface ProjectorHandle extends Handle {
  worker: Worker<EventJobData>;
  metrics: ProjectorMetrics;
}

/**
 * Procfile `worker`: BullMQ jobs → read model. Jobs are gathered into
 * batches (see Batcher) so one read_db transaction applies hundreds of events;
 * each job completes only after its batch committed.
 */
export async function startProjector(config: Config, log: Logger): Promise<ProjectorHandle> {
  const pool = createPool(config.READ_DATABASE_URL, 4, log, 'worker');
  const metrics = createProjectorMetrics();

  const batcher = new Batcher<ProjectionEvent, 'applied' | 'duplicate'>(
    async (events) => {
      try {
        const { applied, duplicates } = await applyEvents(pool, events);
        metrics.applied.inc(applied.length);
        metrics.duplicates.inc(duplicates.length);
        metrics.batchSize.observe(events.length);
        const done = new Set(applied);
        return events.map((e) => (done.has(e.event_id) ? 'applied' : 'duplicate'));
      } catch (err) {
        metrics.failed.inc();
        log.warn({ err, events: events.length }, 'projection batch failed; its jobs will be retried');
        throw err;
      }
    },
    config.PROJECTOR_BATCH_SIZE,
    config.PROJECTOR_BATCH_WAIT_MS,
  );

  const processor = async (job: Job<EventJobData>): Promise<string> => {
    let deltas;
    try {
      deltas = deltasFor(job.data.topic, job.data.payload);
    } catch (err) {
      // A malformed event will never apply: fail it now, keep it in the failed set.
      if (err instanceof InvalidEventError) throw new UnrecoverableError(err.message);
      throw err;
    }
    const outcome = await batcher.submit({ event_id: job.data.event_id, deltas });
    if (outcome === 'applied') {
      const created = Date.parse(job.data.created_at);
      if (Number.isFinite(created)) metrics.lag.observe(Math.max(0, (Date.now() - created) / 1000));
    }
    return outcome;
  };

  const worker = new Worker<EventJobData>(config.QUEUE_NAME, processor, {
    connection: createRedis(config, 'worker', log, 'worker'),
    prefix: config.QUEUE_PREFIX,
    concurrency: config.WORKER_CONCURRENCY,
    stalledInterval: config.STALLED_INTERVAL_MS,
    lockDuration: Math.max(config.STALLED_INTERVAL_MS, 5000),
    maxStalledCount: 1000,
    autorun: true,
  });
  worker.on('failed', (job, err) => {
    log.warn({ jobId: job?.id, attempts: job?.attemptsMade, err: err.message }, 'job failed');
  });
  worker.on('error', (err) => log.warn({ err: err.message }, 'worker error'));
  await worker.waitUntilReady();
  const pushRedis = createRedis(config, 'producer', log, 'worker-metrics');
  const stopPush = startMetricsPush(pushRedis, config.QUEUE_PREFIX, 'worker', metrics.registry, log);
  log.info({ queue: config.QUEUE_NAME, concurrency: config.WORKER_CONCURRENCY }, 'worker started');

  const stop = once(async () => {
    // close() stops fetching and waits for active jobs, whose batches drain through the Batcher.
    const closing = worker.close();
    await batcher.drain();
    await closing;
    await stopPush();
    pushRedis.disconnect();
    await pool.end();
  });
  return { worker, metrics, stop };
}
