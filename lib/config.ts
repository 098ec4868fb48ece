import { z } from 'zod';
import { maskUrls, SECRET_SETTINGS } from './redact.js';

/**
 * The one place the environment is read (12-factor). Every process calls
 * getConfig() once at start and passes the result down; a bad value throws a
 * ConfigError whose message is one line naming the variable.
 */
export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`${variable}: ${message}`);
    this.name = 'ConfigError';
  }
}

const int = (min: number, max: number) =>
  z
    .string()
    .regex(/^\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().int().min(min).max(max));

const pgUrl = z
  .string()
  .refine((v) => /^postgres(ql)?:\/\//.test(v) && URL.canParse(v), 'must be a postgres:// URL');
const redisUrl = z
  .string()
  .refine((v) => /^rediss?:\/\//.test(v) && URL.canParse(v), 'must be a redis:// URL');

const httpUrl = z
  .string()
  .refine((v) => /^https?:\/\//.test(v) && URL.canParse(v), 'must be an http:// or https:// URL');
const otlpProtocol = z.enum(['http/protobuf', 'http/json'], { message: 'must be http/protobuf or http/json (gRPC is not supported)' });

const schema = z.object({
  PORT: int(0, 65535).default(3000),
  DATABASE_URL: pgUrl.default('postgres://postgres@127.0.0.1:5432/write_db'),
  READ_DATABASE_URL: pgUrl.default('postgres://postgres@127.0.0.1:5432/read_db'),
  REDIS_URL: redisUrl.default('redis://127.0.0.1:6379'),
  /** Redis Cluster seed nodes, "host:port,host:port"; when set, every Redis user connects to the cluster and REDIS_URL is ignored. */
  REDIS_CLUSTER_NODES: z
    .string()
    .regex(/^[^,:\s]+:\d{1,5}(,[^,:\s]+:\d{1,5})*$/, 'must be host:port[,host:port...]')
    .optional(),
  /** When set, every PostgreSQL URL without an sslmode gets this one: `require`, or `no-verify` for servers with certificates no CA vouches for (Heroku Postgres). */
  PG_SSLMODE: z.enum(['disable', 'require', 'no-verify']).optional(),
  /** With a rediss:// URL, accept a certificate no CA vouches for (Heroku Redis). */
  REDIS_TLS_INSECURE: z.enum(['true', 'false']).default('false').transform((v) => v === 'true'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** json (one object per line, for machines) or pretty (coloured lines, for a terminal; needs the dev dependency pino-pretty). */
  LOG_FORMAT: z.enum(['json', 'pretty']).default('json'),
  ADMIN_PASSWORD: z.string().min(8, 'must be at least 8 characters').optional(),
  /** When set, GET /metrics wants `Authorization: Bearer <token>`; unset, /metrics is open (as Prometheus scrapes usually are, behind the network). */
  METRICS_TOKEN: z.string().min(16, 'must be at least 16 characters').optional(),
  /** Bull Board's retry, clean and add-job actions; off by default (the board is read-only: events are replayed and parked through /admin/events, which checks them). */
  BOARD_WRITABLE: z.enum(['true', 'false']).default('false').transform((v) => v === 'true'),
  /** Prefix of every Redis key this system writes (BullMQ prefix). */
  QUEUE_PREFIX: z.string().regex(/^[A-Za-z0-9_{}-]+$/, 'letters, digits, _ - { } only').default('op'),
  QUEUE_NAME: z.string().regex(/^[A-Za-z0-9_-]+$/, 'letters, digits, _ - only').default('order-events'),
  /** Queues the event stream is split over (by event id); each has a hash tag of its own, so a Redis Cluster spreads them over its masters. 1: one queue named QUEUE_NAME. */
  QUEUE_PARTITIONS: int(1, 256).default(1),
  /** The partitions this worker consumes, e.g. "0,2" (unset: all). */
  WORKER_PARTITIONS: z
    .string()
    .regex(/^\d+(,\d+)*$/, 'partition numbers separated by commas, e.g. 0,2')
    .transform((s) => [...new Set(s.split(',').map(Number))].sort((a, b) => a - b))
    .optional(),
  WRITE_POOL_SIZE: int(1, 500).default(10),
  /** Queries that may wait for a connection of a web pool beyond its size; past that the web sheds load: 503 overloaded with Retry-After. */
  WEB_POOL_QUEUE: int(0, 100000).default(200),
  /** Open HTTP connections per web process (beyond it new ones are refused), and how long an idle kept-alive one stays open. */
  HTTP_MAX_CONNECTIONS: int(1, 1000000).default(4096),
  HTTP_KEEP_ALIVE_MS: int(100, 600000).default(5000),
  READ_POOL_SIZE: int(1, 500).default(5),
  /** Group commit of POST /orders: at most this many orders per write_db transaction (1: one each). */
  ORDER_BATCH_SIZE: int(1, 1000).default(32),
  /** Order transactions in flight at once per web process; orders arriving meanwhile gather into the next. */
  ORDER_BATCH_CONCURRENCY: int(1, 500).default(2),
  /** PostgreSQL connections of a relay (write_db) and of its reconciler (read_db), and of a worker (read_db). */
  RELAY_POOL_SIZE: int(1, 100).default(2),
  RECONCILER_POOL_SIZE: int(1, 100).default(1),
  WORKER_POOL_SIZE: int(1, 100).default(4),
  /** How often each LISTEN connection is checked with a trivial query (a dead or half-open socket is noticed). */
  LISTEN_CHECK_MS: int(100, 600000).default(5000),
  RELAY_BATCH_SIZE: int(1, 10000).default(500),
  /** Events per BullMQ job: the relay splits each batch into jobs of up to this many (1: a job per event). */
  RELAY_JOB_EVENTS: int(1, 1000).default(50),
  RELAY_POLL_MS: int(10, 600000).default(500),
  RECONCILE_INTERVAL_MS: int(100, 3600000).default(5000),
  RECONCILE_GRACE_MS: int(0, 3600000).default(10000),
  /** The reconciler reads ids this many at a time, and scans (and re-checks) at most this many pages a tick. */
  RECONCILE_PAGE_SIZE: int(10, 100000).default(1000),
  RECONCILE_PAGES_PER_TICK: int(1, 10000).default(20),
  /** How often each relay prunes the outbox and processed_events (0: never; `npm run prune` does it by hand). */
  PRUNE_INTERVAL_MS: int(0, 604800000).default(0),
  /** Events younger than this are never pruned. */
  PRUNE_KEEP_MS: int(0, 31536000000).default(604800000),
  WORKER_CONCURRENCY: int(1, 5000).default(500),
  PROJECTOR_BATCH_SIZE: int(1, 10000).default(1000),
  PROJECTOR_BATCH_WAIT_MS: int(0, 10000).default(0),
  /** Batches one worker process applies at once: while one commits, the next is already running (hot rows are locked last, see workers/projector/apply.ts). */
  PROJECTOR_BATCHES_IN_FLIGHT: int(1, 16).default(2),
  JOB_ATTEMPTS: int(1, 1000).default(8),
  JOB_BACKOFF_MS: int(1, 3600000).default(1000),
  STALLED_INTERVAL_MS: int(100, 3600000).default(30000),
  SHUTDOWN_TIMEOUT_MS: int(100, 600000).default(9000),
  /** statement_timeout of the web's, relays' and workers' PostgreSQL sessions (0: none). */
  PG_STATEMENT_TIMEOUT_MS: int(0, 3600000).default(30000),
  /** idle_in_transaction_session_timeout of those sessions (0: none): a stalled process cannot hold row locks for long. */
  PG_IDLE_IN_TRANSACTION_TIMEOUT_MS: int(0, 3600000).default(60000),
  CONSISTENCY_WAIT_MS: int(0, 60000).default(5000),
  /** While requests wait on a consistency token, the check runs at least this often (a worker's NOTIFY runs it sooner). */
  CONSISTENCY_POLL_MS: int(10, 60000).default(200),
  /**
   * OpenTelemetry traces (lib/tracing.ts), the standard variables: on when an
   * OTLP endpoint is set, off (no SDK loaded) otherwise. OTLP over HTTP only.
   */
  OTEL_EXPORTER_OTLP_ENDPOINT: httpUrl.optional(),
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: httpUrl.optional(),
  OTEL_EXPORTER_OTLP_PROTOCOL: otlpProtocol.optional(),
  OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: otlpProtocol.optional(),
  /** Prefix of each process's service.name (`<name>-web`, …); unset: web, relay, worker. */
  OTEL_SERVICE_NAME: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits, _ . - only').optional(),
  OTEL_SDK_DISABLED: z.enum(['true', 'false']).default('false').transform((v) => v === 'true'),
  OTEL_TRACES_EXPORTER: z.enum(['otlp', 'none']).default('otlp'),
  OTEL_TRACES_SAMPLER: z.enum(['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio']).default('parentbased_always_on'),
  OTEL_TRACES_SAMPLER_ARG: z.string().regex(/^(0(\.\d+)?|1(\.0+)?)$/, 'must be a ratio from 0 to 1').transform(Number).optional(),
  /**
   * The span batches (the standard variables, smaller defaults than the SDK's
   * 512 spans / 5 s): a span kept waiting for its batch outlives the young
   * generation, and the collector's work on it grows (docs/operations.md, Tracing).
   */
  OTEL_BSP_MAX_EXPORT_BATCH_SIZE: int(1, 2048).default(128),
  OTEL_BSP_SCHEDULE_DELAY: int(10, 60000).default(200),
});

export type Config = z.infer<typeof schema>;

export function getConfig(env: NodeJS.ProcessEnv = process.env): Config {
  // Empty strings count as unset, as most process managers write them for "no value".
  const raw: Record<string, string> = {};
  for (const key of Object.keys(schema.shape)) {
    const v = env[key];
    if (v !== undefined && v !== '') raw[key] = v;
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const variable = String(issue?.path[0] ?? 'environment');
    // A secret's value is never shown, and a URL's password is masked.
    const got = SECRET_SETTINGS.has(variable) ? '' : ` (got ${maskUrls(JSON.stringify(raw[variable] ?? null))})`;
    throw new ConfigError(variable, `${issue?.message ?? 'invalid'}${got}`);
  }
  const config = parsed.data;
  if (config.PG_SSLMODE) {
    config.DATABASE_URL = withSslMode(config.DATABASE_URL, config.PG_SSLMODE);
    config.READ_DATABASE_URL = withSslMode(config.READ_DATABASE_URL, config.PG_SSLMODE);
  }
  const beyond = config.WORKER_PARTITIONS?.find((p) => p >= config.QUEUE_PARTITIONS);
  if (beyond !== undefined) throw new ConfigError('WORKER_PARTITIONS', `partition ${beyond} does not exist: QUEUE_PARTITIONS is ${config.QUEUE_PARTITIONS} (partitions 0 to ${config.QUEUE_PARTITIONS - 1})`);
  if (config.QUEUE_PARTITIONS > 1 && config.QUEUE_PREFIX.includes('{')) {
    throw new ConfigError('QUEUE_PREFIX', `with QUEUE_PARTITIONS > 1 each partition's queue name carries its own hash tag; a hash tag in the prefix would put every partition in one slot (got ${JSON.stringify(config.QUEUE_PREFIX)})`);
  }
  // In a cluster, every key of a queue must hash to one slot: one queue gets a hash tag in the
  // prefix (today's layout); partitions get theirs in their names (lib/queue.ts queueNames).
  if (config.REDIS_CLUSTER_NODES && config.QUEUE_PARTITIONS === 1 && !config.QUEUE_PREFIX.includes('{')) config.QUEUE_PREFIX = `{${config.QUEUE_PREFIX}}`;
  return config;
}

function withSslMode(url: string, mode: string): string {
  const u = new URL(url);
  if (!u.searchParams.has('sslmode')) u.searchParams.set('sslmode', mode);
  return u.toString();
}
