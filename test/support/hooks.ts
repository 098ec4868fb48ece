import { cleanupAll } from './env.js';

/** Mocha root hooks: drop every database and Redis key this run made. */
export const mochaHooks = {
  async afterAll(this: Mocha.Context) {
    this.timeout(120_000);
    // DROP DATABASE ... WITH (FORCE) terminates any connection still open to
    // the run's databases (57P01); a client without an error listener would
    // raise that as an uncaught error during teardown, which is expected here.
    const ignoreTerminated = (err: Error & { code?: string }) => {
      if (err.code !== '57P01') throw err;
    };
    process.on('uncaughtException', ignoreTerminated);
    try {
      // Let clients that were just ended finish closing before their databases go.
      await new Promise((r) => setTimeout(r, 500));
      await cleanupAll();
    } finally {
      process.off('uncaughtException', ignoreTerminated);
    }
  },
};
