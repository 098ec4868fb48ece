import { DelayedError, UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Config } from '../../lib/config.js';
import type { Logger } from '../../lib/logger.js';
import { once, type Handle } from '../../lib/lifecycle.js';
import { createQueues, isMultiEvent, jobIdFor, jobIdForEvents, queueNames, toJob, type EventJobData, type EventsJobData, type JobData } from '../../lib/queue.js';
import { createRedis } from '../../lib/redis.js';
import { createDb, processPoolOptions, describeError, isBusy, pgCode } from '../../db/pool.js';
import { recordDeadLetter } from '../../db/dead-letters.js';
import { applyIsolating, type Outcome, type ProjectionEvent } from './apply.js';
import { Batcher } from '../../lib/batcher.js';
import { orderEvent, InvalidEventError } from './events.js';
import { createProjectorMetrics, type ProjectorMetrics } from './metrics.js';
import { startMetricsPush } from '../../lib/metrics-push.js';
import { Sleeper } from '../../lib/sleeper.js';
import { inBatchSpan, traceJobs, traced } from '../../lib/tracing.js';

export interface ProjectorHandle extends Handle {
  /** One BullMQ worker per partition consumed. */
  workers: Worker<JobData>[];
  metrics: ProjectorMetrics;
}

/** Tries of a batch that failed because the database was busy (deadlocks, timeouts) before its jobs spend an attempt. */
const BUSY_TRIES = 10;

/** Thrown to the jobs of a batch that could not be applied before the worker stopped. */
class StoppingError extends Error {
  override name = 'StoppingError';
}

/**
 * Procfile `worker`: BullMQ jobs → read model. Jobs are gathered into
 * batches (see Batcher) so one read_db transaction applies hundreds of events;
 * each job completes only after its batch committed.
 *
 * Failures, by kind:
 *  - an event that can never apply (a malformed payload, or a write the
 *    database refuses for what it says about the data: isDataError): the
 *    batch is split until only that event fails (applyIsolating); the others
 *    are applied. The event is recorded in read_db's dead_letters and its job
 *    fails at once.
 *  - the database busy (deadlocks, timeouts) past BUSY_TRIES: the jobs fail
 *    this attempt and BullMQ retries them with backoff; after the last
 *    attempt the event is a dead letter too.
 *  - anything else — read_db away (stopped, restarting, refusing
 *    connections), read-only after a failover, a permission or a table
 *    missing, an error nobody foresaw: the batch is retried with capped
 *    backoff for as long as it takes, its jobs staying active (BullMQ keeps
 *    renewing their locks). No attempt is spent, nothing is condemned.
 *  - SIGTERM while a batch cannot be applied: its jobs are moved back to
 *    delayed (no attempt spent), so nothing is lost and the stop is quick.
 */
export async function startProjector(config: Config, log: Logger): Promise<ProjectorHandle> {
  const metrics = createProjectorMetrics();
  const db = createDb(config.READ_DATABASE_URL, { ...processPoolOptions(config, log, metrics.registry), name: 'worker', max: config.WORKER_POOL_SIZE });
  const sleeper = new Sleeper();

  const applyWithRetry = async (events: ProjectionEvent[]): Promise<Outcome[]> => {
    for (let attempt = 1; ; attempt++) {
      try {
        const outcomes = await inBatchSpan('projector.batch', events, () => applyIsolating(db, events), { attempt }); // tracing: no-op when off
        metrics.batchSize.observe(events.length);
        for (const o of outcomes) {
          if (o === 'applied') metrics.applied.inc();
          else if (o === 'duplicate') metrics.duplicates.inc();
          else if (o === 'parked') metrics.parkedSkipped.inc();
          else metrics.poison.inc();
        }
        return outcomes;
      } catch (err) {
        metrics.failed.inc();
        if (sleeper.stopped) throw new StoppingError('worker stopping; batch not applied');
        const busy = isBusy(err);
        if (busy && attempt >= BUSY_TRIES) throw err;
        // One line per outage, not one per retry.
        if (attempt === 1 || attempt % 20 === 0) {
          log.warn({ err: describeError(err), code: pgCode(err), events: events.length, attempt }, busy ? 'read_db busy; retrying the batch' : 'read_db unavailable or refusing the work; retrying the batch');
        }
        await sleeper.sleep(Math.min(100 * 2 ** attempt, 5000));
      }
    }
  };
  const batcher = new Batcher<ProjectionEvent, Outcome>(applyWithRetry, config.PROJECTOR_BATCH_SIZE, config.PROJECTOR_BATCH_WAIT_MS, config.PROJECTOR_BATCHES_IN_FLIGHT);

  const deadLetter = async (job: Job<JobData>, data: EventJobData, err: Error) => {
    const error = describeError(err);
    log.error({ eventId: data.event_id, topic: data.topic, err: error }, 'event failed for good; recorded as a dead letter');
    await recordDeadLetter(db, { event_id: data.event_id, topic: data.topic, payload: data.payload, error, attempts: job.attemptsMade + 1 }).catch((e: unknown) =>
      // The reconciler records it from the failed set later.
      log.warn({ eventId: data.event_id, err: (e as Error).message }, 'could not record the dead letter now'),
    );
  };

  const observeLag = (data: EventJobData) => {
    const created = Date.parse(data.created_at);
    if (Number.isFinite(created)) metrics.lag.observe(Math.max(0, (Date.now() - created) / 1000));
  };

  // Events of a several-event job that cannot be applied with it go back to the queue as jobs of their own.
  const splitRedis = createRedis(config, 'producer', log, 'worker-split');
  const splitQueues = createQueues(config, splitRedis);
  splitQueues.on('error', (err) => log.debug({ err: err.message }, 'queue error'));
  const splitOut = (events: EventJobData[]) =>
    Promise.all(splitQueues.split(events, (e) => e.event_id).map(([queue, part]) => queue.addBulk(part.map((e) => toJob(config, { id: e.event_id, ...e })))));

  /**
   * A job of several events (a relay batch): every event goes through the
   * same Batcher as single events. Those that cannot be applied now or ever
   * (a malformed payload, an event that fails alone, the database busy on
   * the job's last attempt) are split out as jobs of their own: each then
   * takes the single-event path (its own attempts, dead letter, failed set,
   * replay). So a poison event never holds back the others, and the failed
   * set lists single events, each with its error.
   */
  const processEvents = async (job: Job<JobData>, data: EventsJobData, token?: string): Promise<string> => {
    const ids = data.events.map((e) => String(e?.event_id));
    if (!ids.every((id) => /^\d+$/.test(id)) || ids.length === 0 || job.id !== jobIdForEvents(ids)) {
      log.error({ jobId: job.id }, 'refused a job whose id is not its events\'');
      throw new UnrecoverableError(`job ${job.id} is not the relay's job of its events`);
    }
    const invalid: EventJobData[] = [];
    const submitted: { data: EventJobData; outcome: Promise<Outcome> }[] = [];
    for (const e of data.events) {
      let event;
      try {
        event = orderEvent(e.topic, e.payload);
      } catch (err) {
        if (!(err instanceof InvalidEventError)) throw err;
        invalid.push(e);
        continue;
      }
      submitted.push({ data: e, outcome: batcher.submit(traced({ event_id: e.event_id, event })) }); // tracing: remembers this job's span for the batch's links
    }
    const settled = await Promise.allSettled(submitted.map((s) => s.outcome));
    const unapplied: EventJobData[] = [...invalid];
    let failure: unknown;
    settled.forEach((r, i) => {
      const e = submitted[i]!.data;
      if (r.status === 'rejected') {
        failure ??= r.reason;
        unapplied.push(e);
      } else if (r.value instanceof Error) unapplied.push(e);
      else if (r.value === 'applied') observeLag(e);
    });
    if (failure !== undefined) {
      if (failure instanceof StoppingError && token) {
        // The applied ones are duplicates when it comes back.
        await job.moveToDelayed(Date.now() + 1000, token);
        throw new DelayedError();
      }
      // Retried whole (the applied ones are duplicates then); on the last attempt, what is left goes on alone.
      if (job.attemptsMade + 1 < (job.opts.attempts ?? 1)) throw failure;
    }
    if (unapplied.length > 0) {
      await splitOut(unapplied);
      log.warn({ jobId: job.id, events: unapplied.map((e) => e.event_id) }, 'events split out of their job to go on alone');
    }
    return `${data.events.length - unapplied.length} of ${data.events.length}; split out ${unapplied.length}`;
  };

  const processor = async (job: Job<JobData>, token?: string): Promise<string> => {
    if (job.data && isMultiEvent(job.data)) return processEvents(job, job.data, token);
    const data = job.data;
    // Only the relay (and the reconciler, on its behalf) enqueues events, under the id it gives each one.
    // A job under any other id was added by hand (Bull Board, a script): refused, never recorded as processed.
    if (!/^\d+$/.test(String(data?.event_id)) || job.id !== jobIdFor(data.event_id)) {
      log.error({ jobId: job.id, eventId: data?.event_id }, 'refused a job whose id is not its event\'s');
      throw new UnrecoverableError(`job ${job.id} is not the relay's job of event ${data?.event_id}`);
    }
    let event;
    try {
      event = orderEvent(data.topic, data.payload);
    } catch (err) {
      if (!(err instanceof InvalidEventError)) throw err;
      await deadLetter(job, data, err);
      throw new UnrecoverableError(err.message);
    }
    let outcome: Outcome;
    try {
      outcome = await batcher.submit(traced({ event_id: data.event_id, event })); // tracing: remembers this job's span for the batch's links
    } catch (err) {
      if (err instanceof StoppingError && token) {
        // Back to the queue without spending an attempt; another worker (or this one, restarted) takes it.
        await job.moveToDelayed(Date.now() + 1000, token);
        throw new DelayedError();
      }
      if (job.attemptsMade + 1 >= (job.opts.attempts ?? 1)) await deadLetter(job, data, err as Error);
      throw err;
    }
    if (outcome instanceof Error) {
      await deadLetter(job, data, outcome);
      throw new UnrecoverableError(describeError(outcome));
    }
    if (outcome === 'applied') observeLag(data);
    return outcome;
  };

  // Every partition, or those WORKER_PARTITIONS names; all share the Batcher, so a batch mixes partitions.
  const names = queueNames(config);
  const partitions = config.WORKER_PARTITIONS ?? names.map((_, p) => p);
  const workers = partitions.map((p) => {
    // Tracing: a span per job that carries a traceparent (no-op when off).
    const worker = new Worker<JobData>(names[p]!, traceJobs(names[p]!, processor), {
      connection: createRedis(config, 'worker', log, `worker-${p}`),
      prefix: config.QUEUE_PREFIX,
      concurrency: config.WORKER_CONCURRENCY,
      stalledInterval: config.STALLED_INTERVAL_MS,
      lockDuration: Math.max(config.STALLED_INTERVAL_MS, 5000),
      maxStalledCount: 1000,
      autorun: true,
    });
    worker.on('failed', (job, err) => {
      if (err.name !== 'UnrecoverableError') log.warn({ jobId: job?.id, partition: p, attempts: job?.attemptsMade, err: err.message }, 'job attempt failed');
    });
    worker.on('error', (err) => log.warn({ err: err.message, partition: p }, 'worker error'));
    return worker;
  });
  await Promise.all(workers.map((w) => w.waitUntilReady()));
  const pushRedis = createRedis(config, 'producer', log, 'worker-metrics');
  const stopPush = startMetricsPush(pushRedis, config.QUEUE_PREFIX, 'worker', metrics.registry, log);
  log.info({ queues: partitions.map((p) => names[p]), concurrency: config.WORKER_CONCURRENCY }, 'worker started');

  const stop = once(async () => {
    // close() stops fetching and waits for active jobs, whose batches drain
    // through the Batcher; a batch waiting out a read_db outage gives up now.
    sleeper.stop();
    const closing = Promise.all(workers.map((w) => w.close()));
    await batcher.drain();
    // BullMQ's close() never resolves when it was called while Redis was
    // away (taskforcesh/bullmq#4656): bounded, so the process still exits.
    // Nothing is lost: jobs still active in Redis lose their lock and are
    // handed out again by the stalled-job check; processed_events skips the
    // ones this worker applied.
    const closed = await Promise.race([closing.then(() => true), new Promise<false>((r) => setTimeout(() => r(false), Math.min(5000, config.SHUTDOWN_TIMEOUT_MS / 2)).unref())]);
    if (!closed) log.warn('a BullMQ worker did not close (Redis away?); its active jobs return to the queue when their locks expire');
    await stopPush();
    pushRedis.disconnect();
    await splitQueues.close().catch(() => undefined);
    splitRedis.disconnect();
    await db.end();
  });
  return { workers, metrics, stop };
}
