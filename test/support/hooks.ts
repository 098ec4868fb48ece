import { cleanupAll } from './env.js';

/** Mocha root hooks: drop every database and Redis key this run made. */
export const mochaHooks = {
  async afterAll(this: Mocha.Context) {
    this.timeout(120_000);
    await cleanupAll();
  },
};
