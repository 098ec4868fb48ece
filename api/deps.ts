import type { Redis } from 'ioredis';
import type { Config } from '../lib/config.js';
import type { Logger } from '../lib/logger.js';
import type { Pool } from '../db/pool.js';
import type { ApiMetrics } from './metrics.js';

/** Everything a request handler may use, built once by the web process. */
export interface Deps {
  config: Config;
  log: Logger;
  writePool: Pool;
  readPool: Pool;
  /** Fail-fast client (no offline queue) used for readiness and queue counts. */
  redis: Redis;
  metrics: ApiMetrics;
}
