import type { Logger } from './logger.js';
import { getConfig, ConfigError, type Config } from './config.js';
import { createLogger } from './logger.js';
import { runningSystem } from './running.js';
import { startTracing, stopTracing } from './tracing.js';

/** What every long-running process returns from start(): stopping is idempotent. */
export interface Handle {
  stop(): Promise<void>;
}

/** Signals this soon after the first one are taken as the same request to stop, not as "force it". */
const SIGNAL_GRACE_MS = 1000;

/** Memoise a stop function so that a second call returns the same promise. */
export function once(fn: () => Promise<void>): () => Promise<void> {
  let p: Promise<void> | undefined;
  return () => (p ??= fn());
}

/**
 * Parse the environment, or print one line naming the bad variable and exit
 * 78 (EX_CONFIG). A command a person runs (findRunning) takes what the
 * environment leaves unset from the system `npm start` is running, if any.
 */
export function configOrExit(proc: string, opts: { findRunning?: boolean } = {}): Config {
  try {
    const running = opts.findRunning ? runningSystem() : undefined;
    const fill = running ? Object.fromEntries(Object.entries(running.env).filter(([k]) => !process.env[k])) : {};
    if (running && Object.keys(fill).length > 0) console.error(`${proc}: using the system npm start runs (pid ${running.pid}; .data/system.json)`);
    return getConfig({ ...process.env, ...fill });
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`${proc}: bad configuration: ${err.message}`);
      process.exit(78);
    }
    throw err;
  }
}

/**
 * Run a process: parse config (one-line failure), start it, then wire signals.
 * First SIGTERM/SIGINT/SIGHUP drains through handle.stop(); a second signal or the
 * deadline forces exit. Unhandled rejections exit non-zero so the process
 * manager restarts us rather than leaving a half-dead process.
 */
export async function runProcess(
  proc: string,
  start: (config: Config, log: Logger) => Promise<Handle>,
): Promise<void> {
  const config = configOrExit(proc);
  const log = createLogger(config.LOG_LEVEL, proc, config.LOG_FORMAT === 'pretty');
  process.on('unhandledRejection', (err) => {
    log.fatal({ err }, 'unhandled rejection');
    process.exit(70);
  });
  process.on('uncaughtException', (err) => {
    log.fatal({ err }, 'uncaught exception');
    process.exit(70);
  });
  // Signals are wired before start() so that a SIGTERM during start-up also
  // drains (once start has finished) instead of killing the process outright.
  let stoppingSince = 0;
  // Tracing (when configured) is on before the process opens any connection.
  const started = startTracing(proc, config, log).then(() => start(config, log));
  const onSignal = (signal: NodeJS.Signals) => {
    if (stoppingSince > 0) {
      // A terminal's Ctrl-C reaches every process of the group and a supervisor forwards a
      // SIGTERM as well: signals that come together are one request to stop.
      if (Date.now() - stoppingSince < SIGNAL_GRACE_MS) return;
      log.warn({ signal }, 'second signal, exiting now');
      process.exit(1);
    }
    stoppingSince = Date.now();
    log.info({ signal }, 'stopping');
    const deadline = setTimeout(() => {
      log.error({ timeoutMs: config.SHUTDOWN_TIMEOUT_MS }, 'shutdown deadline passed, exiting');
      process.exit(1);
    }, config.SHUTDOWN_TIMEOUT_MS);
    deadline.unref();
    started
      .then((handle) => handle.stop())
      .then(() => stopTracing())
      .then(
        () => {
          log.info('stopped');
          process.exit(0);
        },
        (err: unknown) => {
          log.error({ err }, 'error while stopping');
          process.exit(1);
        },
      );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('SIGHUP', onSignal); // its terminal closed: stop as on SIGTERM rather than die of it
  try {
    await started;
  } catch (err) {
    log.fatal({ err }, 'failed to start');
    process.exit(1);
  }
}
