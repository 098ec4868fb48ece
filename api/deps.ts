import type { RedisClient } from '../lib/redis.js';
import type { Config } from '../lib/config.js';
import type { Logger } from '../lib/logger.js';
import type { Db } from '../db/pool.js';
import type { ApiMetrics } from './metrics.js';
import type { ConsistencyWaiter } from './consistency.js';
import type { EventQueues } from '../lib/queue.js';
import type { OrderIntake } from '../db/orders.js';
import type { AuthThrottle } from './auth.js';
import type { AdminJobs } from './admin-jobs.js';

/** Everything a request handler may use, built once by the web process. */
export interface Deps {
  config: Config;
  log: Logger;
  writeDb: Db;
  /** POST /orders without an Idempotency-Key goes through here (group commit). */
  orders: OrderIntake;
  readDb: Db;
  /** Fail-fast client (no offline queue) used for readiness and queue counts. */
  redis: RedisClient;
  metrics: ApiMetrics;
  /** The /metrics text, shared by concurrent scrapes (metricsSnapshot). */
  metricsText: () => Promise<string>;
  /** For queue counts on /metrics and Bull Board. */
  queues: EventQueues;
  consistency: ConsistencyWaiter;
  /** Failed admin logins per client address (Bull Board and /admin/events). */
  authThrottle: AuthThrottle;
  /** verify and rebuild started from the admin view (child processes). */
  jobs: AdminJobs;
  /** One connection to each database for /readyz, apart from the request pools: a busy pool is not an outage. */
  probes: { writeDb: Db; readDb: Db };
}
