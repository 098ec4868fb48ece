import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { Config } from './config.js';
import type { Logger } from './logger.js';

/** A single Redis or a Redis Cluster: every Redis user in the system takes either. */
export type RedisClient = Redis | Cluster;

/** Cluster seed nodes from "host:port,host:port". */
export function clusterNodes(spec: string): { host: string; port: number }[] {
  return spec.split(',').map((hp) => {
    const i = hp.lastIndexOf(':');
    return { host: hp.slice(0, i), port: Number(hp.slice(i + 1)) };
  });
}

/**
 * Redis clients by role. Workers (blocking commands) must wait out an outage:
 * maxRetriesPerRequest null, as BullMQ requires. Producers and probes fail
 * fast so a dead Redis is noticed (and nothing is marked published), not buffered.
 * With REDIS_CLUSTER_NODES set, the same roles on an ioredis Cluster.
 */
export function createRedis(
  config: Pick<Config, 'REDIS_URL' | 'REDIS_CLUSTER_NODES'> & Partial<Pick<Config, 'REDIS_TLS_INSECURE'>>,
  role: 'worker' | 'producer',
  log: Logger,
  name: string,
): RedisClient {
  const options: RedisOptions = {
    ...(role === 'worker' ? { maxRetriesPerRequest: null, enableReadyCheck: true } : { maxRetriesPerRequest: 1, enableOfflineQueue: false, connectTimeout: 2000 }),
    ...(config.REDIS_TLS_INSECURE && config.REDIS_URL.startsWith('rediss://') ? { tls: { rejectUnauthorized: false } } : {}),
  };
  // Capped backoff; ioredis keeps reconnecting forever.
  const retryStrategy = (times: number) => Math.min(50 * 2 ** times, 2000);
  const redis: RedisClient = config.REDIS_CLUSTER_NODES
    ? new Cluster(clusterNodes(config.REDIS_CLUSTER_NODES), {
        enableOfflineQueue: options.enableOfflineQueue ?? true,
        clusterRetryStrategy: retryStrategy,
        redisOptions: { ...options, connectionName: name },
      })
    : new Redis(config.REDIS_URL, { ...options, connectionName: name, retryStrategy });
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
export async function checkEvictionPolicy(redis: RedisClient, log: Logger): Promise<void> {
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
    const nodes = redis instanceof Cluster ? redis.nodes('master') : [redis];
    for (const node of nodes) {
      const reply = (await node.config('GET', 'maxmemory-policy')) as string[];
      const policy = reply[1];
      if (policy !== 'noeviction') {
        log.warn({ policy, node: `${node.options.host}:${node.options.port}` }, 'Redis maxmemory-policy should be noeviction; evicted jobs are only recovered by the reconciler');
      }
    }
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'could not read Redis maxmemory-policy (CONFIG may be disabled)');
  }
}
