import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from './logger.js';

/**
 * Redis clients by role. Workers (blocking commands) must wait out an outage:
 * maxRetriesPerRequest null, as BullMQ requires. Producers and probes fail
 * fast so a dead Redis is noticed (and nothing is marked published), not buffered.
 */
export function createRedis(url: string, role: 'worker' | 'producer', log: Logger, name: string): Redis {
  const options: RedisOptions =
    role === 'worker'
      ? { maxRetriesPerRequest: null, enableReadyCheck: true }
      : { maxRetriesPerRequest: 1, enableOfflineQueue: false, connectTimeout: 2000 };
  const redis = new Redis(url, {
    ...options,
    connectionName: name,
    // Capped backoff; ioredis keeps reconnecting forever.
    retryStrategy: (times) => Math.min(50 * 2 ** times, 2000),
  });
  let down = false;
  redis.on('error', (err: Error) => {
    if (!down) log.warn({ err: err.message, redis: name }, 'redis connection error');
    down = true;
  });
  redis.on('ready', () => {
    if (down) log.info({ redis: name }, 'redis connection restored');
    down = false;
  });
  return redis;
}

/** BullMQ needs noeviction: an evicted job key is a lost event until the reconciler notices. */
export async function checkEvictionPolicy(redis: Redis, log: Logger): Promise<void> {
  try {
    if (redis.status !== 'ready') {
      // A fail-fast client refuses commands until connected; give it a moment.
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('Redis not ready within 5 s')), 5000);
        redis.once('ready', () => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    const reply = (await redis.config('GET', 'maxmemory-policy')) as string[];
    const policy = reply[1];
    if (policy !== 'noeviction') {
      log.warn({ policy }, 'Redis maxmemory-policy should be noeviction; evicted jobs are only recovered by the reconciler');
    }
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'could not read Redis maxmemory-policy (CONFIG may be disabled)');
  }
}
